package txstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/txboot/txboot/txstore"
	"golang.org/x/sys/unix"
)

// TestCommitLayerEtc: the /etc state goes to trees/<id>/etc with the
// tree; verify, fsck, reopening, reblit and rebuild leave it alone; prune
// removes it with the tree, following none of its symlinks.
func TestCommitLayerEtc(t *testing.T) {
	s := layerStore(t)
	u := newUpper(t)
	u.file("bin/hello", "hello", 0o755)
	outside := t.TempDir()
	keep := filepath.Join(outside, "keep")
	if err := os.WriteFile(keep, []byte("not the store's"), 0o644); err != nil {
		t.Fatal(err)
	}
	etc, err := stageEtc(s, "host-a", outside)
	if err != nil {
		t.Fatal(err)
	}
	tx, _, err := s.CommitLayer(1, u.root, txstore.CommitOptions{Etc: etc, PkgChanges: layerPkgChanges, Summary: "run"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(etc); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the staged /etc state is still at %s: %v", etc, err)
	}
	wantEtc(t, s, tx.ID, "host-a")
	if !reflect.DeepEqual(tx.PkgChanges, layerPkgChanges) || tx.Parent != 1 {
		t.Errorf("record %+v", tx)
	}
	clean(t, s, tx.ID)

	// Reopening (the writer's cleanup) keeps it, and the record.
	s.Close()
	s = reopenStore(t, s)
	wantEtc(t, s, tx.ID, "host-a")
	if got, err := s.Get(tx.ID); err != nil || !reflect.DeepEqual(got.PkgChanges, layerPkgChanges) {
		t.Errorf("after reopening: %+v, %v", got, err)
	}

	// A reblit replaces usr/ only.
	if err := os.Remove(filepath.Join(s.TreeDir(tx.ID), "bin/hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reblit(tx.ID); err != nil {
		t.Fatal(err)
	}
	wantEtc(t, s, tx.ID, "host-a")
	clean(t, s, tx.ID)

	// So does a rebuild of the database.
	if _, err := s.Rebuild(); err != nil {
		t.Fatal(err)
	}
	wantEtc(t, s, tx.ID, "host-a")
	clean(t, s, tx.ID)

	// Prune removes it with its tree, and only that.
	if _, _, err := s.Commit(baseTree(t), txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Prune(1)
	if err != nil || !contains64(res.Removed, tx.ID) {
		t.Fatalf("prune: %+v, %v", res, err)
	}
	if _, err := os.Lstat(filepath.Dir(s.EtcStateDir(tx.ID))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("trees/%d still there: %v", tx.ID, err)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "not the store's" {
		t.Errorf("prune followed etc/new/evil: %q, %v", b, err)
	}
	if _, err := s.GC(); err != nil {
		t.Fatal(err)
	}
}

func contains64(list []uint64, v uint64) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// clean: tx id verifies fast and full, and fsck finds nothing.
func clean(t *testing.T, s *txstore.Store, id uint64) {
	t.Helper()
	for _, mode := range []txstore.VerifyMode{txstore.VerifyFast, txstore.VerifyFull} {
		if probs, err := s.Verify(id, mode); err != nil || len(probs) > 0 {
			t.Errorf("verify %d (mode %d): %v %v", id, mode, probs, err)
		}
	}
	rep, err := s.Fsck()
	if err != nil || len(rep.Problems) > 0 {
		t.Errorf("fsck: %+v %v", rep, err)
	}
}

func reopenStore(t *testing.T, s *txstore.Store) *txstore.Store {
	t.Helper()
	s2, err := txstore.Open(s.Root, txstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	return s2
}

// TestCommitEtc: every commit path takes an /etc state (a plain and a
// consuming Commit, CommitManifest), and parent and package changes.
func TestCommitEtc(t *testing.T) {
	s := layerStore(t)
	for i, commit := range []func(o txstore.CommitOptions) (*txstore.Tx, error){
		func(o txstore.CommitOptions) (*txstore.Tx, error) {
			tx, _, err := s.Commit(baseTree(t), o)
			return tx, err
		},
		func(o txstore.CommitOptions) (*txstore.Tx, error) {
			o.Consume = true
			tx, _, err := s.Commit(baseTree(t), o)
			return tx, err
		},
		func(o txstore.CommitOptions) (*txstore.Tx, error) {
			base, _ := s.Get(1)
			m, err := s.Manifest(base)
			if err != nil {
				return nil, err
			}
			return s.CommitManifest(m, m.Encode(), o)
		},
	} {
		host := string(rune('a' + i))
		tx, err := commit(txstore.CommitOptions{Etc: stageEtcT(t, s, host), Parent: 1, PkgChanges: layerPkgChanges})
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		wantEtc(t, s, tx.ID, host)
		if tx.Parent != 1 || !reflect.DeepEqual(tx.PkgChanges, layerPkgChanges) {
			t.Errorf("commit %d: record %+v", i, tx)
		}
		clean(t, s, tx.ID)
	}
	// Without Parent, the parent is the default as before.
	def, _ := s.Default()
	tx, _, err := s.Commit(baseTree(t), txstore.CommitOptions{})
	if err != nil || tx.Parent != def {
		t.Fatalf("commit: %+v %v, want parent %d", tx, err, def)
	}
}

// TestCommitEtcRefused: an /etc state the commit could not move is
// refused before anything is written, and left where it was.
func TestCommitEtcRefused(t *testing.T) {
	s := layerStore(t)
	dir := stageEtcT(t, s, "x")
	file := filepath.Join(s.Dir, "staging", "etc-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(s.Dir, "staging", "etc-link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{"a symlink": link, "a file": file, "missing": filepath.Join(s.Dir, "staging", "none")}
	if other := tmpfsDir(t); other != "" {
		cases["another filesystem"] = other
	}
	for name, etc := range cases {
		u := newUpper(t)
		u.file("bin/hello", "hello", 0o755)
		objs := objSnap(t, s)
		_, _, err := s.CommitLayer(1, u.root, txstore.CommitOptions{Etc: etc})
		if err == nil || (name != "missing" && !errors.Is(err, txstore.ErrInvalid)) {
			t.Errorf("%s: CommitLayer = %v, want ErrInvalid", name, err)
		}
		if txs := listTxs(t, s); len(txs) != 1 || !reflect.DeepEqual(objSnap(t, s), objs) {
			t.Errorf("%s: %d txs, or objects changed", name, len(txs))
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new", "hostname")); err != nil {
		t.Errorf("the refused state moved: %v", err)
	}
}

// tmpfsDir mounts a tmpfs on a temp dir ("" when it cannot).
func tmpfsDir(t *testing.T) string {
	d := t.TempDir()
	if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=1m"); err != nil {
		t.Logf("no tmpfs (%v): the other-filesystem case is left out", err)
		return ""
	}
	t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	sub := filepath.Join(d, "etc")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	return sub
}

// TestCommitLayerArgs: what CommitLayer refuses before it reads anything.
func TestCommitLayerArgs(t *testing.T) {
	s := layerStore(t)
	u := newUpper(t)
	u.file("bin/hello", "hello", 0o755)
	for name, c := range map[string]struct {
		from  uint64
		upper string
		o     txstore.CommitOptions
		want  error
	}{
		"consume":      {1, u.root, txstore.CommitOptions{Consume: true}, txstore.ErrInvalid},
		"other parent": {1, u.root, txstore.CommitOptions{Parent: 7}, txstore.ErrInvalid},
		"no such tx":   {9, u.root, txstore.CommitOptions{}, txstore.ErrNotFound},
		"the root":     {1, s.Root, txstore.CommitOptions{}, txstore.ErrHoldsStore},
		"the store":    {1, s.Dir, txstore.CommitOptions{}, txstore.ErrHoldsStore},
	} {
		if _, _, err := s.CommitLayer(c.from, c.upper, c.o); !errors.Is(err, c.want) {
			t.Errorf("%s: CommitLayer = %v, want %v", name, err, c.want)
		}
	}
	ro, err := txstore.Open(s.Root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, _, err := ro.CommitLayer(1, u.root, txstore.CommitOptions{}); !errors.Is(err, txstore.ErrReadOnly) {
		t.Errorf("read-only: %v", err)
	}
	// An upper inside the store's staging/ (where bootctl run keeps it).
	inside, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "run-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(inside, 0o755); err != nil {
		t.Fatal(err)
	}
	in := layerFS{t, inside}
	in.file("bin/hello", "hello", 0o755)
	if _, _, err := s.CommitLayer(1, inside, txstore.CommitOptions{}); err != nil {
		t.Errorf("upper in staging/: %v", err)
	}
}
