package etcstate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/internal/layout"
	"github.com/txboot/txboot/txstore/testkit"
	"golang.org/x/sys/unix"
)

// sys is a system root with a store holding trees 1..n (usr/ only).
func sys(t *testing.T, n int, live ...e) string {
	t.Helper()
	root := t.TempDir()
	build(t, filepath.Join(root, "etc"), live...)
	for i := 1; i <= n; i++ {
		if err := os.MkdirAll(filepath.Join(root, layout.DirName, layout.TreesDir, fmt.Sprint(i), "usr"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func etcOf(root string) string { return filepath.Join(root, "etc") }

// ranWith gives tx id an etc/base and etc/new, as a run that made it would.
func ranWith(t *testing.T, root string, id uint64, base, nw []e) {
	t.Helper()
	build(t, filepath.Join(TxEtcDir(root, id), BaseDir), base...)
	build(t, filepath.Join(TxEtcDir(root, id), NewDir), nw...)
}

func owner(t *testing.T, root string) uint64 {
	t.Helper()
	id, ok, err := Owner(root)
	if err != nil || !ok {
		t.Fatalf("Owner: %d %v %v", id, ok, err)
	}
	return id
}

func mustSwitch(t *testing.T, root string, id uint64, want Action) *SwitchResult {
	t.Helper()
	res, err := Switch(root, id)
	if err != nil {
		t.Fatalf("Switch(%d): %v", id, err)
	}
	if res.Action != want {
		t.Fatalf("Switch(%d): %s, want %s", id, res, want)
	}
	if got := owner(t, root); got != id {
		t.Fatalf("after Switch(%d) the marker names %d", id, got)
	}
	return res
}

// noLeftovers: nothing of a switch is left in the store.
func noLeftovers(t *testing.T, root string) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(root, layout.DirName))
	for _, d := range ents {
		if strings.HasPrefix(d.Name(), "etc-switch") {
			t.Errorf("left in the store: %s", d.Name())
		}
	}
}

func sameTree(t *testing.T, a, b string) {
	t.Helper()
	if eq, err := Equal(a, b); err != nil || !eq {
		t.Errorf("%s and %s differ (%v):\n%s\n---\n%s", a, b, err, dump(t, a), dump(t, b))
	}
}

// The administrator's /etc on tx 1, and what a run that made tx 2 did:
// it started from base (nginx.conf as then edited), the package changed
// nginx.conf and app.conf and added new.conf; since then the
// administrator edited nginx.conf again.
var (
	live1 = []e{f(MarkerName, "1\n"), f("hostname", "box\n"), f("nginx/nginx.conf", "v1 admin again"), f("app.conf", "a1"), l("localtime", "/a")}
	base2 = []e{f("hostname", "box\n"), f("nginx/nginx.conf", "v1 admin"), f("app.conf", "a1"), l("localtime", "/a")}
	new2  = []e{f("hostname", "box\n"), f("nginx/nginx.conf", "v2"), f("app.conf", "a2"), f("new.conf", "n"), l("localtime", "/a")}
	// merged2 is tx 2's /etc after its first boot.
	merged2 = []e{f("hostname", "box\n"), f("nginx/nginx.conf", "v1 admin again"), f("nginx/nginx.conf.txboot-new", "v2"),
		f("app.conf", "a2"), f("new.conf", "n"), l("localtime", "/a")}
)

func TestSwitchAdoptAndKeep(t *testing.T) {
	root := sys(t, 1, f("hostname", "box\n"))
	ref := build(t, filepath.Join(t.TempDir(), "ref"), f("hostname", "box\n"))
	res := mustSwitch(t, root, 1, Adopted)
	if !strings.Contains(res.String(), "adopted") {
		t.Errorf("result %q", res)
	}
	if got := read(t, filepath.Join(etcOf(root), MarkerName)); got != "1\n" {
		t.Errorf("marker %q", got)
	}
	// Idempotent: the second Switch does nothing.
	mustSwitch(t, root, 1, Kept)
	sameTree(t, etcOf(root), ref)
	noLeftovers(t, root)
}

// A committed or pulled tx (no etc/) gets a copy of the live /etc; the
// old one is saved as its owner's last/.
func TestSwitchCopy(t *testing.T) {
	root := sys(t, 2, live1...)
	ref := build(t, filepath.Join(t.TempDir(), "ref"), live1...)
	res := mustSwitch(t, root, 2, Copied)
	if !res.Saved || res.OldOwner != 1 {
		t.Errorf("result %+v", res)
	}
	sameTree(t, etcOf(root), ref)
	last := filepath.Join(TxEtcDir(root, 1), LastDir)
	sameTree(t, last, ref)
	if id, _, _ := readMarker(last); id != 1 {
		t.Errorf("tx 1's last/ names %d", id)
	}
	noLeftovers(t, root)
}

// The cases through Switch: the run's changes are merged onto the
// live /etc, the conflict listed; rolling back restores the /etc tx 1
// last ran with (and its edits), and going forward again restores tx 2's.
func TestSwitchMergeRollback(t *testing.T) {
	root := sys(t, 2, live1...)
	ranWith(t, root, 2, base2, new2)
	res := mustSwitch(t, root, 2, Merged)
	want2 := build(t, filepath.Join(t.TempDir(), "want2"), merged2...)
	sameTree(t, etcOf(root), want2)
	if len(res.Conflicts) != 1 || res.Conflicts[0].Path != "nginx/nginx.conf" || !strings.Contains(res.String(), "1 conflict") {
		t.Errorf("result %s, %+v", res, res.Conflicts)
	}
	cs, err := Conflicts(root, 2)
	if err != nil || len(cs) != 1 || cs[0] != res.Conflicts[0] {
		t.Errorf("Conflicts(2) = %+v, %v", cs, err)
	}
	if kb, err := KeptBeside(root); err != nil || strings.Join(kb, " ") != "nginx/nginx.conf.txboot-new" {
		t.Errorf("KeptBeside = %q, %v", kb, err)
	}

	// Edits on tx 2, then a rollback to tx 1: it gets its own /etc back.
	write(t, filepath.Join(etcOf(root), "on2"), "written on tx 2")
	mustSwitch(t, root, 1, Restored)
	ref1 := build(t, filepath.Join(t.TempDir(), "ref1"), live1...)
	sameTree(t, etcOf(root), ref1)
	if exists(filepath.Join(etcOf(root), "on2")) || exists(filepath.Join(etcOf(root), "new.conf")) {
		t.Error("tx 2's configuration leaked into tx 1's /etc")
	}
	// Edits on tx 1, then tx 2 again: the /etc it last ran with.
	write(t, filepath.Join(etcOf(root), "on1"), "written on tx 1")
	mustSwitch(t, root, 2, Restored)
	if !exists(filepath.Join(etcOf(root), "on2")) || exists(filepath.Join(etcOf(root), "on1")) {
		t.Errorf("tx 2's /etc is not the one it last ran with:\n%s", dump(t, etcOf(root)))
	}
	// tx 1's last/ was replaced by the newer one (with on1).
	if !exists(filepath.Join(TxEtcDir(root, 1), LastDir, "on1")) {
		t.Error("tx 1's last/ was not replaced")
	}
	noLeftovers(t, root)
}

// An image builder's offline run: /etc names no owner yet, and the tx a
// run made still gets the run's changes (merged, not adopted as is).
func TestSwitchNoOwnerMerges(t *testing.T) {
	root := sys(t, 2, live1[1:]...)
	ranWith(t, root, 2, base2, new2)
	res := mustSwitch(t, root, 2, Merged)
	if res.OldOwner != 0 || res.Saved {
		t.Errorf("result %+v", res)
	}
	if got := read(t, filepath.Join(etcOf(root), "app.conf")); got != "a2" {
		t.Errorf("app.conf %q, want the run's a2", got)
	}
	noLeftovers(t, root)
}

// The owner's tree was pruned: its old /etc has nowhere to go.
func TestSwitchPrunedOwner(t *testing.T) {
	root := sys(t, 2, append([]e{f(MarkerName, "7\n")}, live1[1:]...)...)
	res := mustSwitch(t, root, 2, Copied)
	if res.Saved || res.OldOwner != 7 || !strings.Contains(res.String(), "dropped") {
		t.Errorf("result %s", res)
	}
	if exists(filepath.Join(root, layout.DirName, layout.TreesDir, "7")) {
		t.Error("a pruned tree was made again")
	}
	noLeftovers(t, root)
}

// An unreadable marker is treated as none, with a warning.
func TestSwitchBadMarker(t *testing.T) {
	root := sys(t, 1, f(MarkerName, "junk"), f("hostname", "x"))
	res := mustSwitch(t, root, 1, Adopted)
	if !strings.Contains(res.Warning, "unreadable") {
		t.Errorf("warning %q", res.Warning)
	}
}

func TestSwitchErrors(t *testing.T) {
	if _, err := Switch(t.TempDir(), 1); !errors.Is(err, ErrNoEtc) {
		t.Errorf("no /etc: %v", err)
	}
	// A tx whose new/ cannot be merged: /etc stays as it was.
	root := sys(t, 2, live1...)
	ranWith(t, root, 2, base2, new2)
	big := filepath.Join(TxEtcDir(root, 2), NewDir, "big")
	write(t, big, "")
	if err := os.Truncate(big, MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	before := dump(t, etcOf(root))
	if _, err := Switch(root, 2); !errors.Is(err, ErrTooBig) {
		t.Errorf("Switch with an oversized file: %v, want ErrTooBig", err)
	}
	if dump(t, etcOf(root)) != before {
		t.Error("/etc changed on a failed switch")
	}
	noLeftovers(t, root)
}

// The store on another filesystem: no atomic swap, /etc kept as it was.
func TestSwitchCrossDevice(t *testing.T) {
	needRoot(t)
	root := sys(t, 0, live1...)
	store := filepath.Join(root, layout.DirName)
	if err := os.MkdirAll(store, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", store, "tmpfs", 0, "mode=0700"); err != nil {
		testkit.Skipf(t, "cannot mount a tmpfs for the store: %v", err)
	}
	defer unix.Unmount(store, unix.MNT_DETACH)
	if err := os.MkdirAll(filepath.Join(store, layout.TreesDir, "2", "usr"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := dump(t, etcOf(root))
	_, err := Switch(root, 2)
	if !errors.Is(err, ErrCrossDevice) {
		t.Fatalf("Switch: %v, want ErrCrossDevice", err)
	}
	if dump(t, etcOf(root)) != before {
		t.Error("/etc changed")
	}
	noLeftovers(t, root)
}

func TestView(t *testing.T) {
	root := sys(t, 4, live1...)
	ranWith(t, root, 2, base2, new2)
	build(t, filepath.Join(TxEtcDir(root, 3), LastDir), f("last3", "x"))
	for _, tc := range []struct {
		id   uint64
		want string // "live", "last", "dst"
	}{{1, "live"}, {2, "dst"}, {3, "last"}, {4, "live"}} {
		dst := filepath.Join(t.TempDir(), "view")
		got, err := View(root, tc.id, dst)
		want := map[string]string{"live": etcOf(root), "last": filepath.Join(TxEtcDir(root, 3), LastDir), "dst": dst}[tc.want]
		if err != nil || got != want {
			t.Errorf("View(%d) = %q, %v; want %q", tc.id, got, err, want)
		}
	}
	dst := filepath.Join(t.TempDir(), "view")
	if _, err := View(root, 2, dst); err != nil {
		t.Fatal(err)
	}
	sameTree(t, dst, build(t, filepath.Join(t.TempDir(), "want2"), merged2...))
	// View changes nothing live.
	if owner(t, root) != 1 || exists(filepath.Join(etcOf(root), "new.conf")) {
		t.Error("View changed the live /etc")
	}
	noLeftovers(t, root)
}

// crashAt makes failpoint name panic as a power cut would end the
// process: nothing after it runs, deferred closes aside.
type crash struct{ name string }

func crashAt(t *testing.T, name string) (restore func()) {
	t.Helper()
	r, err := failpoint.EnableFunc(name, func() error { panic(crash{name}) })
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// switchCrashing runs Switch and reports whether it "crashed".
func switchCrashing(t *testing.T, root string, id uint64) (crashed bool) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			if _, ok := p.(crash); !ok {
				panic(p)
			}
			crashed = true
		}
	}()
	if _, err := Switch(root, id); err != nil {
		t.Fatalf("Switch: %v", err)
	}
	return false
}

var switchPoints = []string{"etc-switch/half-built", "etc-switch/built", "etc-switch/intent", "etc-switch/exchanged",
	"etc-switch/renamed-old", "etc-switch/aside", "etc-switch/saved"}

// TestSwitchCrash cuts a switch at every failpoint. At once /etc is whole
// and its marker names its owner (tx 1's /etc, or tx 2's merged one);
// the next Switch finishes the work: tx 2's /etc, tx 1's saved as its
// last/ (replacing the older one), nothing left in the store. A second
// crash during that recovery changes nothing of this.
func TestSwitchCrash(t *testing.T) {
	for _, n := range failpoint.Names() {
		if strings.HasPrefix(n, "etc-switch/") && !slices.Contains(switchPoints, n) {
			t.Errorf("failpoint %s is not tested", n)
		}
	}
	tmp := t.TempDir()
	ref1 := build(t, filepath.Join(tmp, "ref1"), live1...)
	ref2 := build(t, filepath.Join(tmp, "ref2"), merged2...)
	for _, first := range switchPoints {
		for _, second := range append([]string{""}, switchPoints...) {
			name := first
			if second != "" {
				name += "+" + second
			}
			t.Run(name, func(t *testing.T) {
				root := sys(t, 2, live1...)
				ranWith(t, root, 2, base2, new2)
				build(t, filepath.Join(TxEtcDir(root, 1), LastDir), f("older", "o"))
				for i, p := range []string{first, second} {
					if p == "" {
						continue
					}
					restore := crashAt(t, p)
					crashed := switchCrashing(t, root, 2)
					restore()
					t.Logf("crash at %s: %v", p, crashed)
					if i == 0 && !crashed {
						t.Fatalf("no crash at %s", p)
					}
					checkWhole(t, root, ref1, ref2)
				}
				res, err := Switch(root, 2)
				if err != nil || owner(t, root) != 2 {
					t.Fatalf("Switch after the crash: %v, %v", res, err)
				}
				t.Logf("after the crash: %s", res)
				if res = mustSwitch(t, root, 2, Kept); len(res.Recovered) > 0 {
					t.Errorf("recovered twice: %s", res)
				}
				sameTree(t, etcOf(root), ref2)
				last := filepath.Join(TxEtcDir(root, 1), LastDir)
				sameTree(t, last, ref1)
				noLeftovers(t, root)
			})
		}
	}
}

// checkWhole: /etc is tx 1's or tx 2's, whole, with the matching marker.
func checkWhole(t *testing.T, root, ref1, ref2 string) {
	t.Helper()
	switch id := owner(t, root); id {
	case 1:
		sameTree(t, etcOf(root), ref1)
	case 2:
		sameTree(t, etcOf(root), ref2)
	default:
		t.Fatalf("marker names %d", id)
	}
}
