package run_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/bootctl/run"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testkit"
)

// TestMain lets the test binary be the run's child too: Run starts
// /proc/self/exe with ChildArg, as bootctl's main does.
func TestMain(m *testing.M) {
	if len(os.Args) == 2 && os.Args[1] == run.ChildArg {
		os.Exit(run.Child())
	}
	os.Exit(m.Run())
}

// hostBins are the host's programs (and their libraries) a tiny system
// root gets, enough for sh -c scripts.
var hostBins = []string{"/usr/bin/dash", "/usr/bin/rm", "/usr/bin/cat", "/usr/bin/mkdir",
	"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
	"/usr/lib/x86_64-linux-gnu/libselinux.so.1", "/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0"}

// tinyRoot is a merged-/usr system root whose /usr is tx 1 of its store:
// the host's dash as /bin/sh, a few tools, an /etc, a kernel's modules
// directory without a kernel.
func tinyRoot(t *testing.T) (string, *txstore.Store) {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Skip(t, "bootctl run needs root (namespaces, overlayfs)")
	}
	root := t.TempDir()
	usr := filepath.Join(root, "usr-src")
	for _, b := range hostBins {
		rel := strings.TrimPrefix(b, "/usr/")
		if strings.HasPrefix(rel, "bin/") {
			rel = "bin/" + filepath.Base(b)
		}
		copyHost(t, b, filepath.Join(usr, rel))
	}
	must(t, os.Symlink("dash", filepath.Join(usr, "bin/sh")))
	must(t, os.MkdirAll(filepath.Join(usr, "lib64"), 0o755))
	must(t, os.Symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", filepath.Join(usr, "lib64/ld-linux-x86-64.so.2")))
	must(t, os.MkdirAll(filepath.Join(usr, "lib/modules/6.1.0-test/kernel"), 0o755))
	must(t, os.MkdirAll(filepath.Join(usr, "share/doc"), 0o755))
	must(t, os.WriteFile(filepath.Join(usr, "share/doc/old.txt"), []byte("old\n"), 0o644))
	must(t, os.MkdirAll(filepath.Join(usr, "sbin"), 0o755))
	for _, d := range []string{"usr", "etc", "var/lib", "tmp", "proc", "sys", "dev", "run", "boot"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for _, l := range [][2]string{{"usr/bin", "bin"}, {"usr/lib", "lib"}, {"usr/lib64", "lib64"}, {"usr/sbin", "sbin"}} {
		must(t, os.Symlink(l[0], filepath.Join(root, l[1])))
	}
	must(t, os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("tiny\n"), 0o644))
	s, err := txstore.Open(root, txstore.Options{Create: true})
	must(t, err)
	t.Cleanup(func() { s.Close() })
	if _, _, err := s.Commit(usr, txstore.CommitOptions{Summary: "tiny", Consume: true, Made: "install"}); err != nil {
		t.Fatal(err)
	}
	return root, s
}

func copyHost(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		testkit.Skipf(t, "the host has no %s for the tiny root: %v", src, err)
	}
	must(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	must(t, os.WriteFile(dst, b, 0o755))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func sh(t *testing.T, s *txstore.Store, root, script string) (*run.Result, string) {
	t.Helper()
	var out bytes.Buffer
	res, err := run.Run(s, run.Options{Root: root, Argv: []string{"sh", "-c", script}, Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatalf("run %q: %v\n%s", script, err, out.String())
	}
	return res, out.String()
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func TestRunCommitsChanges(t *testing.T) {
	root, s := tinyRoot(t)
	res, out := sh(t, s, root, `set -e
echo new > /usr/share/doc/new.txt
rm /usr/share/doc/old.txt
echo conf > /etc/app.conf
echo scratch > /tmp/scratch
echo top > /top-level
echo live > /var/lib/live
test -x /usr/sbin/policy-rc.d; /usr/sbin/policy-rc.d x start && exit 9 || test $? = 101
test ! -e /.txboot/store.db
test "$DPKG_FORCE" = confdef,confold,downgrade,security-mac
echo kernel > /boot/vmlinuz-6.1.0-test`)
	if res.Code != 0 || res.Tx == nil {
		t.Fatalf("code %d, tx %v\n%s", res.Code, res.Tx, out)
	}
	tree := s.TreeDir(res.Tx.ID)
	if b, err := os.ReadFile(filepath.Join(tree, "share/doc/new.txt")); err != nil || string(b) != "new\n" {
		t.Errorf("new file in tx %d: %q %v", res.Tx.ID, b, err)
	}
	if exists(filepath.Join(tree, "share/doc/old.txt")) {
		t.Errorf("removed file still in tx %d", res.Tx.ID)
	}
	if exists(filepath.Join(tree, "sbin/policy-rc.d")) {
		t.Errorf("the run's policy-rc.d leaked into tx %d", res.Tx.ID)
	}
	if res.Tx.Parent != res.From.ID || !strings.Contains(res.Tx.Summary, "echo new") {
		t.Errorf("parent %d (from %d), summary %q", res.Tx.Parent, res.From.ID, res.Tx.Summary)
	}
	if got := strings.Join(res.Tx.Kernels, ","); got != "6.1.0-test" {
		t.Errorf("kernels %q, want the one the command put in /boot", got)
	}
	// The live system is untouched until the tx boots.
	if b, err := os.ReadFile(filepath.Join(root, "var/lib/live")); err != nil || string(b) != "live\n" {
		t.Errorf("/var is not the live one in a run: %q %v", b, err)
	}
	for _, p := range []string{"etc/app.conf", "tmp/scratch", "boot/vmlinuz-6.1.0-test", "top-level"} {
		if exists(filepath.Join(root, p)) {
			t.Errorf("%s appeared on the live system", p)
		}
	}
	if !res.EtcChanged || !exists(filepath.Join(filepath.Dir(tree), "etc/new/app.conf")) {
		t.Errorf("tx %d carries no /etc with app.conf (EtcChanged %v)", res.Tx.ID, res.EtcChanged)
	}
	if b, _ := os.ReadFile(filepath.Join(s.TreeDir(res.From.ID), "share/doc/old.txt")); string(b) != "old\n" {
		t.Errorf("the source tx changed: %q", b)
	}
	noStaging(t, s)
}

func TestRunFailsOrChangesNothing(t *testing.T) {
	root, s := tinyRoot(t)
	for _, c := range []struct {
		script    string
		code      int
		unchanged bool
	}{
		{"echo x > /usr/share/doc/x; exit 3", 3, false},
		{"kill -9 $$", 128 + 9, false},
		{"cat /usr/share/doc/old.txt > /dev/null", 0, true},
		{"echo old > /usr/share/doc/old.txt", 0, true}, // rewritten with the same bytes
	} {
		res, out := sh(t, s, root, c.script)
		if res.Code != c.code || res.Tx != nil || res.Unchanged != c.unchanged {
			t.Errorf("%q: code %d tx %v unchanged %v, want code %d unchanged %v\n%s", c.script, res.Code, res.Tx, res.Unchanged, c.code, c.unchanged, out)
		}
	}
	txs, err := s.List()
	must(t, err)
	if len(txs) != 1 {
		t.Errorf("%d txs, want only tx 1", len(txs))
	}
	noStaging(t, s)
}

func TestRunStacks(t *testing.T) {
	root, s := tinyRoot(t)
	r1, _ := sh(t, s, root, "echo one > /usr/share/doc/one; echo a > /etc/a.conf")
	r2, out := sh(t, s, root, "test -e /usr/share/doc/one && test -e /etc/a.conf && echo two > /usr/share/doc/two")
	if r2.Tx == nil {
		t.Fatalf("second run recorded nothing (code %d)\n%s", r2.Code, out)
	}
	if r2.From.ID != r1.Tx.ID || r2.Tx.Parent != r1.Tx.ID {
		t.Errorf("second run from %d parent %d, want tx %d (the pending default)", r2.From.ID, r2.Tx.Parent, r1.Tx.ID)
	}
	tree := s.TreeDir(r2.Tx.ID)
	for _, p := range []string{"share/doc/one", "share/doc/two"} {
		if !exists(filepath.Join(tree, p)) {
			t.Errorf("tx %d lacks %s", r2.Tx.ID, p)
		}
	}
	if !exists(filepath.Join(filepath.Dir(tree), "etc/new/a.conf")) {
		t.Errorf("tx %d's /etc lost the first run's a.conf", r2.Tx.ID)
	}
}

func TestRunRefusesVarLibDpkg(t *testing.T) {
	root, s := tinyRoot(t)
	must(t, os.MkdirAll(filepath.Join(root, "var/lib/dpkg"), 0o755))
	_, err := run.Run(s, run.Options{Root: root, Argv: []string{"true"}, Stdout: io.Discard, Stderr: io.Discard})
	if !errors.Is(err, run.ErrNoPkgDB) {
		t.Fatalf("err %v, want ErrNoPkgDB", err)
	}
}

// TestRunNeverExecutesUnbootedTx: a committed (or pulled) tx that has
// not booted is data: a run from it is refused before anything runs, the
// stacked run from a run's tx is not, and once the tx booted it may.
func TestRunNeverExecutesUnbootedTx(t *testing.T) {
	root, s := tinyRoot(t)
	src := t.TempDir()
	copyHost(t, "/usr/bin/dash", filepath.Join(src, "bin/sh"))
	must(t, os.WriteFile(filepath.Join(src, "bin/evil"), []byte("#!/bin/sh\ntouch /var/lib/pwned\n"), 0o755))
	tx, _, err := s.Commit(src, txstore.CommitOptions{Summary: "pulled"})
	must(t, err)
	_, err = run.Run(s, run.Options{Root: root, Argv: []string{"/bin/evil"}, Stdout: io.Discard, Stderr: io.Discard})
	if !errors.Is(err, run.ErrNotBooted) || exists(filepath.Join(root, "var/lib/pwned")) {
		t.Fatalf("run from unbooted committed tx %d: %v (pwned: %v)", tx.ID, err, exists(filepath.Join(root, "var/lib/pwned")))
	}
	if _, err := s.Update(tx.ID, txstore.Event{Kind: "mark-good", TxID: tx.ID}, func(x *txstore.Tx) error {
		x.State = txstore.StateGood
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// (its /bin/sh lacks a libc: the start fails, past the check)
	if _, err := run.Run(s, run.Options{Root: root, From: tx.ID, Argv: []string{"true"}, Stdout: io.Discard, Stderr: io.Discard}); errors.Is(err, run.ErrNotBooted) {
		t.Errorf("run from tx %d once good: %v", tx.ID, err)
	}
}

func noStaging(t *testing.T, s *txstore.Store) {
	t.Helper()
	des, _ := os.ReadDir(filepath.Join(s.Dir, "staging"))
	for _, de := range des {
		t.Errorf("left in staging: %s", de.Name())
	}
}
