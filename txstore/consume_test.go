package txstore_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/testtree"
	"golang.org/x/sys/unix"
)

// snapshot describes a tree by what a user would miss: every path, its
// type, and a file's content or a symlink's target (modes are left out: a
// consumed file may lose its write bits).
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			out[rel] = "link " + target
			return err
		case d.IsDir():
			out[rel] = "dir"
		default:
			b, err := os.ReadFile(p)
			out[rel] = "file " + string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return out
}

func sameTree(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	var diff []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			diff = append(diff, "missing "+p)
		} else if g != w {
			diff = append(diff, fmt.Sprintf("%s: %q, want %q", p, g, w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diff = append(diff, "extra "+p)
		}
	}
	t.Fatalf("%s differs: %s", what, strings.Join(diff, "; "))
}

// consumeSrc is a tree whose consumption exercises every path: files the
// store already has (relinked), fresh ones (taken by hardlink), duplicates
// within the tree, empty files.
func consumeSrc(t *testing.T) string {
	return sampleDir(t,
		testtree.File{Path: "lib/fresh", Data: "fresh content", Mode: 0o644},
		testtree.File{Path: "lib/fresh-twin", Data: "fresh content", Mode: 0o644},
		testtree.File{Path: "bin/fresh-tool", Data: "tool", Mode: 0o755},
		testtree.File{Path: "lib/empty3", Data: "", Mode: 0o600})
}

// storeWithOne is a store holding one tx of the sample tree.
func storeWithOne(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestCrashDuringConsume kills a `commit --consume` with SIGKILL at each
// named step. After every kill, and again after a second open: either the
// tx is recorded and verifies (its tree is the consumed content), or DIR is
// back where the user put it with all its content; the store is clean.
func TestCrashDuringConsume(t *testing.T) {
	points := []struct {
		at       string
		recorded bool
	}{
		{"scanned", false},
		{"objects-published", false},
		{"consume-journaled", false},
		{"adopted", false},
		{"relink-half", false},
		{"relinked", false},
		{"blitted", false},
		{"tree-synced", false},
		{"tree-published", false},
		{"recorded", true},
		{"source-removed", true},
	}
	for _, p := range points {
		t.Run(p.at, func(t *testing.T) {
			root := storeWithOne(t)
			src := consumeSrc(t)
			want := snapshot(t, src)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "TXBOOT_CRASH_ROOT="+root, "TXBOOT_CRASH_SRC="+src, "TXBOOT_CRASH_MODE=consume", failpoint.EnvVar+"=commit/"+p.at+"=crash")
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !ee.Sys().(interface{ Signaled() bool }).Signaled() {
				t.Fatalf("child not killed at %q: %v\n%s", p.at, err, out)
			}
			for round := 0; round < 2; round++ {
				s, err := txstore.Open(root, txstore.Options{})
				if err != nil {
					t.Fatalf("round %d: open after kill: %v", round, err)
				}
				txs, err := s.List()
				if err != nil {
					t.Fatal(err)
				}
				if recorded := len(txs) == 2; recorded != p.recorded {
					t.Fatalf("round %d: recorded=%v, want %v", round, recorded, p.recorded)
				}
				for _, tx := range txs {
					if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) > 0 {
						t.Fatalf("round %d: tx %d: %v %v", round, tx.ID, probs, err)
					}
				}
				if p.recorded {
					sameTree(t, "tree of the consumed tx", snapshot(t, s.TreeDir(2)), want)
				} else {
					sameTree(t, "DIR after the kill", snapshot(t, src), want)
				}
				if ents, _ := os.ReadDir(filepath.Join(s.Dir, "staging")); len(ents) != 0 {
					t.Fatalf("round %d: staging not cleaned: %d entries", round, len(ents))
				}
				if trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees")); len(trees) != len(txs) {
					t.Fatalf("round %d: %d trees for %d records", round, len(trees), len(txs))
				}
				s.Close()
			}
			if !p.recorded { // and DIR can still be consumed
				s, err := txstore.Open(root, txstore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				tx, _, err := s.Commit(src, txstore.CommitOptions{Consume: true})
				if err != nil {
					t.Fatalf("consume after recovery: %v", err)
				}
				sameTree(t, "tree consumed after recovery", snapshot(t, s.TreeDir(tx.ID)), want)
			}
		})
	}
}

// A DIR changed during a consuming commit (after its scan) fails the
// commit with ErrChanged and stays where it is with the change in it; no
// tx is recorded.
func TestCommitConsumeChanged(t *testing.T) {
	write := func(rel, data string) func(string) error {
		return func(src string) error { return os.WriteFile(filepath.Join(src, rel), []byte(data), 0o644) }
	}
	remove := func(rel string) func(string) error {
		return func(src string) error { return os.Remove(filepath.Join(src, rel)) }
	}
	cases := []struct {
		name   string
		change func(src string) error
	}{
		{"file added", write("lib/added", "added during the commit")},
		{"file added in a new directory", func(src string) error {
			if err := os.Mkdir(filepath.Join(src, "lib/newdir"), 0o755); err != nil {
				return err
			}
			return write("lib/newdir/x", "x")(src)
		}},
		{"stored file removed", remove("lib/os-release")},
		{"fresh file removed", remove("lib/fresh")},
		{"stored file rewritten", write("lib/dup-a", "changed, other size")},
		{"fresh file rewritten, same size", func(src string) error {
			p := filepath.Join(src, "lib/fresh")
			os.Chmod(p, 0o644)
			return os.WriteFile(p, []byte("FRESH CONTENT"), 0o644)
		}},
		{"empty file written", write("lib/empty1", "no longer empty")},
		{"file replaced by a symlink", func(src string) error {
			if err := remove("lib/empty2")(src); err != nil {
				return err
			}
			return os.Symlink("/etc/passwd", filepath.Join(src, "lib/empty2"))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := storeWithOne(t)
			s, err := txstore.Open(root, txstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			src := consumeSrc(t)
			var want map[string]string
			atStep(t, "commit/objects-published", func() {
				if err := c.change(src); err != nil {
					t.Fatal(err)
				}
				want = snapshot(t, src)
			})
			_, _, err = s.Commit(src, txstore.CommitOptions{Consume: true})
			if !errors.Is(err, txstore.ErrChanged) {
				t.Fatalf("commit: %v, want ErrChanged", err)
			}
			sameTree(t, "DIR after the failed commit", snapshot(t, src), want)
			if txs, err := s.List(); err != nil || len(txs) != 1 {
				t.Fatalf("%d txs (%v), want only the first", len(txs), err)
			}
			if probs, err := s.Verify(1, txstore.VerifyFull); err != nil || len(probs) > 0 {
				t.Fatalf("tx 1: %v %v", probs, err)
			}
			s.Close()
			s2, err := txstore.Open(root, txstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			sameTree(t, "DIR after the next open", snapshot(t, src), want)
			// DIR's files taken by hardlink are no store objects any more:
			// writing them must not change the store.
			for _, rel := range []string{"lib/fresh", "bin/fresh-tool"} {
				fi, err := os.Lstat(filepath.Join(src, rel))
				if err != nil {
					continue // removed by the change
				}
				filepath.Walk(s2.Objects().Dir, func(p string, ofi os.FileInfo, err error) error {
					if err == nil && os.SameFile(fi, ofi) {
						t.Errorf("%s is still object %s after the failed commit", rel, p)
					}
					return err
				})
			}
		})
	}
}

// Consuming a tree made with `cp -al` never changes an inode of the live
// tree: not the modes of empty files, not the modes or content of others.
func TestCommitConsumeSharedInodes(t *testing.T) {
	root := storeWithOne(t)
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	live := sampleDir(t,
		testtree.File{Path: "lib/empty-rw", Data: "", Mode: 0o664},
		testtree.File{Path: "lib/fresh-rw", Data: "fresh", Mode: 0o664})
	type attrs struct {
		mode     uint32
		uid, gid uint32
		size     int64
	}
	before := map[string]attrs{}
	filepath.WalkDir(live, func(p string, d fs.DirEntry, err error) error {
		var st unix.Stat_t
		if err == nil && d.Type().IsRegular() && unix.Lstat(p, &st) == nil {
			before[p] = attrs{st.Mode, st.Uid, st.Gid, st.Size}
		}
		return err
	})
	liveSnap := snapshot(t, live)
	src := filepath.Join(t.TempDir(), "src")
	if out, err := exec.Command("cp", "-al", live, src).CombinedOutput(); err != nil {
		t.Fatalf("cp -al: %v %s", err, out)
	}
	tx, _, err := s.Commit(src, txstore.CommitOptions{Consume: true})
	if err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) > 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
	for p, a := range before {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if got := (attrs{st.Mode, st.Uid, st.Gid, st.Size}); got != a {
			t.Errorf("%s: live inode changed: mode %o → %o", p, a.mode, got.mode)
		}
	}
	sameTree(t, "live tree", snapshot(t, live), liveSnap)
}

// A file another process holds open for writing is copied, never taken
// into the store by hardlink: the writer could still change the object.
func TestCommitConsumeOpenForWrite(t *testing.T) {
	s, _ := newStore(t)
	src := sampleDir(t, testtree.File{Path: "lib/held", Data: "being written", Mode: 0o644},
		testtree.File{Path: "lib/free", Data: "nobody has me open", Mode: 0o644})
	f, err := os.OpenFile(filepath.Join(src, "lib/held"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sleep", "600")
	holder.Stdout = f
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close() // only the child holds it now
	defer func() { holder.Process.Kill(); holder.Wait() }()
	held := fmt.Sprintf("/proc/%d/fd/1", holder.Process.Pid)
	tx, st, err := s.Commit(src, txstore.CommitOptions{Consume: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Linked == 0 {
		t.Fatalf("nothing taken by hardlink (leases unusable here?): %+v", st)
	}
	var hst, tst unix.Stat_t
	if err := unix.Stat(held, &hst); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Join(s.TreeDir(tx.ID), "lib/held"), &tst); err != nil {
		t.Fatal(err)
	}
	if hst.Ino == tst.Ino {
		t.Fatal("a file open for writing became the store's object")
	}
	if hst.Mode&0o7777 != 0o644 {
		t.Fatalf("held file's mode changed to %o", hst.Mode&0o7777)
	}
	if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) > 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
}

// Committing the store into itself is refused, with or without --consume:
// the store root, the store, a directory in it, and the same through a
// symlink and a relative path (compared by device and inode).
func TestCommitRefusesStore(t *testing.T) {
	s, root := newStore(t)
	if _, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(root, link); err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, filepath.Join(root, ".txboot", "trees", "1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, consume := range []bool{false, true} {
		for _, bad := range []string{root, filepath.Join(root, ".txboot"), filepath.Join(root, ".txboot", "trees", "1", "usr"),
			filepath.Join(root, ".txboot", "staging"), link, filepath.Join(link, ".txboot"), rel} {
			_, _, err := s.Commit(bad, txstore.CommitOptions{Consume: consume})
			if !errors.Is(err, txstore.ErrHoldsStore) || !errors.Is(err, txstore.ErrInvalid) {
				t.Errorf("commit %s (consume %v): %v, want ErrHoldsStore", bad, consume, err)
			}
		}
	}
	if txs, _ := s.List(); len(txs) != 1 {
		t.Fatalf("%d txs after refusals", len(txs))
	}
	if probs, err := s.Verify(1, txstore.VerifyFull); err != nil || len(probs) > 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
}

// A DIR killed mid-consume whose path was taken meanwhile comes back next
// to it (DIR.txboot-recovered-1); what took the path is left alone.
func TestCrashDuringConsumePathTaken(t *testing.T) {
	root := storeWithOne(t)
	src := consumeSrc(t)
	want := snapshot(t, src)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TXBOOT_CRASH_ROOT="+root, "TXBOOT_CRASH_SRC="+src, "TXBOOT_CRASH_MODE=consume", failpoint.EnvVar+"=commit/relinked=crash")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("child not killed: %s", out)
	}
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatalf("DIR's path should be free after the kill: %v", err)
	}
	if err := os.WriteFile(filepath.Join(src, "new"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sameTree(t, "recovered DIR", snapshot(t, src+".txboot-recovered-1"), want)
	sameTree(t, "what took DIR's path", snapshot(t, src), map[string]string{".": "dir", "new": "file new"})
}
