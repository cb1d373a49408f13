package txstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
	"golang.org/x/sys/unix"
)

// store3 commits three txs (tx 1 marked good, a setting saved) and closes
// the store, so a test can damage store.db with nothing holding it.
func store3(t *testing.T) (string, []*txstore.Tx) {
	t.Helper()
	s, root := newStore(t)
	var txs []*txstore.Tx
	for i := 1; i <= 3; i++ {
		tx, _, err := s.Commit(sampleDir(t, testtree.File{Path: "share/marker", Data: fmt.Sprint(i), Mode: 0o644}), txstore.CommitOptions{Summary: fmt.Sprint("tx ", i)})
		if err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	if _, err := s.Update(1, txstore.Event{Kind: "mark-good"}, func(x *txstore.Tx) error { x.MarkGood(); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.SetConfig("entries", []byte(`{"esp":"/efi"}`)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	return root, txs
}

func dbPath(root string) string { return filepath.Join(root, txstore.DirName, "store.db") }

// call runs fn and turns a panic into an error the test reports, so one
// panicking case does not hide the others.
func call(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("PANIC: %v", r)
		}
	}()
	return fn()
}

// TestDamagedDBIsAnError: every read and write of a damaged store.db ends
// in a one-line ErrCorrupt naming the file, never in a panic, and never
// rewrites the damaged file.
func TestDamagedDBIsAnError(t *testing.T) {
	for _, kind := range testtree.DamageKinds {
		t.Run(kind, func(t *testing.T) {
			root, _ := store3(t)
			db := dbPath(root)
			if err := testtree.DamageDB(db, kind); err != nil {
				t.Fatal(err)
			}
			damaged, _ := os.ReadFile(db)
			ro, err := txstore.Open(root, txstore.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer ro.Close()
			calls := map[string]func() error{
				"list":    func() error { _, err := ro.List(); return err },
				"get":     func() error { _, err := ro.Get(2); return err },
				"default": func() error { _, err := ro.Default(); return err },
				"events":  func() error { _, err := ro.Events(0); return err },
				"config":  func() error { _, err := ro.Config("entries"); return err },
				"writer": func() error {
					w, err := txstore.Open(root, txstore.Options{})
					if err != nil {
						return err
					}
					defer w.Close()
					if _, err := w.Update(2, txstore.Event{Kind: "mark-good"}, func(x *txstore.Tx) error { x.MarkGood(); return nil }); err != nil {
						return err
					}
					return w.Log(txstore.Event{Kind: "test"})
				},
				"update without cleanup": func() error {
					w, err := txstore.Open(root, txstore.Options{NoCleanup: true})
					if err != nil {
						return err
					}
					defer w.Close()
					_, err = w.Update(2, txstore.Event{Kind: "boot"}, func(x *txstore.Tx) error { return x.Attempt(false) })
					return err
				},
			}
			noticed := 0
			for name, fn := range calls {
				err := call(fn)
				if err == nil {
					continue
				}
				msg := err.Error()
				if !errors.Is(err, txstore.ErrCorrupt) || !strings.Contains(msg, db) || strings.Contains(msg, "\n") || strings.Contains(msg, "PANIC") {
					t.Errorf("%s: %q, want one line, ErrCorrupt, naming %s", name, msg, db)
				}
				noticed++
			}
			if noticed == 0 {
				t.Errorf("no call noticed the damage")
			}
			if now, _ := os.ReadFile(db); !bytes.Equal(now, damaged) {
				t.Errorf("the damaged store.db was rewritten (%d bytes, was %d)", len(now), len(damaged))
			}
			// The trees are untouched: a damaged index must not make Cleanup
			// take them for leftovers.
			for id := uint64(1); id <= 3; id++ {
				if _, err := os.Stat(ro.TreeDir(id)); err != nil {
					t.Errorf("tree %d: %v", id, err)
				}
			}
		})
	}
}

// TestDBOpenErrorsKeepErrno: a store.db that cannot be opened for a reason
// other than its content is reported as that reason, not as damage, and a
// symlinked store.db is not followed.
func TestDBOpenErrorsKeepErrno(t *testing.T) {
	cases := []struct {
		name    string
		prepare func(t *testing.T, db string)
		errno   unix.Errno
	}{
		{"directory", func(t *testing.T, db string) {
			must(t, os.Remove(db))
			must(t, os.Mkdir(db, 0o700))
		}, unix.EISDIR},
		{"symlink", func(t *testing.T, db string) {
			outside := filepath.Join(t.TempDir(), "elsewhere.db")
			must(t, os.Rename(db, outside))
			must(t, os.Symlink(outside, db))
		}, unix.ELOOP},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, _ := store3(t)
			c.prepare(t, dbPath(root))
			for _, ro := range []bool{true, false} {
				s, err := txstore.Open(root, txstore.Options{ReadOnly: ro, NoCleanup: true})
				if err != nil {
					t.Fatal(err)
				}
				_, err = s.List()
				s.Close()
				if !errors.Is(err, c.errno) || errors.Is(err, txstore.ErrCorrupt) || !strings.Contains(err.Error(), dbPath(root)) {
					t.Errorf("read-only %v: %v, want %v naming the file, not ErrCorrupt", ro, err, c.errno)
				}
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestFsckFindsDamage: Fsck passes a sound store and reports each damage.
func TestFsckFindsDamage(t *testing.T) {
	for _, kind := range append([]string{"none", testtree.DamageMeta0}, testtree.DamageKinds...) {
		t.Run(kind, func(t *testing.T) {
			root, _ := store3(t)
			if kind != "none" {
				must(t, testtree.DamageDB(dbPath(root), kind))
			}
			s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
			must(t, err)
			defer s.Close()
			rep, err := call2(s.Fsck)
			if err != nil {
				t.Fatal(err)
			}
			if kind == "none" {
				if len(rep.Problems) != 0 || rep.Records != 3 {
					t.Fatalf("sound store: %+v", rep)
				}
				return
			}
			if len(rep.Problems) == 0 {
				t.Fatalf("damage %q not found: %+v", kind, rep)
			}
			if kind == testtree.DamageMeta0 && !strings.Contains(rep.Problems[0], "meta page 0 is damaged") {
				t.Errorf("meta page 0: %q", rep.Problems)
			}
			for _, p := range rep.Problems {
				if strings.Contains(p, "\n") {
					t.Errorf("problem spans lines: %q", p)
				}
			}
		})
	}
}

func call2[T any](fn func() (T, error)) (v T, err error) {
	err = call(func() error { var e error; v, e = fn(); return e })
	return v, err
}

// TestRebuild: fsck --repair's rebuild restores every tx from its tree and
// manifest, keeps what the damaged database still tells (state, settings)
// when it can be read, keeps the damaged file, and leaves a store that
// verifies, commits and cleans up as usual.
func TestRebuild(t *testing.T) {
	for _, kind := range testtree.DamageKinds {
		t.Run(kind, func(t *testing.T) {
			root, txs := store3(t)
			db := dbPath(root)
			must(t, testtree.DamageDB(db, kind))
			damaged, _ := os.ReadFile(db)
			// A tree no manifest describes is set aside, never deleted.
			stray := filepath.Join(root, txstore.DirName, "trees", "9", "usr")
			must(t, os.MkdirAll(stray, 0o755))
			must(t, os.WriteFile(filepath.Join(stray, "junk"), []byte("junk"), 0o644))

			s, err := txstore.Open(root, txstore.Options{NoCleanup: true})
			must(t, err)
			rep, err := call2(s.Rebuild)
			s.Close()
			if err != nil {
				t.Fatal(err)
			}
			if saved, err := os.ReadFile(rep.Saved); err != nil || !bytes.Equal(saved, damaged) || filepath.Dir(rep.Saved) != filepath.Dir(db) || !strings.HasPrefix(filepath.Base(rep.Saved), "store.db.corrupt-") {
				t.Errorf("damaged database not kept as it was: %q %v", rep.Saved, err)
			}
			if len(rep.SetAside) != 1 || !strings.Contains(rep.SetAside[0], "lost+found") {
				t.Errorf("set aside %v", rep.SetAside)
			} else if _, err := os.Stat(filepath.Join(rep.SetAside[0], "usr", "junk")); err != nil {
				t.Errorf("stray tree lost: %v", err)
			}

			s, err = txstore.Open(root, txstore.Options{}) // a writer: Cleanup runs
			must(t, err)
			defer s.Close()
			list, err := s.List()
			if err != nil || len(list) != 3 {
				t.Fatalf("after rebuild: %d records, %v", len(list), err)
			}
			for i, got := range list {
				want := txs[i]
				if got.ID != want.ID || got.Digest != want.Digest || got.Manifest != want.Manifest || got.Entries != want.Entries || got.Bytes != want.Bytes || strings.Join(got.Kernels, ",") != strings.Join(want.Kernels, ",") {
					t.Errorf("tx %d rebuilt as %+v, want %+v", want.ID, got, want)
				}
				if got.State != txstore.StatePending && got.State != txstore.StateGood {
					t.Errorf("tx %d state %q", got.ID, got.State)
				}
				if i > 0 && got.Parent != list[i-1].ID {
					t.Errorf("tx %d parent %d", got.ID, got.Parent)
				}
				for _, mode := range []txstore.VerifyMode{txstore.VerifyFast, txstore.VerifyFull} {
					if probs, err := s.Verify(got.ID, mode); err != nil || len(probs) > 0 {
						t.Errorf("verify tx %d: %v %v", got.ID, probs, err)
					}
				}
			}
			if def, err := s.Default(); err != nil || def == 0 {
				t.Errorf("default %d %v", def, err)
			}
			if kind == testtree.DamageFreelist { // records were readable: kept
				if list[0].State != txstore.StateGood || list[0].Summary != "tx 1" {
					t.Errorf("salvaged tx 1: %+v", list[0])
				}
				if cfg, err := s.Config("entries"); err != nil || string(cfg) != `{"esp":"/efi"}` {
					t.Errorf("salvaged setting %q %v", cfg, err)
				}
			}
			if rep, err := s.Fsck(); err != nil || len(rep.Problems) != 0 {
				t.Errorf("fsck after rebuild: %+v %v", rep, err)
			}
			tx, _, err := s.Commit(sampleDir(t, testtree.File{Path: "share/marker", Data: "4", Mode: 0o644}), txstore.CommitOptions{})
			if err != nil || tx.ID != 4 {
				t.Fatalf("commit after rebuild: %v %v", tx, err)
			}
		})
	}
}

// TestRebuildSoundStore: a rebuild of a sound database keeps every record
// exactly (state, tries, summary, pin) and the event log gains one line.
func TestRebuildSoundStore(t *testing.T) {
	root, _ := store3(t)
	s, err := txstore.Open(root, txstore.Options{NoCleanup: true})
	must(t, err)
	defer s.Close()
	must(t, s.SetPinned(2, true))
	before, err := s.List()
	must(t, err)
	if _, err := s.Rebuild(); err != nil {
		t.Fatal(err)
	}
	after, err := s.List()
	must(t, err)
	if len(after) != len(before) {
		t.Fatalf("%d records, want %d", len(after), len(before))
	}
	for i := range before {
		b, a := before[i], after[i]
		if a.ID != b.ID || a.Digest != b.Digest || a.Boot != b.Boot || a.Summary != b.Summary || a.Pinned != b.Pinned || a.Parent != b.Parent || !a.Created.Equal(b.Created) {
			t.Errorf("tx %d: %+v, want %+v", b.ID, a, b)
		}
	}
	if def, _ := s.Default(); def != 3 {
		t.Errorf("default %d, want 3", def)
	}
	evs, err := s.Events(1)
	if err != nil || len(evs) != 1 || evs[0].Kind != "fsck-rebuild" {
		t.Errorf("events %v %v", evs, err)
	}
}

// TestFindManifest: the CAS alone names a tx's manifest by its digest, and
// a tree verifies against it without the database.
func TestFindManifest(t *testing.T) {
	root, txs := store3(t)
	must(t, testtree.DamageDB(dbPath(root), testtree.DamageGarbage))
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	must(t, err)
	defer s.Close()
	m, key, err := s.FindManifest(txs[1].Digest, 0)
	if err != nil || m.Digest() != txs[1].Digest || key.Hash.String() != txs[1].Manifest {
		t.Fatalf("find %s: %v", txs[1].Digest, err)
	}
	for _, mode := range []txstore.VerifyMode{txstore.VerifyFast, txstore.VerifyFull} {
		if probs, err := s.VerifyManifest(2, m, mode); err != nil || len(probs) > 0 {
			t.Errorf("verify tx 2 mode %d: %v %v", mode, probs, err)
		}
		// tx 3's tree is not tx 2's content.
		if probs, err := s.VerifyManifest(3, m, mode); err != nil || len(probs) == 0 {
			t.Errorf("tx 3 against tx 2's manifest: %v %v", probs, err)
		}
	}
	if _, _, err := s.FindManifest("sha256:"+strings.Repeat("0", 64), 2); !errors.Is(err, txstore.ErrNoManifest) {
		t.Errorf("unknown digest: %v", err)
	}
	if _, _, err := s.FindManifest("sha256:xyz", 0); !errors.Is(err, txstore.ErrNoManifest) && !errors.Is(err, txstore.ErrInvalid) {
		t.Errorf("malformed digest: %v", err)
	}
}

// TestRebuildKeepsRecordOfDamagedTree: a tree that no longer matches its
// manifest is set aside, but a readable record whose manifest is present is
// kept, so a re-blit brings the tx back.
func TestRebuildKeepsRecordOfDamagedTree(t *testing.T) {
	root, txs := store3(t)
	s, err := txstore.Open(root, txstore.Options{NoCleanup: true})
	must(t, err)
	defer s.Close()
	marker := filepath.Join(s.TreeDir(2), "share", "marker")
	os.Chmod(filepath.Dir(marker), 0o755)
	must(t, os.Remove(marker))
	must(t, testtree.DamageDB(dbPath(root), testtree.DamageFreelist)) // records still readable
	rep, err := s.Rebuild()
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Txs) != 3 || len(rep.SetAside) != 1 || !strings.Contains(rep.SetAside[0], "tree-2-") {
		t.Fatalf("rebuild: %d txs, set aside %v", len(rep.Txs), rep.SetAside)
	}
	if got, err := s.Get(2); err != nil || got.Digest != txs[1].Digest || got.Summary != "tx 2" {
		t.Fatalf("tx 2 after rebuild: %+v %v", got, err)
	}
	if _, err := s.Reblit(2); err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(2, txstore.VerifyFull); err != nil || len(probs) > 0 {
		t.Fatalf("tx 2 after re-blit: %v %v", probs, err)
	}
}
