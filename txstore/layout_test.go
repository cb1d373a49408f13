package txstore_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// victim makes a directory outside the store with 81 files: 80 in eight
// subdirectories (enough for the parallel removal to kick in) and one on
// top. It returns the directory and a check that all 81 are still there.
func victim(t *testing.T) (string, func()) {
	t.Helper()
	dir := t.TempDir()
	var files []string
	for d := 0; d < 8; d++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%d", d))
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := 0; f < 10; f++ {
			files = append(files, filepath.Join(sub, fmt.Sprintf("f%d", f)))
		}
	}
	files = append(files, filepath.Join(dir, "top"))
	for _, f := range files {
		if err := os.WriteFile(f, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, func() {
		t.Helper()
		gone := 0
		for _, f := range files {
			if _, err := os.Lstat(f); err != nil {
				gone++
			}
		}
		if gone > 0 {
			t.Errorf("%d of %d files outside the store deleted", gone, len(files))
		}
	}
}

// commitN commits n distinct trees.
func commitN(t *testing.T, s *txstore.Store, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		extra := testtree.File{Path: "lib/version", Data: strings.Repeat("v", i+1), Mode: 0o644}
		if _, _, err := s.Commit(sampleDir(t, extra), txstore.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// replaceWithSymlink removes p (a tree, possibly read-only) and puts a
// symlink to target in its place.
func replaceWithSymlink(t *testing.T, p, target string) {
	t.Helper()
	filepath.WalkDir(p, func(q string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(q, 0o700)
		}
		return nil
	})
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func wantDamage(t *testing.T, err error, path string) {
	t.Helper()
	if !errors.Is(err, txstore.ErrDamaged) || !strings.Contains(fmt.Sprint(err), path) {
		t.Fatalf("got error %v, want ErrDamaged naming %s", err, path)
	}
}

// A directory of the store replaced by a symlink (or a non-directory) is
// reported as damage and left alone: nothing outside the store is deleted
// or followed, by GC, prune or a writer's open-time cleanup.
func TestSymlinkedStoreDirsLeftAlone(t *testing.T) {
	cases := []struct {
		name string
		// place puts the symlink (to victim v) into the store of s with 3
		// txs and returns the damaged path relative to s.Dir.
		place func(t *testing.T, s *txstore.Store, v string) string
		run   func(s *txstore.Store, root string) error
	}{
		{"objects/zz gc", func(t *testing.T, s *txstore.Store, v string) string {
			os.Symlink(v, filepath.Join(s.Dir, "objects", "zz"))
			return "objects/zz"
		}, func(s *txstore.Store, root string) error { _, err := s.GC(); return err }},
		{"objects/ab file gc", func(t *testing.T, s *txstore.Store, v string) string {
			os.Symlink(filepath.Join(v, "top"), filepath.Join(s.Dir, "objects", "zy"))
			return "objects/zy"
		}, func(s *txstore.Store, root string) error { _, err := s.GC(); return err }},
		{"trees/2 prune", func(t *testing.T, s *txstore.Store, v string) string {
			replaceWithSymlink(t, filepath.Join(s.Dir, "trees", "2"), v)
			return "trees/2"
		}, func(s *txstore.Store, root string) error { _, err := s.Prune(1); return err }},
		{"boot/2 prune", func(t *testing.T, s *txstore.Store, v string) string {
			os.Mkdir(filepath.Join(s.Dir, "boot"), 0o700)
			os.Symlink(v, filepath.Join(s.Dir, "boot", "2"))
			return "boot/2"
		}, func(s *txstore.Store, root string) error { _, err := s.Prune(1); return err }},
		{"staging/x open", func(t *testing.T, s *txstore.Store, v string) string {
			os.Symlink(v, filepath.Join(s.Dir, "staging", "x"))
			return "staging/x"
		}, reopen},
		{"staging open", func(t *testing.T, s *txstore.Store, v string) string {
			replaceWithSymlink(t, filepath.Join(s.Dir, "staging"), v)
			return "staging"
		}, reopen},
		{"trees/99 open", func(t *testing.T, s *txstore.Store, v string) string {
			os.Symlink(v, filepath.Join(s.Dir, "trees", "99"))
			return "trees/99"
		}, reopen},
		{"trees open", func(t *testing.T, s *txstore.Store, v string) string {
			// an unrecorded tree inside a symlinked trees/ must not be removed through it
			os.Mkdir(filepath.Join(v, "99"), 0o755)
			os.WriteFile(filepath.Join(v, "99", "keep"), []byte("x"), 0o644)
			for _, id := range []string{"1", "2", "3"} {
				os.Rename(filepath.Join(s.Dir, "trees", id), filepath.Join(v, id))
			}
			os.Remove(filepath.Join(s.Dir, "trees"))
			os.Symlink(v, filepath.Join(s.Dir, "trees"))
			return "trees"
		}, reopen},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, root := newStore(t)
			commitN(t, s, 3)
			v, intact := victim(t)
			rel := c.place(t, s, v)
			err := c.run(s, root)
			intact()
			wantDamage(t, err, rel)
			if c.name == "trees open" {
				if _, err := os.Stat(filepath.Join(v, "99", "keep")); err != nil {
					t.Errorf("file outside the store removed: %v", err)
				}
			}
			// The damage itself is left in place.
			if fi, err := os.Lstat(filepath.Join(s.Dir, rel)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("%s: %v %v, want the symlink left alone", rel, fi, err)
			}
		})
	}
}

func reopen(s *txstore.Store, root string) error {
	s.Close()
	s2, err := txstore.Open(root, txstore.Options{})
	if err == nil {
		s2.Close()
	}
	return err
}

// trees/N replaced by a symlink (to a complete copy of the tree, even to
// /) is damage that verify reports; prune does not delete through it.
func TestVerifyDoesNotFollowTreeSymlink(t *testing.T) {
	s, _ := newStore(t)
	commitN(t, s, 3)
	elsewhere := filepath.Join(t.TempDir(), "moved")
	if err := os.Rename(filepath.Join(s.Dir, "trees", "2"), elsewhere); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(s.Dir, "trees", "2")); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []txstore.VerifyMode{txstore.VerifyFast, txstore.VerifyFull} {
		probs, err := s.Verify(2, mode)
		if err != nil {
			t.Fatal(err)
		}
		if len(probs) == 0 || !strings.Contains(probs[0].Reason, "symlink") {
			t.Fatalf("verify of a symlinked trees/2: %v, want it reported", probs)
		}
	}
	// usr itself a symlink inside a real trees/3
	usr := filepath.Join(s.Dir, "trees", "3", "usr")
	if err := os.Rename(usr, filepath.Join(t.TempDir(), "usr")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(elsewhere, "usr"), usr); err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(3, txstore.VerifyFast); err != nil || len(probs) == 0 {
		t.Fatalf("verify of a symlinked trees/3/usr: %v %v, want it reported", probs, err)
	}
	// Reblit repairs trees/2 without touching what the symlink pointed to.
	if _, err := s.Reblit(2); err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(2, txstore.VerifyFull); err != nil || len(probs) != 0 {
		t.Fatalf("after reblit: %v %v", probs, err)
	}
	if _, err := os.Stat(filepath.Join(elsewhere, "usr", "bin", "sh")); err != nil {
		t.Fatalf("reblit removed the symlink's target: %v", err)
	}
}

// An object replaced by a symlink is never reused by name: a commit that
// would deduplicate against it, and a blit that would link it, fail with
// ErrDamaged naming the object instead of putting the symlink into a tree.
func TestDamagedObjectNotReused(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, obj string)
	}{
		{"symlink", func(t *testing.T, obj string) {
			os.Remove(obj)
			if err := os.Symlink("/somewhere/else", obj); err != nil {
				t.Fatal(err)
			}
		}},
		{"mode", func(t *testing.T, obj string) {
			if err := os.Chmod(obj, 0o444); err != nil {
				t.Fatal(err)
			}
		}},
		{"size", func(t *testing.T, obj string) {
			os.Chmod(obj, 0o755)
			if err := os.Truncate(obj, 1); err != nil {
				t.Fatal(err)
			}
			os.Chmod(obj, 0o555)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, _ := newStore(t)
			src := sampleDir(t)
			if _, _, err := s.Commit(src, txstore.CommitOptions{}); err != nil {
				t.Fatal(err)
			}
			obj := objectOf(t, s, filepath.Join(s.TreeDir(1), "bin/sh"))
			c.damage(t, obj)
			probs, err := s.Verify(1, txstore.VerifyFast)
			if err != nil || len(probs) == 0 {
				t.Fatalf("verify: %v %v, want the damaged object reported", probs, err)
			}
			_, _, err = s.Commit(sampleDir(t), txstore.CommitOptions{})
			wantDamage(t, err, filepath.Base(obj))
			if _, err := os.Lstat(filepath.Join(s.Dir, "trees", "2")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a tree was published from a damaged object: %v", err)
			}
			_, err = s.Reblit(1)
			wantDamage(t, err, "bin/sh")
		})
	}
}

// objectOf returns the CAS path of the object a tree file is linked to.
func objectOf(t *testing.T, s *txstore.Store, p string) string {
	t.Helper()
	want, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	var found string
	filepath.Walk(s.Objects().Dir, func(q string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && os.SameFile(fi, want) {
			found = q
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no object for %s", p)
	}
	return found
}
