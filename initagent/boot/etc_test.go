package boot

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/etcstate"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestRunEtc: after choose, the boot gives the chosen tx its /etc — the
// fallback's when the requested tx failed — and nothing about /etc (an
// error, a panic) stops the boot. A boot without the database leaves /etc
// alone.
func TestRunEtc(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(f *fakeSys)
		booted  uint64
		owner   uint64 // the marker after the boot
		info    string // in boot.json's etc
		console string // on the console
	}{
		{name: "fallback gets its /etc", booted: 2, owner: 2,
			info: "tx 2's /etc copied from the live one; tx 3's saved"},
		{name: "error", booted: 2, owner: 3,
			setup:   func(f *fakeSys) { f.etcErr = errors.New("disk on fire") },
			info:    "kept as it was: disk on fire",
			console: "txboot: /etc kept as it was: disk on fire"},
		{name: "panic", booted: 2, owner: 3,
			setup:   func(f *fakeSys) { f.panicIn = "etc" },
			info:    "kept as it was: internal error: etc boom",
			console: "txboot: /etc kept as it was: internal error: etc boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, sys := testPlan(t)
			sys.cmdline = "root=/dev/txboot-test-root"
			flowStore(t, plan.Sysroot, 3, []uint64{3}, nil) // tx 3 has no init: falls back to 2
			etc := filepath.Join(plan.Sysroot, "etc")
			writeFile(t, filepath.Join(etc, etcstate.MarkerName), "3\n")
			writeFile(t, filepath.Join(etc, "hostname"), "box\n")
			if tc.setup != nil {
				tc.setup(sys)
			}
			Run(sys, plan)

			if len(sys.rescues) != 0 || !slices.Contains(sys.calls, "switch-root") {
				t.Fatalf("the boot did not complete: %q\n%s", sys.rescues, sys.out.String())
			}
			if !slices.Contains(sys.calls, "etc 2") || slices.Contains(sys.calls, "etc 3") {
				t.Errorf("calls %q: want the etc step with the chosen tx 2 only", sys.calls)
			}
			if i, j := slices.Index(sys.calls, "etc 2"), slices.Index(sys.calls, "switch-root"); i > j {
				t.Errorf("the etc step ran after switch_root: %q", sys.calls)
			}
			if id, ok, err := etcstate.Owner(plan.Sysroot); err != nil || !ok || id != tc.owner {
				t.Errorf("/etc owner %d %v %v, want %d", id, ok, err, tc.owner)
			}
			if sys.info == nil || sys.info.Booted != tc.booted || !strings.Contains(sys.info.Etc, tc.info) {
				t.Errorf("boot.json %+v: want booted %d, etc %q", sys.info, tc.booted, tc.info)
			}
			if _, ok := sys.info.PhasesMS["etc"]; !ok {
				t.Errorf("boot.json has no etc phase: %v", sys.info.PhasesMS)
			}
			out := sys.out.String()
			if tc.console != "" && !strings.Contains(out, tc.console) {
				t.Errorf("console lacks %q:\n%s", tc.console, out)
			}
			if tc.console == "" && !strings.Contains(out, "tx 2's /etc copied") {
				t.Errorf("the log does not say what happened to /etc:\n%s", out)
			}
		})
	}
}

// TestRunEtcNoDatabase: booting by the pinned digest without store.db
// writes nothing, /etc included.
func TestRunEtcNoDatabase(t *testing.T) {
	plan, sys := testPlan(t)
	flowStore(t, plan.Sysroot, 2, nil, nil)
	s, err := txstore.Open(plan.Sysroot, txstore.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := s.Get(2)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := testtree.DamageDB(filepath.Join(plan.Sysroot, txstore.DirName, "store.db"), testtree.DamageGarbage); err != nil {
		t.Fatal(err)
	}
	sys.cmdline = "root=/dev/txboot-test-root txboot.tx=2 txboot.digest=" + tx.Digest
	Run(sys, plan)
	if len(sys.rescues) != 0 || sys.info == nil || sys.info.NoDatabase == "" {
		t.Fatalf("not booted without the database: %q %+v\n%s", sys.rescues, sys.info, sys.out.String())
	}
	if slices.Contains(sys.calls, "etc 2") {
		t.Errorf("the etc step ran without the database: %q", sys.calls)
	}
	if _, ok, _ := etcstate.Owner(plan.Sysroot); ok {
		t.Error("/etc was written to without the database")
	}
	if !strings.Contains(sys.info.Etc, "without the database") {
		t.Errorf("boot.json etc %q", sys.info.Etc)
	}
}

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
