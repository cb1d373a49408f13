package txstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

func newStore(t *testing.T) (*txstore.Store, string) {
	t.Helper()
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, root
}

func sampleDir(t *testing.T, extra ...testtree.File) string {
	t.Helper()
	d := t.TempDir()
	if err := testtree.Write(d, append(testtree.Sample(), extra...), time.Unix(1000, 0)); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestOpenMissingStore(t *testing.T) {
	_, err := txstore.Open(t.TempDir(), txstore.Options{})
	if !errors.Is(err, txstore.ErrNoStore) {
		t.Fatalf("got %v, want ErrNoStore", err)
	}
}

func TestCommitListVerify(t *testing.T) {
	s, _ := newStore(t)
	tx, st, err := s.Commit(sampleDir(t), txstore.CommitOptions{Summary: "first"})
	if err != nil {
		t.Fatal(err)
	}
	if tx.ID != 1 || tx.State != txstore.StatePending || tx.TriesLeft != 3 {
		t.Fatalf("unexpected record %+v", tx)
	}
	if len(tx.Kernels) != 1 || tx.Kernels[0] != "6.1.0-test" {
		t.Fatalf("kernels %v", tx.Kernels)
	}
	// dup-a/dup-b share one object; two empties are not objects at all.
	if st.Deduplicated != 1 || st.NewObjects != st.Files-1 {
		t.Fatalf("stats %+v", st)
	}
	tx2, st2, err := s.Commit(sampleDir(t, testtree.File{Path: "lib/new", Data: "new", Mode: 0o644}), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tx2.ID != 2 || tx2.Parent != 1 || st2.NewObjects != 1 {
		t.Fatalf("second commit %+v %+v", tx2, st2)
	}
	if d, _ := s.Default(); d != 2 {
		t.Fatalf("default %d", d)
	}
	list, err := s.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("list %v %v", list, err)
	}
	for _, mode := range []txstore.VerifyMode{txstore.VerifyFast, txstore.VerifyFull} {
		probs, err := s.Verify(2, mode)
		if err != nil || len(probs) != 0 {
			t.Fatalf("verify mode %d: %v %v", mode, probs, err)
		}
	}
	// The tree is hardlinks without write bits.
	fi, err := os.Stat(filepath.Join(s.TreeDir(2), "bin/su"))
	if err != nil || fi.Mode().Perm() != 0o555 || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("bin/su mode %v %v", fi.Mode(), err)
	}
	if _, err := s.Get(99); !errors.Is(err, txstore.ErrNotFound) {
		t.Fatalf("get 99: %v", err)
	}
}

func TestVerifyFindsDamage(t *testing.T) {
	cases := []struct {
		name     string
		damage   func(s *txstore.Store, tree string) error
		fast     string // substring fast verify must report ("" = fast sees nothing)
		full     string
		reblitOK bool
	}{
		{"object deleted", func(s *txstore.Store, tree string) error {
			return removeObjectOf(s, tree, "lib/os-release")
		}, "missing from the store", "missing from the store", false},
		{"content corrupted in place", func(s *txstore.Store, tree string) error {
			return corruptInPlace(filepath.Join(tree, "bin/busybox"))
		}, "", "content corrupted", false},
		{"tree file replaced", func(s *txstore.Store, tree string) error {
			p := filepath.Join(tree, "lib/os-release")
			os.Remove(p)
			return os.WriteFile(p, []byte("ID=evil!!\n"), 0o444)
		}, "not a hardlink", "not a hardlink", true},
		{"tree file missing", func(s *txstore.Store, tree string) error {
			return os.Remove(filepath.Join(tree, "bin/sh"))
		}, "missing", "missing", true},
		{"extra file", func(s *txstore.Store, tree string) error {
			return os.WriteFile(filepath.Join(tree, "lib/extra"), nil, 0o644)
		}, "unexpected entry", "unexpected entry", true},
		{"symlink retargeted", func(s *txstore.Store, tree string) error {
			p := filepath.Join(tree, "bin/ls")
			os.Remove(p)
			return os.Symlink("sh", p)
		}, "symlink target", "symlink target", true},
		{"tree gone", func(s *txstore.Store, tree string) error {
			return os.RemoveAll(filepath.Dir(tree))
		}, "tree missing", "tree missing", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, _ := newStore(t)
			tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{})
			if err != nil {
				t.Fatal(err)
			}
			tree := s.TreeDir(tx.ID)
			os.Chmod(filepath.Join(tree, "lib"), 0o755) // let the test write
			if err := c.damage(s, tree); err != nil {
				t.Fatal(err)
			}
			for _, m := range []struct {
				mode txstore.VerifyMode
				want string
			}{{txstore.VerifyFast, c.fast}, {txstore.VerifyFull, c.full}} {
				probs, err := s.Verify(tx.ID, m.mode)
				if err != nil {
					t.Fatal(err)
				}
				got := ""
				for _, p := range probs {
					got += p.String() + "\n"
				}
				if m.want == "" && len(probs) != 0 {
					t.Errorf("mode %d: unexpected problems %s", m.mode, got)
				}
				if m.want != "" && !strings.Contains(got, m.want) {
					t.Errorf("mode %d: want %q in %q", m.mode, m.want, got)
				}
			}
			if _, err := s.Reblit(tx.ID); err != nil && c.reblitOK {
				t.Fatal(err)
			}
			probs, _ := s.Verify(tx.ID, txstore.VerifyFull)
			if c.reblitOK != (len(probs) == 0) {
				t.Errorf("after reblit: problems %v, want clean=%v", probs, c.reblitOK)
			}
		})
	}
}

func TestPruneAndGC(t *testing.T) {
	s, _ := newStore(t)
	for i := 0; i < 6; i++ {
		extra := testtree.File{Path: "lib/version", Data: strings.Repeat("v", i+1), Mode: 0o644}
		if _, _, err := s.Commit(sampleDir(t, extra), txstore.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetPinned(1, true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDefault(3); err != nil {
		t.Fatal(err)
	}
	bootFiles := filepath.Join(s.Dir, "boot", "2")
	if s.BootFilesDir(2) != bootFiles || s.InitrdPath(2) != filepath.Join(bootFiles, "initrd.img") {
		t.Fatalf("boot files of tx 2 at %s, %s; want under %s", s.BootFilesDir(2), s.InitrdPath(2), bootFiles)
	}
	os.MkdirAll(bootFiles, 0o700)
	os.WriteFile(s.InitrdPath(2), []byte("x"), 0o600)
	res, err := s.Prune(2, 4)
	if err != nil {
		t.Fatal(err)
	}
	// keep newest 2 (6,5) + pinned 1 + default 3 + protected 4; remove 2.
	if len(res.Removed) != 1 || res.Removed[0] != 2 {
		t.Fatalf("prune removed %v kept %v", res.Removed, res.Kept)
	}
	if _, err := os.Stat(s.TreeDir(2)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tree 2 still there: %v", err)
	}
	if _, err := os.Stat(bootFiles); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("boot files of pruned tx 2 still there: %v", err)
	}
	gc, err := s.GC()
	if err != nil {
		t.Fatal(err)
	}
	if gc.Removed != 2 { // tx 2's lib/version object and its manifest
		t.Fatalf("gc %+v", gc)
	}
	for _, id := range []uint64{1, 3, 4, 5, 6} {
		if probs, err := s.Verify(id, txstore.VerifyFull); err != nil || len(probs) != 0 {
			t.Fatalf("tx %d after gc: %v %v", id, probs, err)
		}
	}
	if _, err := s.Prune(0); err == nil {
		t.Fatal("prune keep=0 accepted")
	}
}

func TestWriterLock(t *testing.T) {
	s, root := newStore(t)
	_ = s
	_, err := txstore.Open(root, txstore.Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, txstore.ErrBusy) {
		t.Fatalf("second writer: %v, want ErrBusy", err)
	}
	r, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("reader while writer open: %v", err)
	}
	if _, err := r.List(); err != nil {
		t.Fatalf("reader list: %v", err)
	}
	if err := r.SetDefault(1); !errors.Is(err, txstore.ErrReadOnly) {
		t.Fatalf("reader write: %v", err)
	}
}

func TestUnsupportedType(t *testing.T) {
	s, _ := newStore(t)
	d := sampleDir(t)
	if err := mkfifo(filepath.Join(d, "lib/fifo")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Commit(d, txstore.CommitOptions{}); !errors.Is(err, txstore.ErrUnsupported) {
		t.Fatalf("fifo: %v", err)
	}
	if l, _ := s.List(); len(l) != 0 {
		t.Fatalf("failed commit left a record: %v", l)
	}
}

func TestEventsAndMarks(t *testing.T) {
	s, _ := newStore(t)
	tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{Tries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(tx.ID, txstore.Event{Kind: "boot"}, func(t *txstore.Tx) error { return t.Attempt(false) }); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get(tx.ID)
	if got.State != txstore.StateTrying || got.TriesLeft != 1 {
		t.Fatalf("after attempt %+v", got)
	}
	evs, err := s.Events(0)
	if err != nil || len(evs) != 2 || evs[0].Kind != "commit" || evs[1].Kind != "boot" {
		t.Fatalf("events %+v %v", evs, err)
	}
}

// --consume takes new objects by hardlink and removes the source; a file
// with another link outside the source is copied, so the outside inode is
// left alone; a source that holds the store is refused.
func TestCommitConsume(t *testing.T) {
	s, root := newStore(t)
	src := sampleDir(t)
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.Link(filepath.Join(src, "bin", "sh"), outside); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(outside)
	if err != nil {
		t.Fatal(err)
	}
	want, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{NoDefault: true})
	if err != nil {
		t.Fatal(err)
	}
	tx, st, err := s.Commit(src, txstore.CommitOptions{Consume: true})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != want.Digest {
		t.Fatalf("consumed digest %s, copied %s", tx.Digest, want.Digest)
	}
	if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) || st.ConsumeErr != nil {
		t.Fatalf("source still there (%v, %v)", err, st.ConsumeErr)
	}
	// Everything was already stored by the first commit: nothing linked.
	if st.Linked != 0 || st.NewObjects != 0 {
		t.Fatalf("stats %+v", st)
	}
	src2 := sampleDir(t, testtree.File{Path: "lib/fresh", Data: "fresh content", Mode: 0o644},
		testtree.File{Path: "bin/fresh-tool", Data: "tool", Mode: 0o755})
	if err := os.Link(filepath.Join(src2, "bin", "fresh-tool"), outside+"2"); err != nil {
		t.Fatal(err)
	}
	tx2, st2, err := s.Commit(src2, txstore.CommitOptions{Consume: true})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Adopted || !st2.Adopted {
		t.Fatalf("source not adopted as the tree: %+v %+v", st, st2)
	}
	if st2.NewObjects != 2 || st2.Linked != 1 {
		t.Fatalf("want 2 new objects, 1 linked (the other has a link outside): %+v", st2)
	}
	for _, id := range []uint64{tx.ID, tx2.ID} {
		if probs, err := s.Verify(id, txstore.VerifyFull); err != nil || len(probs) > 0 {
			t.Fatalf("verify %d: %v %v", id, err, probs)
		}
	}
	if fi, err := os.Stat(outside + "2"); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("outside link changed: %v %v", fi.Mode(), err)
	}
	if after, err := os.Stat(outside); err != nil || after.Mode() != before.Mode() {
		t.Fatalf("outside link changed: %v %v", after.Mode(), err)
	}
	for _, bad := range []string{root, filepath.Join(root, ".txboot"), filepath.Join(root, ".txboot", "trees")} {
		if _, _, err := s.Commit(bad, txstore.CommitOptions{Consume: true}); !errors.Is(err, txstore.ErrInvalid) {
			t.Errorf("consume %s: err %v, want ErrInvalid", bad, err)
		}
	}
}

// HashOnce: an object found clean is not re-hashed by later full verifies
// on the same open Store; a corrupted one is never remembered as clean.
func TestVerifyHashOnce(t *testing.T) {
	s, root := newStore(t)
	for _, extra := range []string{"one", "two"} {
		if _, _, err := s.Commit(sampleDir(t, testtree.File{Path: "lib/" + extra, Data: extra, Mode: 0o644}), txstore.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	open := func(once bool) *txstore.Store {
		s, err := txstore.Open(root, txstore.Options{ReadOnly: true, HashOnce: once})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	corrupted := func(s *txstore.Store, id uint64) bool {
		probs, err := s.Verify(id, txstore.VerifyFull)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range probs {
			if p.Path == "usr/bin/busybox" && strings.Contains(p.Reason, "content corrupted") && p.InStore {
				return true
			}
		}
		if len(probs) > 0 {
			t.Fatalf("tx %d: unexpected problems %v", id, probs)
		}
		return false
	}
	once := open(true)
	if corrupted(once, 2) {
		t.Fatal("clean tx 2 reported corrupted")
	}
	// bin/busybox's object is shared by txs 1 and 2.
	if err := corruptInPlace(filepath.Join(s.TreeDir(1), "bin/busybox")); err != nil {
		t.Fatal(err)
	}
	if corrupted(once, 1) {
		t.Error("HashOnce store re-hashed an object it had already found clean")
	}
	fresh := open(true)
	for _, id := range []uint64{2, 1, 2} {
		if !corrupted(fresh, id) {
			t.Errorf("tx %d: corruption not reported (a bad object must never be remembered as clean)", id)
		}
	}
	if !corrupted(open(false), 1) {
		t.Error("store without HashOnce missed the corruption")
	}
}

// The manifest is hashed while it is parsed: a record whose digest does not
// match gets ErrDigest, never the parsed manifest.
func TestManifestDigestChecked(t *testing.T) {
	s, _ := newStore(t)
	tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := s.Manifest(tx); err != nil || len(m.Entries) == 0 {
		t.Fatalf("manifest: %v", err)
	}
	bad := *tx
	bad.Digest = "sha256:" + strings.Repeat("0", 64)
	if m, err := s.Manifest(&bad); !errors.Is(err, txstore.ErrDigest) || m != nil {
		t.Fatalf("got %v, %v; want ErrDigest and no manifest", m, err)
	}
}

// A consumed source changed after its scan (an empty file and a directory
// swapped for symlinks out of the tree): adopting it must not touch what
// the symlinks point at; the commit fails with ErrChanged and the source
// stays in place.
func TestCommitConsumeSwappedSymlinks(t *testing.T) {
	s, _ := newStore(t)
	if _, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{}); err != nil {
		t.Fatal(err) // every file of the next commit is then deduplicated: all relinked
	}
	out := t.TempDir()
	victim := filepath.Join(out, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	kver := filepath.Join(out, "modules", "6.1.0-test")
	if err := os.MkdirAll(filepath.Join(kver, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinuz", "kernel/a.ko"} {
		if err := os.WriteFile(filepath.Join(kver, f), []byte("outside "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := sampleDir(t)
	swap := func(rel, target string) {
		p := filepath.Join(src, rel)
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	atStep(t, "commit/objects-published", func() {
		swap("lib/empty1", victim)
		swap("lib/modules", filepath.Join(out, "modules"))
	})
	_, _, err := s.Commit(src, txstore.CommitOptions{Consume: true})
	if !errors.Is(err, txstore.ErrChanged) {
		t.Fatalf("commit: %v, want ErrChanged", err)
	}
	if fi, err := os.Lstat(filepath.Join(src, "lib/empty1")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("source not left in place: %v", err)
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file outside the tree changed: %v %v", fi.Mode(), err)
	}
	for _, f := range []string{"vmlinuz", "kernel/a.ko"} {
		if b, err := os.ReadFile(filepath.Join(kver, f)); err != nil || string(b) != "outside "+f {
			t.Fatalf("%s outside the tree changed: %q %v", f, b, err)
		}
	}
	if txs, err := s.List(); err != nil || len(txs) != 1 {
		t.Fatalf("%d txs (%v), want 1", len(txs), err)
	}
}

// After Close nothing under the store is open (initagent closes the store
// before switch_root), even after work that caches directory descriptors.
func TestCloseLeavesNothingOpen(t *testing.T) {
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) > 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
	open := func() []string {
		fds, _ := os.ReadDir("/proc/self/fd")
		var under []string
		for _, fd := range fds {
			if p, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(p, root) {
				under = append(under, p)
			}
		}
		return under
	}
	if len(open()) == 0 {
		t.Fatal("no descriptor under the store open before Close: the check below would prove nothing")
	}
	s.Close()
	if o := open(); len(o) > 0 {
		t.Fatalf("open after Close: %v", o)
	}
}
