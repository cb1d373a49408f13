package txstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
	"golang.org/x/sys/unix"
)

// fetchStore commits the sample tree into a new store, closes the writer
// and opens the store for fetching: the state of a device with one tx
// when a pull starts.
func fetchStore(t *testing.T) (*txstore.Store, string) {
	t.Helper()
	root := t.TempDir()
	w, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Commit(sampleDir(t), txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	s, err := txstore.OpenFetch(root, txstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, root
}

// importFiles adds every content of dir's manifest to im and publishes
// them: objects no tx references yet.
func importFiles(t *testing.T, im *txstore.Import, dir string) (commit func(s *txstore.Store) (*txstore.Tx, error)) {
	t.Helper()
	man, raw, files, _ := sourceManifest(t, dir)
	for h, keys := range keysByHash(man) {
		fi, err := os.Stat(files[h])
		if err != nil {
			t.Fatal(err)
		}
		if err := im.AddFile(copyIntoImport(t, im, files[h]), h, fi.Size(), keys); err != nil {
			t.Fatal(err)
		}
	}
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	return func(s *txstore.Store) (*txstore.Tx, error) { return im.Commit(man, raw, txstore.CommitOptions{}) }
}

// TestOpenFetchHoldsNoWriterLock: a Store from OpenFetch reads and
// imports while a writer opens, marks a tx good and sets the default (it
// used to take the writer lock for the whole pull, so mark-good failed
// with ErrBusy); it writes nothing itself before LockWriter, which waits
// for the writer (ErrBusy at its timeout) and then commits.
func TestOpenFetchHoldsNoWriterLock(t *testing.T) {
	s, root := fetchStore(t)
	im, err := s.NewImport()
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	commit := importFiles(t, im, sampleDir(t, testtree.File{Path: "share/new", Data: "pulled", Mode: 0o644}))

	w, err := txstore.Open(root, txstore.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("writer open during an import: %v", err)
	}
	if _, err := w.Update(1, txstore.Event{Kind: "mark-good"}, func(tx *txstore.Tx) error { tx.MarkGood(); return nil }); err != nil {
		t.Fatalf("mark-good during an import: %v", err)
	}
	if err := w.SetDefault(1); err != nil {
		t.Fatalf("set-default during an import: %v", err)
	}

	writes := []struct {
		name string
		fn   func() error
	}{
		{"SetDefault", func() error { return s.SetDefault(1) }},
		{"Log", func() error { return s.Log(txstore.Event{Kind: "x"}) }},
		{"Cleanup", s.Cleanup},
		{"GC", func() error { _, err := s.GC(); return err }},
		{"Commit", func() error { _, err := commit(s); return err }},
	}
	for _, tc := range writes {
		if err := tc.fn(); !errors.Is(err, txstore.ErrReadOnly) || !strings.Contains(err.Error(), "LockWriter") {
			t.Errorf("%s on a fetch store without the lock: %v, want ErrReadOnly naming LockWriter", tc.name, err)
		}
	}
	if err := s.LockWriter(); !errors.Is(err, txstore.ErrBusy) {
		t.Fatalf("LockWriter while a writer holds the lock: %v, want ErrBusy", err)
	}
	w.Close()
	if err := s.LockWriter(); err != nil {
		t.Fatal(err)
	}
	if err := s.LockWriter(); err != nil { // held: nothing to do
		t.Fatal(err)
	}
	tx, err := commit(s)
	if err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
		t.Fatalf("verify tx %d: %v %v", tx.ID, probs, err)
	}
	got, err := s.Get(1)
	if err != nil || got.State != txstore.StateGood {
		t.Fatalf("tx 1 after the commit: %+v %v; the writer's mark is lost", got, err)
	}
}

// TestOpenFetchOptions: OpenFetch refuses ReadOnly, creates a store with
// Create and reports a missing one without.
func TestOpenFetchOptions(t *testing.T) {
	tests := []struct {
		name string
		o    txstore.Options
		want error
	}{
		{"read-only", txstore.Options{ReadOnly: true}, txstore.ErrInvalid},
		{"missing", txstore.Options{}, txstore.ErrNoStore},
		{"create", txstore.Options{Create: true}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			s, err := txstore.OpenFetch(root, tc.o)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("OpenFetch: %v, want %v", err, tc.want)
			}
			if s == nil {
				return
			}
			defer s.Close()
			if _, err := os.Stat(filepath.Join(root, txstore.DirName, "store.db")); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(root, txstore.DirName, "lock")); err == nil {
				t.Errorf("OpenFetch created the writer lock file: it takes no writer lock")
			}
		})
	}
}

// TestCleanupKeepsLiveImport: a writer's Open (its Cleanup) while an
// import runs leaves the import's staging directory (and every import-*
// one: a dead one goes with a later writer) and cleans the rest; once no
// import runs, staging is emptied. Before, Cleanup emptied staging
// unconditionally: a pull without the writer lock would lose its work.
func TestCleanupKeepsLiveImport(t *testing.T) {
	tests := []struct {
		name string
		live bool
		kept []string // what staging holds after a writer's open
	}{
		{"import running", true, []string{"import-dead"}}, // + the live one
		{"no import", false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, root := fetchStore(t)
			staging := filepath.Join(s.Dir, "staging")
			for _, d := range []string{"import-dead", "commit-leftover"} {
				if err := os.MkdirAll(filepath.Join(staging, d, "x"), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(staging, "store.db.new"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			want := tc.kept
			if tc.live {
				im, err := s.NewImport()
				if err != nil {
					t.Fatal(err)
				}
				defer im.Close()
				importFiles(t, im, sampleDir(t))
				ents, _ := os.ReadDir(staging)
				for _, e := range ents {
					if strings.HasPrefix(e.Name(), "import-") && e.Name() != "import-dead" {
						want = append(want, e.Name())
					}
				}
				if len(want) != 2 {
					t.Fatalf("staging %v: no import directory", ents)
				}
			}
			w, err := txstore.Open(root, txstore.Options{Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			w.Close()
			ents, err := os.ReadDir(staging)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
			}
			if strings.Join(got, " ") != strings.Join(slices.Sorted(slices.Values(want)), " ") {
				t.Fatalf("staging after a writer's open: %v, want %v", got, want)
			}
		})
	}
}

// TestGCKeepsObjectsOfRunningImport: GC while an import has published
// objects no tx references yet removes none of them (PullRunning, Kept,
// a note), without waiting; the import then commits with every object in
// place. Without an import running, the same objects are removed. Before,
// nothing kept a GC from removing a running pull's objects once the pull
// no longer held the writer lock.
func TestGCKeepsObjectsOfRunningImport(t *testing.T) {
	tests := []struct {
		name string
		live bool
	}{
		{"import running", true},
		{"import closed", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, root := fetchStore(t)
			im, err := s.NewImport()
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			commit := importFiles(t, im, sampleDir(t, testtree.File{Path: "share/only-pulled", Data: "new content", Mode: 0o644}))
			if !tc.live {
				im.Close()
			}
			w, err := txstore.Open(root, txstore.Options{Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			st, err := w.GC()
			w.Close()
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("GC took %v: it must not wait for a pull", d)
			}
			if !tc.live {
				if st.PullRunning || st.Removed == 0 || st.Kept != 0 || st.Note() != "" {
					t.Fatalf("GC with no import: %+v, want the unreferenced objects removed", st)
				}
				return
			}
			if !st.PullRunning || st.Removed != 0 || st.Kept == 0 || !strings.Contains(st.Note(), "pull is running") {
				t.Fatalf("GC during an import: %+v (%q), want nothing removed and the kept objects counted", st, st.Note())
			}
			if err := s.LockWriter(); err != nil {
				t.Fatal(err)
			}
			tx, err := commit(s)
			if err != nil {
				t.Fatalf("commit after a GC during the import: %v", err)
			}
			if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
				t.Fatalf("verify: %v %v", probs, err)
			}
		})
	}
}

// TestImportWaitsForGC: an import does not start while a GC holds the
// fetch lock (it would find objects present that the GC is removing): it
// waits, and fails with ErrBusy at the store's timeout.
func TestImportWaitsForGC(t *testing.T) {
	s, _ := fetchStore(t)
	// What a GC holds while it runs.
	fd, err := os.OpenFile(filepath.Join(s.Dir, "fetch.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := flockEx(fd); err != nil {
		t.Fatal(err)
	}
	if im, err := s.NewImport(); !errors.Is(err, txstore.ErrBusy) {
		if im != nil {
			im.Close()
		}
		t.Fatalf("NewImport during a GC: %v, want ErrBusy", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Dir, "staging")); len(ents) != 0 {
		t.Fatalf("a refused import left %v in staging", ents)
	}
	fd.Close()
	im, err := s.NewImport()
	if err != nil {
		t.Fatal(err)
	}
	im.Close()
}

func flockEx(f *os.File) error { return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) }
