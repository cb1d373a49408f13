package txstore_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
)

// With txs 1 (good), 2, 3 (bad) and 4 (the default), prune --keep 2 keeps
// the newest good tx and never a bad one in preference to a good or
// untested one: it removes 3 only, and a rollback still has tx 1.
func TestPruneKeepsNewestGood(t *testing.T) {
	s, _ := newStore(t)
	commitN(t, s, 4)
	if _, err := s.Update(1, txstore.Event{}, func(t *txstore.Tx) error { t.MarkGood(); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(3, txstore.Event{}, func(t *txstore.Tx) error { t.MarkBad("test"); return nil }); err != nil {
		t.Fatal(err)
	}
	plan, err := s.PrunePlan(2)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Prune(2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Removed, []uint64{3}) || !slices.Equal(plan, res.Removed) {
		t.Fatalf("prune --keep 2: plan %v, removed %v, kept %v; want only 3 removed", plan, res.Removed, res.Kept)
	}
	if tx, err := s.Get(1); err != nil || tx.State != txstore.StateGood {
		t.Fatalf("good tx 1 after prune: %+v %v", tx, err)
	}
}

// Prune holds the gc lock (and the writer lock, from Open) before it
// removes anything: its before hook, where bootctl drops entries, runs
// under both, with the same plan it then carries out.
func TestPruneLocksBeforeRemoving(t *testing.T) {
	s, root := newStore(t)
	commitN(t, s, 3)
	var seen []uint64
	res, err := s.PruneWith(1, nil, func(plan []uint64) error {
		seen = plan
		if _, err := txstore.Open(root, txstore.Options{Timeout: 1}); !errors.Is(err, txstore.ErrBusy) {
			t.Errorf("writer lock not held in before: %v", err)
		}
		r, err := txstore.Open(root, txstore.Options{ReadOnly: true, Timeout: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Verify(3, txstore.VerifyFast); !errors.Is(err, txstore.ErrBusy) {
			t.Errorf("gc lock not held in before: %v", err)
		}
		if _, err := s.Get(1); err != nil {
			t.Errorf("tx 1 removed before the hook: %v", err)
		}
		return nil
	})
	if err != nil || !slices.Equal(seen, []uint64{2, 1}) || !slices.Equal(res.Removed, seen) {
		t.Fatalf("PruneWith: %v; hook saw %v, removed %+v", err, seen, res)
	}
	// A failing hook stops the prune with nothing removed.
	commitN(t, s, 1)
	if _, err := s.PruneWith(1, nil, func([]uint64) error { return errors.New("esp full") }); err == nil || !strings.Contains(err.Error(), "nothing removed") {
		t.Fatalf("failing hook: %v", err)
	}
	if _, err := s.Get(3); err != nil {
		t.Fatalf("tx 3 removed though the hook failed: %v", err)
	}
}
