package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestBootedFromCmdline: without boot.json, the booted tx comes from the
// command line by initagent's rule (initagent/cmdline: the last txboot.tx=
// wins, as the kernel does; an invalid last one means the default; nothing
// after "--" is ours), so bootctl and PID 1 never disagree on what runs.
func TestBootedFromCmdline(t *testing.T) {
	oldInfo, oldCmd := bootInfoPath, procCmdline
	t.Cleanup(func() { bootInfoPath, procCmdline = oldInfo, oldCmd })
	dir := t.TempDir()
	bootInfoPath = filepath.Join(dir, "no-boot.json")
	procCmdline = filepath.Join(dir, "cmdline")
	tests := []struct {
		cmdline string
		want    uint64
	}{
		{"root=/dev/vda txboot.tx=7 quiet\n", 7},
		{"txboot.tx=2 txboot.tx=3", 3},
		{"txboot.tx=2 txboot.tx=x", 0},
		{"txboot.tx=2 txboot.tx=0", 0},
		{"txboot.tx=4 -- txboot.tx=5", 4},
		{`"txboot.tx=6" foo="a b"`, 6},
		{"", 0},
	}
	for _, tt := range tests {
		if err := os.WriteFile(procCmdline, []byte(tt.cmdline), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := booted(); got != tt.want {
			t.Errorf("booted() with %q = %d, want %d (initagent's rule)", tt.cmdline, got, tt.want)
		}
	}
}

// TestHealDefaultRule: marking the bad default moves it by the rule
// initagent applies (bootstate.HealDefault): the booted tx when it is good,
// not simply the newest good one.
func TestHealDefaultRule(t *testing.T) {
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	root := t.TempDir()
	for i := 0; i < 3; i++ {
		mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/v", Data: strings.Repeat("v", i+1), Mode: 0o644}))
	}
	mustRun(t, "--root", root, "mark-good", "1")
	mustRun(t, "--root", root, "mark-good", "2")
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	if err := os.WriteFile(bootInfoPath, []byte(`{"booted":1,"requested":3}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "--root", root, "mark-bad", "3", "--reason", "broken")
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if def, err := s.Default(); err != nil || def != 1 || !strings.Contains(out, "tx 1 is the default now") {
		t.Fatalf("after mark-bad of the default while tx 1 runs: default %d, %v; output %q", def, err, out)
	}
}
