package qemutests

// `bootctl run` on a real Debian 13 root installed by `bootctl install`:
// offline on the host with --root (TestRunOffline), and inside the booted
// system under QEMU (TestDebianRun): packages installed as transactions,
// the package database and /etc following their tx, a broken package
// healed by the boot fallback, and plain dpkg/apt refused on the live
// system.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
	"time"

	"github.com/txboot/txboot/bootctl/pkgdb"
	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/etcstate"
)

// Test packages built with dpkg-deb (fixture.BuildDeb).
var (
	// txtestTool: one program, no conffile (the stacked run).
	txtestTool = fixture.DebSpec{Name: "txtest-tool", Version: "1.0-1",
		Files: map[string]fixture.DebFile{"usr/bin/txtest-tool": {Data: "#!/bin/sh\necho txtest-tool 1.0\n", Mode: 0o755}}}
	// txtestBreak: its postinst replaces systemd with /bin/false, so the
	// tx it lands in cannot boot (PID 1 exits, the kernel panics).
	txtestBreak = fixture.DebSpec{Name: "txtest-break", Version: "1.0-1",
		Files:    map[string]fixture.DebFile{"usr/share/txtest-break/README": {Data: "this package breaks the boot\n"}},
		Postinst: "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then ln -sf /bin/false /usr/lib/systemd/systemd; fi\n"}
)

// confPkg is txtest-conf version v: three conffiles (the administrator
// edits one and removes one between v1 and v2; the third is untouched)
// and a file in /usr naming the version.
func confPkg(v int) fixture.DebSpec {
	files := map[string]fixture.DebFile{"usr/share/txtest-conf/version": {Data: fmt.Sprintf("%d\n", v)}}
	var conf []string
	for _, n := range confNames {
		p := "etc/txtest-conf/" + n + ".conf"
		files[p] = fixture.DebFile{Data: confText(n, v)}
		conf = append(conf, p)
	}
	return fixture.DebSpec{Name: "txtest-conf", Version: fmt.Sprintf("%d.0-1", v), Files: files, Conffiles: conf}
}

var confNames = []string{"edited", "untouched", "removed"}

func confText(name string, v int) string { return fmt.Sprintf("%s: package v%d\n", name, v) }

// The administrator's texts in /etc.
const (
	adminEdit = "edited: the administrator's version\n"
	adminLate = "untouched: edited by the administrator after the run\n"
)

// bootctlResult is one bootctl command: its output, exit code, wall
// time, and when each output line came (to split a run's time).
type bootctlResult struct {
	Out   string
	Code  int
	Wall  time.Duration
	lines []timedLine
}

type timedLine struct {
	at   time.Duration
	line string
}

// lineClock records when each complete output line arrives.
type lineClock struct {
	start   time.Time
	buf     bytes.Buffer
	partial []byte
	lines   []timedLine
}

func (c *lineClock) Write(p []byte) (int, error) {
	c.buf.Write(p)
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		c.lines = append(c.lines, timedLine{time.Since(c.start), string(c.partial[:i])})
		c.partial = c.partial[i+1:]
	}
	return len(p), nil
}

// At is when the first line containing sub came (0: none did).
func (r *bootctlResult) At(sub string) time.Duration {
	for _, l := range r.lines {
		if strings.Contains(l.line, sub) {
			return l.at
		}
	}
	return 0
}

// bootctlExec runs the built bootctl on sys's root.
func bootctlExec(t *testing.T, sys *fixture.DebianSystem, args ...string) *bootctlResult {
	t.Helper()
	full := append([]string{"--root", sys.RootDir}, args...)
	cmd := exec.CommandContext(t.Context(), sys.Bootctl, full...)
	clock := &lineClock{start: time.Now()}
	cmd.Stdout, cmd.Stderr = clock, clock
	err := cmd.Run()
	r := &bootctlResult{Out: clock.buf.String(), Wall: time.Since(clock.start), lines: clock.lines}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		t.Fatalf("bootctl %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("$ bootctl %s   (exit %d, %s)\n%s", strings.Join(args, " "), r.Code, r.Wall.Round(time.Millisecond), strings.TrimRight(r.Out, "\n"))
	return r
}

// bootctlRC runs the built bootctl on sys's root and returns its output,
// exit code and wall time.
func bootctlRC(t *testing.T, sys *fixture.DebianSystem, args ...string) (string, int, time.Duration) {
	t.Helper()
	r := bootctlExec(t, sys, args...)
	return r.Out, r.Code, r.Wall
}

// bootctlOK is bootctlRC that fails the test unless bootctl exits 0.
func bootctlOK(t *testing.T, sys *fixture.DebianSystem, args ...string) (string, time.Duration) {
	t.Helper()
	out, code, d := bootctlRC(t, sys, args...)
	if code != 0 {
		t.Fatalf("bootctl %s: exit %d:\n%s", strings.Join(args, " "), code, out)
	}
	return out, d
}

// runTx is `bootctl run ARGS` that must record a new tx: its ID and the
// run. The live /etc, /boot, /usr and the root's top level must come out
// of every run as they went in.
func runTx(t *testing.T, sys *fixture.DebianSystem, args ...string) (uint64, *bootctlResult) {
	t.Helper()
	before := liveState(t, sys.RootDir)
	r := bootctlExec(t, sys, append([]string{"run"}, args...)...)
	if r.Code != 0 {
		t.Fatalf("bootctl run %s: exit %d:\n%s", strings.Join(args, " "), r.Code, r.Out)
	}
	wantLiveSame(t, sys.RootDir, before, "bootctl run "+strings.Join(args, " "))
	m := committedRe.FindStringSubmatch(r.Out)
	if m == nil {
		t.Fatalf("bootctl run %s recorded no tx:\n%s", strings.Join(args, " "), r.Out)
	}
	id, _ := strconv.ParseUint(m[1], 10, 64)
	return id, r
}

var (
	committedRe = regexp.MustCompile(`(?m)^committed tx (\d+) (sha256:[0-9a-f]{64}) \(from tx (\d+)\)`)
	newObjRe    = regexp.MustCompile(`(?m)^\s+(\d+) entries; (\d+) new objects \(([^)]*)\), (\d+) deduplicated; total (\d+ ms)`)
)

// liveState is what a run must not change on the host: the live /etc, the
// root's /boot and whatever is left of its /usr (install leaves a mount
// point), by path: type, mode, size, content hash, link target; and the
// names and link targets of the root's top level.
func liveState(t *testing.T, root string) map[string]string {
	t.Helper()
	st := map[string]string{}
	// The top level (not recursively): Debian's linux-base points /vmlinuz
	// and /initrd.img at /boot.
	des, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		target, _ := os.Readlink(filepath.Join(root, de.Name()))
		st["/"+de.Name()] = de.Type().String() + " " + target
	}
	for _, d := range []string{"etc", "boot", "usr"} {
		if err := snapshotDir(filepath.Join(root, d), d, st); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func snapshotDir(dir, prefix string, st map[string]string) error {
	return filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return nil
		}
		if err != nil {
			return err
		}
		if len(st) > 100_000 {
			return fmt.Errorf("%s: more than 100000 entries", dir)
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := de.Info()
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			v += " -> " + target
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			v += fmt.Sprintf(" %d %s", len(b), hex.EncodeToString(sum[:8]))
		}
		st[filepath.Join(prefix, rel)] = v
		return nil
	})
}

// wantLiveSame fails with the paths that differ from before.
func wantLiveSame(t *testing.T, root string, before map[string]string, what string) {
	t.Helper()
	after := liveState(t, root)
	if diff := mapDiff(before, after); len(diff) > 0 {
		t.Errorf("%s changed the live system (it may change only the store and /var):\n%s", what, strings.Join(diff, "\n"))
	}
}

func mapDiff(a, b map[string]string) []string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			out = append(out, "  removed "+k)
		} else if w != v {
			out = append(out, fmt.Sprintf("  changed %s: %s -> %s", k, v, w))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, "  added "+k)
		}
	}
	slices.Sort(out)
	return out
}

// storeView opens sys's store read-only for fn.
func storeView(t *testing.T, sys *fixture.DebianSystem, fn func(s *txstore.Store)) {
	t.Helper()
	s, err := txstore.Open(sys.RootDir, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fn(s)
}

func getTx(t *testing.T, sys *fixture.DebianSystem, id uint64) *txstore.Tx {
	t.Helper()
	var tx *txstore.Tx
	storeView(t, sys, func(s *txstore.Store) {
		var err error
		if tx, err = s.Get(id); err != nil {
			t.Fatalf("tx %d: %v", id, err)
		}
	})
	return tx
}

func txIDs(t *testing.T, sys *fixture.DebianSystem) []uint64 {
	t.Helper()
	var ids []uint64
	storeView(t, sys, func(s *txstore.Store) {
		txs, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, tx := range txs {
			ids = append(ids, tx.ID)
		}
	})
	return ids
}

// treeUsr is tx id's /usr in the store.
func treeUsr(sys *fixture.DebianSystem, id uint64) string {
	return filepath.Join(sys.RootDir, txstore.DirName, "trees", strconv.FormatUint(id, 10), "usr")
}

// pkgs is tx id's package set (dpkg's status in its /usr, read by pkgdb).
func pkgs(t *testing.T, sys *fixture.DebianSystem, id uint64) pkgdb.Set {
	t.Helper()
	set, ok, err := pkgdb.ReadTree(treeUsr(sys, id))
	if err != nil || !ok {
		t.Fatalf("tx %d: no package database in its /usr (ok %v): %v", id, ok, err)
	}
	return set
}

// installedVersion is pkg's version in tx id, "" if not installed.
func installedVersion(t *testing.T, sys *fixture.DebianSystem, id uint64, name string) string {
	t.Helper()
	set := pkgs(t, sys, id)
	p, ok := set.Find(name, "")
	if !ok {
		for _, q := range set {
			if q.Name == name {
				p, ok = q, true
			}
		}
	}
	if !ok || p.Broken() {
		return ""
	}
	return p.Version
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func readText(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

// debVersion reads a .deb's Version field.
func debVersion(t *testing.T, deb string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", "-f", deb, "Version").Output()
	if err != nil {
		t.Fatalf("dpkg-deb -f %s: %v", deb, err)
	}
	return strings.TrimSpace(string(out))
}

// buildDebs builds the test packages into dir.
func buildDebs(t *testing.T, dir string, specs ...fixture.DebSpec) []string {
	t.Helper()
	var out []string
	for _, s := range specs {
		p, err := fixture.BuildDeb(t.Context(), s, dir)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func copyInto(t *testing.T, src, dstDir string) string {
	t.Helper()
	must(t, os.MkdirAll(dstDir, 0o755))
	dst := filepath.Join(dstDir, filepath.Base(src))
	if out, err := exec.Command("cp", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp %s %s: %v: %s", src, dst, err, out)
	}
	return dst
}

// offlineSystem installs a copy of the cached Debian 13 root (tx 1) with
// the real `bootctl install` (no disk image: nothing boots it) and makes
// its live /etc tx 1's, as initagent does at the first boot.
func offlineSystem(t *testing.T, droot string) *fixture.DebianSystem {
	t.Helper()
	start := time.Now()
	sys, err := fixture.BuildDebian(t.Context(), fixture.DebianSpec{Bins: getBins(t), Dir: t.TempDir(), Root: droot,
		Cmdline: "console=ttyS0 panic=-1", NoDisk: true})
	if err != nil {
		if sys != nil {
			t.Logf("bootctl log:\n%s", sys.BootctlLog.String())
		}
		t.Fatal(err)
	}
	t.Logf("installed a copy of %s in %s", droot, time.Since(start).Round(time.Millisecond))
	if _, ok, err := etcstate.Owner(sys.RootDir); err != nil || !ok {
		etcSwitch(t, sys, 1) // the first boot of tx 1 adopts the live /etc
	}
	return sys
}

// etcSwitch does what initagent does at boot once tx id is chosen: give
// it its /etc.
func etcSwitch(t *testing.T, sys *fixture.DebianSystem, id uint64) {
	t.Helper()
	res, err := etcstate.Switch(sys.RootDir, id)
	if err != nil {
		t.Fatalf("etcstate.Switch(%s, %d): %v", sys.RootDir, id, err)
	}
	t.Logf("boot of tx %d: %s", id, res)
	if res.Warning != "" {
		t.Errorf("etcstate.Switch to tx %d warns: %s", id, res.Warning)
	}
	owner, ok, err := etcstate.Owner(sys.RootDir)
	if err != nil || !ok || owner != id {
		t.Fatalf("after Switch to tx %d the live /etc belongs to %d (ok %v, %v)", id, owner, ok, err)
	}
}

// TestRunOffline: `bootctl --root ROOT run` on installed copies of the
// Debian 13 root, on the host (no QEMU): a package from apt, a failing
// and an empty command, two stacked runs, the package database of every
// tx against its own /usr, /etc across package versions and rollbacks,
// the same run on two stores, and a kernel package.
func TestRunOffline(t *testing.T) {
	harness.Need(t, "root", "debootstrap")
	t.Parallel()
	repo, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	droot, debs, err := fixture.DebianRoot(t.Context(), repo, fixture.Trixie)
	if err != nil {
		t.Fatal(err)
	}
	hellos, _ := filepath.Glob(filepath.Join(debs, "hello_*.deb"))
	if len(hellos) != 1 {
		t.Fatalf("hello .deb in %s: %v", debs, hellos)
	}
	hello, helloV := hellos[0], debVersion(t, hellos[0])
	own := buildDebs(t, t.TempDir(), txtestTool, confPkg(1), confPkg(2))

	a := offlineSystem(t, droot)
	var tx2 string // tx 2's digest on store a: apt-get install -y hello from tx 1
	t.Run("false", func(t *testing.T) { runFalseTrue(t, a) })
	t.Run("apt-get", func(t *testing.T) { tx2 = runAptHello(t, a, hello, helloV) })
	t.Run("stack", func(t *testing.T) { runStack(t, a, own[0], helloV) })
	t.Run("etc", func(t *testing.T) { runEtc(t, a, own[1], own[2]) })
	t.Run("db-per-tx", func(t *testing.T) { wantDBPerTx(t, a) })
	t.Run("rollback", func(t *testing.T) { runRollback(t, a) })

	b := offlineSystem(t, droot)
	t.Run("same-digest", func(t *testing.T) { runSameDigest(t, a, b, hello, tx2) })
	t.Run("kernel", func(t *testing.T) { runKernel(t, b) })
	t.Run("bench", func(t *testing.T) { benchApt(t, b, droot, hello, tx2) })
	t.Run("touch", func(t *testing.T) { runTouch(t, a) })
}

// runTouch: touch changes only the mtime, which a tx does not record;
// the overlay copies the file up all the same, and the copy must keep the
// tx's mode (the store's trees have no write bits). And a run from a tx
// whose /etc is not the live one changes nothing when its command does
// nothing.
func runTouch(t *testing.T, sys *fixture.DebianSystem) {
	owner, _, err := etcstate.Owner(sys.RootDir)
	must(t, err)
	for _, args := range [][]string{
		{"--from", strconv.FormatUint(owner, 10), "--", "touch", "/usr/share/doc/dpkg/copyright"},
		{"--from", "1", "--", "true"}, // the live /etc is tx `owner`'s
	} {
		before := txIDs(t, sys)
		out, code, _ := bootctlRC(t, sys, append([]string{"run"}, args...)...)
		if code != 0 || !strings.Contains(out, "changed nothing") {
			t.Errorf("run %s (the live /etc is tx %d's): exit %d, want 0 and \"changed nothing\":\n%s", strings.Join(args, " "), owner, code, out)
			if ids := txIDs(t, sys); len(ids) > len(before) {
				bootctlOK(t, sys, "diff", args[1], strconv.FormatUint(ids[len(ids)-1], 10))
			}
		}
	}
}

// runFalseTrue: a failing command passes its exit code on and records
// nothing; one that changes nothing records nothing and says so.
func runFalseTrue(t *testing.T, sys *fixture.DebianSystem) {
	before, live := txIDs(t, sys), liveState(t, sys.RootDir)
	out, code, _ := bootctlRC(t, sys, "run", "--", "sh", "-c", "echo broken >/usr/share/txtest-false; exit 3")
	if code != 3 || !strings.Contains(out, "nothing recorded") {
		t.Errorf("run -- (exit 3): exit %d, want 3 and \"nothing recorded\":\n%s", code, out)
	}
	out, code, _ = bootctlRC(t, sys, "run", "--", "false")
	if code != 1 {
		t.Errorf("run -- false: exit %d, want 1:\n%s", code, out)
	}
	var trues []time.Duration
	for range 3 {
		out, code, d := bootctlRC(t, sys, "run", "--", "true")
		if code != 0 || !strings.Contains(out, "changed nothing") {
			t.Errorf("run -- true: exit %d, want 0 and \"changed nothing\":\n%s", code, out)
		}
		trues = append(trues, d)
	}
	if after := txIDs(t, sys); !slices.Equal(before, after) {
		t.Errorf("txs %v before, %v after runs that must record nothing", before, after)
	}
	wantLiveSame(t, sys.RootDir, live, "failing and empty runs")
	staging, _ := os.ReadDir(filepath.Join(sys.RootDir, txstore.DirName, "staging"))
	for _, de := range staging {
		if strings.HasPrefix(de.Name(), "run-") {
			t.Errorf("a run's working copy was left behind: staging/%s", de.Name())
		}
	}
	slices.Sort(trues)
	t.Logf("MEASURE run -- true on Debian 13's /usr (open the working copy, record nothing), 3 runs: %s (median %s)",
		durs(trues), trues[1].Round(time.Millisecond))
}

func durs(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Round(time.Millisecond).String())
	}
	return strings.Join(s, " ")
}

// seedApt puts a .deb into the root's apt archive cache, so that apt
// takes it from there instead of the network (its hash matches the
// root's package lists).
func seedApt(t *testing.T, sys *fixture.DebianSystem, deb string) {
	t.Helper()
	copyInto(t, deb, filepath.Join(sys.RootDir, "var/cache/apt/archives"))
}

// runAptHello: apt-get install -y hello makes tx 2 from tx 1; show, show
// --packages and diff report it. It returns tx 2's digest.
func runAptHello(t *testing.T, sys *fixture.DebianSystem, hello, helloV string) string {
	seedApt(t, sys, hello)
	id, r := runTx(t, sys, "--", "apt-get", "install", "-y", "hello")
	if id != 2 {
		t.Fatalf("apt-get install hello made tx %d, want 2", id)
	}
	logRunStats(t, "run -- apt-get install -y hello (offline, host)", r)
	tx := getTx(t, sys, 2)
	if tx.Parent != 1 || tx.Summary != "apt-get install -y hello" {
		t.Errorf("tx 2: parent %d summary %q, want 1 and the command line", tx.Parent, tx.Summary)
	}
	if !slices.Contains(tx.PkgChanges, txstore.PkgChange{Name: "hello", Arch: "amd64", New: helloV}) {
		t.Errorf("tx 2's package changes %+v lack hello %s installed", tx.PkgChanges, helloV)
	}
	if def := defaultTx(t, sys); def != 2 || tx.State != txstore.StatePending {
		t.Errorf("after the run: default %d, tx 2 %s; want tx 2 the default, pending", def, tx.State)
	}
	if !exists(filepath.Join(treeUsr(sys, 2), "bin/hello")) || exists(filepath.Join(treeUsr(sys, 1), "bin/hello")) {
		t.Errorf("usr/bin/hello: in tx 2 %v, in tx 1 %v; want only tx 2", exists(filepath.Join(treeUsr(sys, 2), "bin/hello")), exists(filepath.Join(treeUsr(sys, 1), "bin/hello")))
	}
	if v := installedVersion(t, sys, 2, "hello"); v != helloV {
		t.Errorf("tx 2's dpkg status: hello %q, want %s", v, helloV)
	}
	if v := installedVersion(t, sys, 1, "hello"); v != "" {
		t.Errorf("tx 1's dpkg status: hello %q, want not installed", v)
	}
	// What the administrator reads.
	show, _ := bootctlOK(t, sys, "show", "2")
	if !regexp.MustCompile(`(?m)^.*\binstalled\b.*\bhello(:amd64)? +` + regexp.QuoteMeta(helloV) + `\b`).MatchString(show) {
		t.Errorf("bootctl show 2 does not list hello installed:\n%s", show)
	}
	pk, _ := bootctlOK(t, sys, "show", "--packages", "2")
	if !slices.Contains(strings.Fields(pk), "hello="+helloV) {
		t.Errorf("bootctl show --packages 2 lacks hello=%s", helloV)
	}
	if pk1, _ := bootctlOK(t, sys, "show", "--packages", "1"); strings.Contains(pk1, "hello=") {
		t.Errorf("bootctl show --packages 1 lists hello")
	}
	diff, _ := bootctlOK(t, sys, "diff", "1", "2")
	for _, want := range []string{"hello", "bin/hello", "lib/sysimage/dpkg/status"} {
		if !strings.Contains(diff, want) {
			t.Errorf("bootctl diff 1 2 does not mention %s", want)
		}
	}
	// dpkg opens its lock files for writing: the overlay copies them up,
	// but their mode is the tx's, not the store's read-only copy's.
	if m := regexp.MustCompile(`(?m)^.*\(.*mode.*\)$`).FindAllString(diff, -1); len(m) > 0 {
		t.Errorf("bootctl diff 1 2 lists mode changes nobody made:\n%s", strings.Join(m, "\n"))
	}
	return tx.Digest
}

func defaultTx(t *testing.T, sys *fixture.DebianSystem) uint64 {
	t.Helper()
	var def uint64
	storeView(t, sys, func(s *txstore.Store) {
		var err error
		if def, err = s.Default(); err != nil {
			t.Fatal(err)
		}
	})
	return def
}

// logRunStats logs a run's wall time, split at the commit's report
// (working copy + command + commit | initrd + entries), and what it
// stored.
func logRunStats(t *testing.T, what string, r *bootctlResult) {
	t.Helper()
	split := ""
	if at := r.At("committed tx "); at > 0 {
		split = fmt.Sprintf(" (%s to the commit's report, %s initrd and entries)", at.Round(time.Millisecond), (r.Wall - at).Round(time.Millisecond))
	}
	if m := newObjRe.FindStringSubmatch(r.Out); m != nil {
		t.Logf("MEASURE %s: %s wall%s; tx of %s entries, %s new objects (%s), %s deduplicated, commit %s",
			what, r.Wall.Round(time.Millisecond), split, m[1], m[2], m[3], m[4], m[5])
	} else {
		t.Logf("MEASURE %s: %s wall%s (no commit stats line in the output)", what, r.Wall.Round(time.Millisecond), split)
	}
}

// runStack: a second run before any reboot starts from the pending tx 2,
// says so, and its tx has both packages.
func runStack(t *testing.T, sys *fixture.DebianSystem, tool, helloV string) {
	copyInto(t, tool, filepath.Join(sys.RootDir, "var/tmp"))
	id, r := runTx(t, sys, "--", "dpkg", "-i", "/var/tmp/"+filepath.Base(tool))
	if id != 3 || !strings.Contains(r.Out, "starting from tx 2, an earlier run's that has not booted yet") {
		t.Errorf("stacked run: tx %d, want 3, and a word that it starts from the pending tx 2:\n%s", id, r.Out)
	}
	tx := getTx(t, sys, id)
	if tx.Parent != 2 || len(tx.PkgChanges) != 1 || tx.PkgChanges[0].Name != "txtest-tool" {
		t.Errorf("tx %d: parent %d, changes %+v; want parent 2, txtest-tool only", id, tx.Parent, tx.PkgChanges)
	}
	for _, f := range []string{"bin/hello", "bin/txtest-tool"} {
		if !exists(filepath.Join(treeUsr(sys, id), f)) {
			t.Errorf("tx %d lacks usr/%s", id, f)
		}
	}
	if v := installedVersion(t, sys, id, "hello"); v != helloV {
		t.Errorf("tx %d: hello %q, want %s", id, v, helloV)
	}
	if v := installedVersion(t, sys, id, "txtest-tool"); v != txtestTool.Version {
		t.Errorf("tx %d: txtest-tool %q, want %s", id, v, txtestTool.Version)
	}
	if def := defaultTx(t, sys); def != id {
		t.Errorf("default %d, want the stacked tx %d", def, id)
	}
}

// etcFile is ROOT/etc/txtest-conf/NAME.conf plus suffix.
func etcFile(sys *fixture.DebianSystem, name, suffix string) string {
	return filepath.Join(sys.RootDir, "etc/txtest-conf", name+".conf"+suffix)
}

// confState describes the live /etc/txtest-conf: each file and what is
// kept beside it.
func confState(t *testing.T, sys *fixture.DebianSystem) string {
	t.Helper()
	des, _ := os.ReadDir(filepath.Join(sys.RootDir, "etc/txtest-conf"))
	var s []string
	for _, de := range des {
		s = append(s, fmt.Sprintf("%s=%q", de.Name(), readText(t, filepath.Join(sys.RootDir, "etc/txtest-conf", de.Name()))))
	}
	return strings.Join(s, " ")
}

// wantConf checks a conffile's live text ("" = absent).
func wantConf(t *testing.T, sys *fixture.DebianSystem, when, name, suffix, want string) {
	t.Helper()
	p := etcFile(sys, name, suffix)
	if want == "" {
		if exists(p) {
			t.Errorf("%s: /etc/txtest-conf/%s.conf%s is there (%q), want it absent", when, name, suffix, readText(t, p))
		}
		return
	}
	if got := readText(t, p); got != want {
		t.Errorf("%s: /etc/txtest-conf/%s.conf%s = %q, want %q", when, name, suffix, got, want)
	}
}

// besideSuffix is where the package's new version of an edited conffile
// is: dpkg's .dpkg-dist (it kept the administrator's in the run), else
// the switch's .txboot-new.
func besideSuffix(sys *fixture.DebianSystem, name string) string {
	for _, s := range []string{".dpkg-dist", etcstate.BesideSuffix} {
		if exists(etcFile(sys, name, s)) {
			return s
		}
	}
	return ""
}

// runEtc: /etc across two versions of a package with three conffiles, a
// rollback, and an edit made between a run and the boot into its tx.
func runEtc(t *testing.T, sys *fixture.DebianSystem, v1, v2 string) {
	for _, deb := range []string{v1, v2} {
		copyInto(t, deb, filepath.Join(sys.RootDir, "var/tmp"))
	}
	// The stacked tx boots: its /etc is merged in (apt and dpkg changed
	// nothing in /etc, so the live one stays).
	cur := defaultTx(t, sys)
	etcSwitch(t, sys, cur)

	// A: txtest-conf v1 installed; it boots and gets v1's conffiles.
	a, _ := runTx(t, sys, "--", "dpkg", "-i", "/var/tmp/"+filepath.Base(v1))
	for _, n := range confNames {
		if exists(etcFile(sys, n, "")) {
			t.Fatalf("the run of v1 wrote /etc/txtest-conf/%s.conf into the live /etc", n)
		}
	}
	etcSwitch(t, sys, a)
	t.Logf("tx %d (v1) booted: %s", a, confState(t, sys))
	for _, n := range confNames {
		wantConf(t, sys, fmt.Sprintf("tx %d booted", a), n, "", confText(n, 1))
	}

	// The administrator edits one conffile and removes another.
	must(t, os.WriteFile(etcFile(sys, "edited", ""), []byte(adminEdit), 0o644))
	must(t, os.Remove(etcFile(sys, "removed", "")))
	underA := confState(t, sys)

	// B: v2 (runTx checks the live /etc did not change).
	b, r := runTx(t, sys, "--", "dpkg", "-i", "/var/tmp/"+filepath.Base(v2))
	if !strings.Contains(r.Out, "/etc changed") {
		t.Errorf("the run of v2 does not say /etc changed:\n%s", r.Out)
	}
	etcSwitch(t, sys, b)
	t.Logf("tx %d (v2) booted: %s", b, confState(t, sys))
	when := fmt.Sprintf("tx %d (v2) booted", b)
	wantConf(t, sys, when, "edited", "", adminEdit)
	if s := besideSuffix(sys, "edited"); s == "" {
		t.Errorf("%s: the package's v2 of the edited conffile is nowhere beside it (.dpkg-dist or %s)", when, etcstate.BesideSuffix)
	} else {
		wantConf(t, sys, when, "edited", s, confText("edited", 2))
		st, _ := bootctlOK(t, sys, "status")
		if !strings.Contains(st, "/etc/txtest-conf/edited.conf"+s) {
			t.Errorf("bootctl status does not list /etc/txtest-conf/edited.conf%s kept beside:\n%s", s, st)
		}
	}
	wantConf(t, sys, when, "untouched", "", confText("untouched", 2))
	wantConf(t, sys, when, "removed", "", "")
	if v := readText(t, filepath.Join(treeUsr(sys, b), "share/txtest-conf/version")); v != "2\n" {
		t.Errorf("tx %d's /usr has txtest-conf %q, want 2", b, v)
	}

	// Rollback to A: the /etc it last ran with.
	etcSwitch(t, sys, a)
	if got := confState(t, sys); got != underA {
		t.Errorf("rolled back to tx %d: /etc/txtest-conf is %s, want what it ran with: %s", a, got, underA)
	}

	// C: v2 again from A; the administrator edits the untouched conffile
	// after the run, before the boot: a conflict, theirs kept beside.
	c, _ := runTx(t, sys, "--from", strconv.FormatUint(a, 10), "--", "dpkg", "-i", "/var/tmp/"+filepath.Base(v2))
	must(t, os.WriteFile(etcFile(sys, "untouched", ""), []byte(adminLate), 0o644))
	etcSwitch(t, sys, c)
	t.Logf("tx %d (v2 again, with a late edit) booted: %s", c, confState(t, sys))
	when = fmt.Sprintf("tx %d booted after a late edit", c)
	wantConf(t, sys, when, "untouched", "", adminLate)
	wantConf(t, sys, when, "untouched", etcstate.BesideSuffix, confText("untouched", 2))
	wantConf(t, sys, when, "edited", "", adminEdit)
	wantConf(t, sys, when, "removed", "", "")
	conf := readText(t, filepath.Join(etcstate.TxEtcDir(sys.RootDir, c), etcstate.ConflictsFile))
	if !strings.Contains(conf, "txtest-conf/untouched.conf") {
		t.Errorf("tx %d's %s does not list the conflict: %s", c, etcstate.ConflictsFile, conf)
	}
	st, _ := bootctlOK(t, sys, "status")
	if !strings.Contains(st, "/etc/txtest-conf/untouched.conf"+etcstate.BesideSuffix) {
		t.Errorf("bootctl status does not list the conflict on /etc/txtest-conf/untouched.conf:\n%s", st)
	}
}

// wantDBPerTx: every tx's dpkg database describes its own /usr. For each
// installed package whose files the test controls, its files are in the
// tree exactly when the tx's status has it installed, dpkg-query on the
// tree's admindir agrees with pkgdb, and dpkg --audit finds nothing.
func wantDBPerTx(t *testing.T, sys *fixture.DebianSystem) {
	probe := map[string]string{"hello": "bin/hello", "txtest-tool": "bin/txtest-tool", "txtest-conf": "share/txtest-conf/version"}
	for _, id := range txIDs(t, sys) {
		usr := treeUsr(sys, id)
		set := pkgs(t, sys, id)
		admin := filepath.Join(usr, "lib/sysimage/dpkg")
		q, err := exec.Command("dpkg-query", "--admindir="+admin, "-W", "-f", "${db:Status-Abbrev}${Package}=${Version}\n").Output()
		if err != nil {
			t.Errorf("tx %d: dpkg-query --admindir=%s: %v", id, admin, err)
		}
		var fromDpkg []string
		for _, l := range strings.Split(string(q), "\n") {
			if v, ok := strings.CutPrefix(l, "ii "); ok {
				fromDpkg = append(fromDpkg, v)
			}
		}
		var fromPkgdb []string
		for _, p := range set.Installed() {
			fromPkgdb = append(fromPkgdb, p.Name+"="+p.Version)
		}
		slices.Sort(fromDpkg)
		slices.Sort(fromPkgdb)
		if !slices.Equal(fromDpkg, fromPkgdb) {
			t.Errorf("tx %d: dpkg-query lists %d installed packages, pkgdb %d", id, len(fromDpkg), len(fromPkgdb))
		}
		if out, err := exec.Command("dpkg", "--admindir="+admin, "--audit").CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("tx %d: dpkg --audit: %v\n%s", id, err, out)
		}
		var have []string
		for name, f := range probe {
			v := installedVersion(t, sys, id, name)
			if (v != "") != exists(filepath.Join(usr, f)) {
				t.Errorf("tx %d: %s installed %q in its dpkg status, usr/%s there %v", id, name, v, f, exists(filepath.Join(usr, f)))
			}
			if v != "" {
				have = append(have, name+"="+v)
			}
		}
		slices.Sort(have)
		t.Logf("tx %d: %d packages installed; of the test's: %v", id, len(fromPkgdb), have)
	}
}

// txFingerprint: what must not change in a tx when another becomes the
// default: its record's digest, parent, packages, and its dpkg status.
func txFingerprints(t *testing.T, sys *fixture.DebianSystem) map[string]string {
	t.Helper()
	fp := map[string]string{}
	storeView(t, sys, func(s *txstore.Store) {
		txs, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, tx := range txs {
			k := strconv.FormatUint(tx.ID, 10)
			fp[k+" digest"] = tx.Digest
			fp[k+" parent"] = strconv.FormatUint(tx.Parent, 10)
			fp[k+" changes"] = fmt.Sprint(tx.PkgChanges)
			b, err := os.ReadFile(filepath.Join(treeUsr(sys, tx.ID), pkgdb.StatusRel))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			fp[k+" status"] = hex.EncodeToString(sum[:])
		}
	})
	return fp
}

// runRollback: set-default and rollback choose a tx; no tx's /usr,
// package database or record changes, and verify finds every tree whole.
func runRollback(t *testing.T, sys *fixture.DebianSystem) {
	efi := t.TempDir()
	before := txFingerprints(t, sys)
	ids := txIDs(t, sys)
	last := ids[len(ids)-1]
	bootctlOK(t, sys, "set-default", "--efivars", efi, "2")
	if d := defaultTx(t, sys); d != 2 {
		t.Errorf("set-default 2: default %d", d)
	}
	// rollback goes to the newest good tx older than the default: tx 1
	// after the install is good only once it booted; mark it so, as its
	// health check would.
	if getTx(t, sys, 1).State != txstore.StateGood {
		bootctlOK(t, sys, "mark-good", "1")
	}
	bootctlOK(t, sys, "set-default", "--efivars", efi, strconv.FormatUint(last, 10))
	out, _ := bootctlOK(t, sys, "rollback", "--efivars", efi)
	if d := defaultTx(t, sys); d != 1 {
		t.Errorf("rollback from tx %d: default %d, want 1:\n%s", last, d, out)
	}
	if diff := mapDiff(before, txFingerprints(t, sys)); len(diff) > 0 {
		t.Errorf("set-default/rollback changed txs:\n%s", strings.Join(diff, "\n"))
	}
	bootctlOK(t, sys, "verify")
	if v := installedVersion(t, sys, 1, "hello"); v != "" {
		t.Errorf("after the rollback tx 1's database has hello %s", v)
	}
	bootctlOK(t, sys, "set-default", "--efivars", efi, strconv.FormatUint(last, 10))
}

// runSameDigest: the same apt-get install from tx 1 on another store
// gives the same tx digest.
func runSameDigest(t *testing.T, a, b *fixture.DebianSystem, hello, want string) {
	if d1a, d1b := getTx(t, a, 1).Digest, getTx(t, b, 1).Digest; d1a != d1b {
		t.Fatalf("tx 1 differs between the two installs (%s, %s): nothing to compare from", d1a, d1b)
	}
	seedApt(t, b, hello)
	id, _ := runTx(t, b, "--from", "1", "--", "apt-get", "install", "-y", "hello")
	got := getTx(t, b, id).Digest
	if got == want {
		t.Logf("the same run on two stores: the same digest %s", got)
		return
	}
	t.Errorf("apt-get install -y hello from tx 1: digest %s on one store, %s on the other; what differs:\n%s",
		want, got, strings.Join(manifestDiff(t, a, 2, b, id), "\n"))
}

// manifestDiff lists the entries that differ between tx ia of a and tx ib of b.
func manifestDiff(t *testing.T, a *fixture.DebianSystem, ia uint64, b *fixture.DebianSystem, ib uint64) []string {
	t.Helper()
	entries := func(sys *fixture.DebianSystem, id uint64) map[string]string {
		m := map[string]string{}
		storeView(t, sys, func(s *txstore.Store) {
			tx, err := s.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			man, err := s.Manifest(tx)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range man.Entries {
				m[e.Path] = fmt.Sprintf("type %v mode %o %d:%d size %d hash %x target %q xattrs %q", e.Type, e.Mode, e.UID, e.GID, e.Size, e.Hash, e.Target, e.Xattrs)
			}
		})
		return m
	}
	d := mapDiff(entries(a, ia), entries(b, ib))
	if len(d) > 100 {
		d = append(d[:100], fmt.Sprintf("  … and %d more", len(d)-100))
	}
	return d
}

// runKernel: a run that replaces the kernel, Debian's generic package
// (cached by scripts/fetch-kernels.sh) in, the cloud one the root came
// with purged, gives the new tx that kernel only, with txboot's initrd
// and an entry booting it; Debian's hooks write nothing to /boot and
// build no initrd of their own.
func runKernel(t *testing.T, sys *fixture.DebianSystem) {
	debsDir := filepath.Join(harness.KernelDir(), "debs")
	ks, _ := filepath.Glob(filepath.Join(debsDir, "linux-image-*-amd64_*.deb"))
	ks = slices.DeleteFunc(ks, func(p string) bool { return strings.Contains(filepath.Base(p), "-cloud-") })
	if len(ks) == 0 {
		testkit.Skipf(t, "no generic linux-image .deb in %s (scripts/fetch-kernels.sh downloads it)", debsDir)
	}
	deb := copyInto(t, ks[0], filepath.Join(sys.RootDir, "var/tmp"))
	pkg := strings.SplitN(filepath.Base(deb), "_", 2)[0]
	kver := strings.TrimPrefix(pkg, "linux-image-")
	old := getTx(t, sys, 1).Kernels
	if len(old) != 1 || old[0] == kver {
		t.Fatalf("tx 1's kernels %v: want one, not %s", old, kver)
	}
	espBefore := map[string]string{}
	must(t, snapshotDir(sys.ESPDir, "", espBefore))
	cmd := fmt.Sprintf("dpkg -i /var/tmp/%s && dpkg --purge linux-image-cloud-amd64 linux-image-%s", filepath.Base(deb), old[0])
	id, r := runTx(t, sys, "--from", "1", "--", "sh", "-c", cmd)
	logRunStats(t, "run -- dpkg -i "+filepath.Base(deb)+" + purge the cloud kernel (offline, host)", r)
	tx := getTx(t, sys, id)
	if !slices.Equal(tx.Kernels, []string{kver}) {
		t.Errorf("tx %d: kernels %v, want [%s]", id, tx.Kernels, kver)
	}
	for _, w := range []string{"kernel " + kver + ": in usr/lib/modules", "kernel " + old[0] + " removed", "initrd for " + kver} {
		if !strings.Contains(r.Out, w) {
			t.Errorf("the run does not say %q", w)
		}
	}
	usr := treeUsr(sys, id)
	if !exists(filepath.Join(usr, "lib/modules", kver, "vmlinuz")) || exists(filepath.Join(usr, "lib/modules", old[0])) {
		t.Errorf("tx %d: usr/lib/modules/%s/vmlinuz there %v, usr/lib/modules/%s there %v; want the new one only", id, kver,
			exists(filepath.Join(usr, "lib/modules", kver, "vmlinuz")), old[0], exists(filepath.Join(usr, "lib/modules", old[0])))
	}
	if v := installedVersion(t, sys, id, pkg); v == "" {
		t.Errorf("tx %d's dpkg status does not have %s installed", id, pkg)
	}
	if v := installedVersion(t, sys, id, "linux-image-"+old[0]); v != "" {
		t.Errorf("tx %d's dpkg status still has linux-image-%s %s", id, old[0], v)
	}
	// Debian's initrd: initramfs-tools writes /boot/initrd.img-V (the
	// run's /boot is private); nothing like it may reach the tx.
	var initrds []string
	filepath.WalkDir(usr, func(p string, de fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(de.Name(), "initrd.img") {
			initrds = append(initrds, p)
		}
		return nil
	})
	if len(initrds) > 0 {
		t.Errorf("tx %d carries Debian initrds: %v", id, initrds)
	}
	wantKernelEntry(t, sys, id, kver, espBefore)
}

// wantKernelEntry: the ESP has an entry for tx id booting kver, and
// nothing new on it is Debian's (kernel-install would add
// ENTRY-TOKEN/V/).
func wantKernelEntry(t *testing.T, sys *fixture.DebianSystem, id uint64, kver string, before map[string]string) {
	t.Helper()
	after := map[string]string{}
	must(t, snapshotDir(sys.ESPDir, "", after))
	var added []string
	for p := range after {
		if _, ok := before[p]; !ok {
			added = append(added, p)
		}
	}
	slices.Sort(added)
	t.Logf("ESP after the kernel run, new: %v", added)
	for _, p := range added {
		if !strings.HasPrefix(p, "txboot/") && !strings.HasPrefix(p, "loader/entries/txboot-") {
			t.Errorf("the kernel run put %s on the ESP (not txboot's)", p)
		}
	}
	entries, _ := filepath.Glob(filepath.Join(sys.ESPDir, "loader/entries", fmt.Sprintf("txboot-%d[.+]*conf", id)))
	if len(entries) != 1 {
		t.Fatalf("entries of tx %d on the ESP: %v", id, entries)
	}
	if e := readText(t, entries[0]); !strings.Contains(e, fmt.Sprintf("version %d-%s\n", id, kver)) {
		t.Errorf("tx %d's entry does not boot %s:\n%s", id, kver, e)
	}
}

// benchApt compares `run -- apt-get install -y hello` with the same
// apt-get in a plain chroot of a copy of the Debian root (its own /proc
// and /dev, nothing recorded), alternating, 3 times each (the host is
// shared: medians). Each run's tx must have digest, the first run's.
func benchApt(t *testing.T, sys *fixture.DebianSystem, droot, hello, digest string) {
	var plain, run, toCommit []time.Duration
	for i := range 3 {
		plain = append(plain, plainChrootApt(t, droot, hello, i))
		id, r := runTx(t, sys, "--from", "1", "--no-default", "--", "apt-get", "install", "-y", "hello")
		run, toCommit = append(run, r.Wall), append(toCommit, r.At("committed tx "))
		// The same run again, later: the same tx.
		if got := getTx(t, sys, id).Digest; got != digest {
			t.Errorf("apt-get install -y hello from tx 1, again: tx %d has digest %s, want %s", id, got, digest)
		}
	}
	for _, d := range [][]time.Duration{plain, run, toCommit} {
		slices.Sort(d)
	}
	t.Logf("MEASURE apt-get install -y hello, medians of 3: plain chroot %s (%s); bootctl run %s (%s), of which to the commit's report %s (%s); ratio %.2f (%.2f without initrd and entries)",
		plain[1].Round(time.Millisecond), durs(plain), run[1].Round(time.Millisecond), durs(run), toCommit[1].Round(time.Millisecond), durs(toCommit),
		float64(run[1])/float64(plain[1]), float64(toCommit[1])/float64(plain[1]))
}

// plainChrootApt runs apt-get install -y hello in a plain chroot of a
// fresh copy of droot and returns its wall time.
func plainChrootApt(t *testing.T, droot, hello string, i int) time.Duration {
	t.Helper()
	dir := filepath.Join(t.TempDir(), fmt.Sprintf("root-%d", i))
	if out, err := exec.Command("cp", "-a", droot, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy: %v: %s", err, out)
	}
	defer os.RemoveAll(dir)
	copyInto(t, hello, filepath.Join(dir, "var/cache/apt/archives"))
	script := `set -e
mount -t proc proc "$1/proc"
mount --rbind /dev "$1/dev"
exec chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 apt-get install -y hello`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", dir)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		t.Fatalf("plain chroot apt-get install -y hello: %v\n%s", err, out)
	}
	t.Logf("plain chroot apt-get install -y hello: %s", d.Round(time.Millisecond))
	return d
}

// guestFacts is the top of every script the guest runs through
// /var/lib/txtest-next: straight to the console (not through the report's
// prefix), with helpers that print TXTEST facts and prefixed lines.
const guestFacts = `exec >/dev/ttyS0 2>&1
bootctl=/usr/lib/txboot/bootctl
fact() { printf 'TXTEST %s=%s\n' "$1" "$2"; }
lines() { sed "s/^/TXTEST $1: /"; }
now() { echo $(( $(date +%s%N) / 1000000 )); }
`

// guestRun1: in tx 1, plain dpkg and apt-get refuse, and leave dpkg's
// database as it was; then hello is installed as a transaction.
const guestRun1 = guestFacts + `out=$(dpkg -i /var/tmp/hello.deb 2>&1); fact plain-dpkg-rc $?
printf '%s\n' "$out" | lines plain-dpkg-out
out=$(apt-get install -y /var/tmp/hello.deb 2>&1); fact plain-apt-rc $?
printf '%s\n' "$out" | lines plain-apt-out
out=$(dpkg --audit 2>&1); fact audit-rc $?
fact audit "$(printf '%s' "$out" | tr '\n' ' ')"
if dpkg -s hello >/dev/null 2>&1; then fact plain-hello installed; else fact plain-hello not-installed; fi
start=$(now)
out=$($bootctl run -- dpkg -i /var/tmp/hello.deb 2>&1); fact run-rc $?
fact run-ms $(( $(now) - start ))
printf '%s\n' "$out" | lines run-out
`

// guestRun2: in tx 2, hello is dpkg's too; then the package that breaks
// the boot, as a transaction with one try.
const guestRun2 = guestFacts + `fact dpkg-hello "$(dpkg -l hello 2>&1 | tail -n 1)"
out=$($bootctl run --tries 1 -- dpkg -i /var/tmp/txtest-break.deb 2>&1); fact break-rc $?
printf '%s\n' "$out" | lines break-out
`

// guestRun4: back on tx 2 after the broken tx 3, dpkg agrees with /usr.
const guestRun4 = guestFacts + `fact dpkg-hello "$(dpkg -l hello 2>&1 | tail -n 1)"
fact dpkg-break "$(dpkg -l txtest-break 2>&1 | tail -n 1)"
fact systemd-link "$(readlink /usr/lib/systemd/systemd)"
`

// statusTxs reads the per-tx states of a run's `bootctl status --json`.
func statusTxs(t *testing.T, r *debianRun) map[uint64]string {
	t.Helper()
	var st struct {
		Transactions []struct {
			ID    uint64 `json:"id"`
			State string `json:"state"`
		} `json:"transactions"`
	}
	if err := json.Unmarshal([]byte(r.fact("status-json")), &st); err != nil {
		t.Fatalf("run %d: bootctl status --json: %v", r.n, err)
	}
	m := map[uint64]string{}
	for _, tx := range st.Transactions {
		m[tx.ID] = tx.State
	}
	return m
}

// lines returns the run's console lines "TXTEST name: …", without the prefix.
func (r *debianRun) lines(name string) []string {
	var out []string
	for _, l := range strings.Split(r.out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "TXTEST "+name+": "); ok {
			out = append(out, v)
		}
	}
	return out
}

// TestDebianRun: `bootctl run` inside a booted Debian 13 under QEMU. Run 1
// (tx 1): plain dpkg and apt-get refuse and name bootctl run; `bootctl
// run -- dpkg -i hello.deb` makes tx 2. Run 2: tx 2 boots on trial, hello
// runs, dpkg knows it, the health check blesses it; `bootctl run --tries 1
// -- dpkg -i txtest-break.deb` (its postinst replaces systemd with
// /bin/false) makes tx 3. Run 3: tx 3 panics. Run 4: back on tx 2 with no
// input, where dpkg knows hello and not txtest-break.
func TestDebianRun(t *testing.T) {
	harness.Need(t, "uefi", "disk", "debootstrap")
	t.Parallel()
	start := time.Now()
	repo, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	_, debs, err := fixture.DebianRoot(t.Context(), repo, fixture.Trixie)
	if err != nil {
		t.Fatal(err)
	}
	brk := buildDebs(t, t.TempDir(), txtestBreak)[0]
	// The .debs go to /var/tmp in the image: apt's _apt sandbox user
	// cannot read /root.
	sys, hello, _ := debianSetup(t, fixture.Trixie, func(root string) error {
		hellos, _ := filepath.Glob(filepath.Join(debs, "hello_*.deb"))
		if len(hellos) != 1 {
			return fmt.Errorf("hello .deb in %s: %v", debs, hellos)
		}
		for src, name := range map[string]string{hellos[0]: "hello.deb", brk: "txtest-break.deb"} {
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(root, "var/tmp", name), b, 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	helloV := debVersion(t, hello)
	t.Logf("built the Debian 13 disk (tx 1, hello.deb and txtest-break.deb in /var/tmp) in %s", time.Since(start).Round(time.Millisecond))

	// Run 1: refusals, then the run.
	setNext(t, sys, guestRun1)
	r1 := bootDebian(t, sys, 1)
	r1.wantBooted(t, "1")
	r1.wantHealthyUp(t)
	wantRefused(t, r1)
	if r1.fact("run-rc") != "0" {
		t.Fatalf("run 1: bootctl run -- dpkg -i hello.deb exited %q:\n%s", r1.fact("run-rc"), strings.Join(r1.lines("run-out"), "\n"))
	}
	runOut := strings.Join(r1.lines("run-out"), "\n")
	t.Logf("run 1: bootctl run -- dpkg -i /var/tmp/hello.deb (%s ms):\n%s", r1.fact("run-ms"), runOut)
	if !strings.Contains(runOut, "committed tx 2 ") || !strings.Contains(runOut, "+ hello") {
		t.Errorf("run 1: the run did not commit tx 2 with hello installed")
	}

	// Run 2: tx 2 on trial, blessed; then the breaking package.
	setNext(t, sys, guestRun2)
	r2 := bootDebian(t, sys, 2)
	r2.wantBooted(t, "2")
	r2.wantHealthyUp(t)
	r2.want(t, "boot-complete", "active")
	if !helloWorldRe.MatchString(r2.fact("hello")) {
		t.Errorf("run 2: hello=%q, want it to run", r2.fact("hello"))
	}
	if f := strings.Fields(r2.fact("dpkg-hello")); len(f) < 3 || f[0] != "ii" || f[1] != "hello" || f[2] != helloV {
		t.Errorf("run 2: dpkg -l hello: %q, want ii hello %s", r2.fact("dpkg-hello"), helloV)
	}
	t.Logf("run 2: hello=%q; dpkg -l hello: %q", r2.fact("hello"), r2.fact("dpkg-hello"))
	if st := statusTxs(t, r2); st[2] != string(txstore.StateGood) {
		t.Errorf("run 2: tx 2 is %q after its health check, want good", st[2])
	}
	if r2.fact("break-rc") != "0" || !strings.Contains(strings.Join(r2.lines("break-out"), "\n"), "committed tx 3 ") {
		t.Fatalf("run 2: bootctl run --tries 1 -- dpkg -i txtest-break.deb exited %q:\n%s", r2.fact("break-rc"), strings.Join(r2.lines("break-out"), "\n"))
	}

	// Written now, into the /etc tx 2 leaves at the next boot: the
	// fallback gives tx 2 back that /etc.
	setNext(t, sys, guestRun4)
	r3 := bootDebian(t, sys, 3)
	r3.wantBooted(t, "3")
	if !strings.Contains(r3.out, debianPanic) {
		t.Errorf("run 3: tx 3 did not fail as expected:\n%s", tail(r3.out, 40))
	}
	r4 := bootDebian(t, sys, 4)
	r4.wantBooted(t, "2")
	r4.wantHealthyUp(t)
	if !helloWorldRe.MatchString(r4.fact("hello")) {
		t.Errorf("run 4: hello=%q, want it to run", r4.fact("hello"))
	}
	if f := strings.Fields(r4.fact("dpkg-hello")); len(f) < 3 || f[0] != "ii" || f[2] != helloV {
		t.Errorf("run 4: dpkg -l hello: %q, want ii hello %s", r4.fact("dpkg-hello"), helloV)
	}
	t.Logf("run 4: hello=%q; dpkg -l hello: %q; dpkg -l txtest-break: %q", r4.fact("hello"), r4.fact("dpkg-hello"), r4.fact("dpkg-break"))
	if b := r4.fact("dpkg-break"); strings.HasPrefix(b, "ii") || !strings.Contains(b, "no packages found") && !strings.HasPrefix(b, "un") {
		t.Errorf("run 4: dpkg -l txtest-break: %q, want it not installed", b)
	}
	if l := r4.fact("systemd-link"); l != "" {
		t.Errorf("run 4: /usr/lib/systemd/systemd is a symlink to %q", l)
	}
	if st := statusTxs(t, r4); st[3] != string(txstore.StateBad) {
		t.Errorf("run 4: tx 3 is %q, want bad", st[3])
	}
	m := newObjRe.FindStringSubmatch(runOut)
	if m == nil {
		m = make([]string, 6)
	}
	t.Logf("MEASURE in-guest bootctl run -- dpkg -i hello.deb (TCG, run 1): %s ms wall; tx 2: %s new objects (%s), commit %s",
		r1.fact("run-ms"), m[2], m[3], m[5])
	t.Logf("TestDebianRun done in %s", time.Since(start).Round(time.Second))
}

// wantRefused: on the running system plain dpkg -i and apt-get install
// refuse, name bootctl run, and dpkg's database is as before.
func wantRefused(t *testing.T, r *debianRun) {
	t.Helper()
	for _, c := range []struct{ name, fact, out string }{
		{"dpkg -i /var/tmp/hello.deb", "plain-dpkg-rc", "plain-dpkg-out"},
		{"apt-get install -y /var/tmp/hello.deb", "plain-apt-rc", "plain-apt-out"},
	} {
		out := strings.Join(r.lines(c.out), "\n")
		t.Logf("run %d: plain %s: exit %s:\n%s", r.n, c.name, r.fact(c.fact), out)
		if rc := r.fact(c.fact); rc == "0" || rc == "" {
			t.Errorf("run %d: plain %s on the live system exited %q, want a refusal", r.n, c.name, rc)
		}
		if !strings.Contains(out, "bootctl run") {
			t.Errorf("run %d: plain %s does not name bootctl run:\n%s", r.n, c.name, out)
		}
	}
	if r.fact("audit-rc") != "0" || r.fact("audit") != "" {
		t.Errorf("run %d: dpkg --audit after the refusals: exit %q, %q", r.n, r.fact("audit-rc"), r.fact("audit"))
	}
	r.want(t, "plain-hello", "not-installed")
}
