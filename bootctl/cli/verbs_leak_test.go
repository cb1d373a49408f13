package cli

import (
	"fmt"
	"sync"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// txOf reads tx id's record from the store at root.
func txOf(t *testing.T, root string, id uint64) *txstore.Tx {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true, Timeout: txstore.DefaultTimeout})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tx, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return tx
}

// TestFlagsDoNotLeak: each Main call parses into fresh option values, so a
// flag given to one call never applies to the next.
func TestFlagsDoNotLeak(t *testing.T) {
	root := t.TempDir()
	mustRun(t, "--root", root, "commit", tree(t), "--tries", "5", "--summary", "first")
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/x", Data: "x", Mode: 0o644}))
	for id, want := range map[uint64]int{1: 5, 2: 3} {
		if tx := txOf(t, root, id); tx.TriesLeft != want {
			t.Errorf("tx %d: %d tries left, want %d (--tries of one commit applied to the next?)", id, tx.TriesLeft, want)
		}
	}
	mustRun(t, "--root", root, "mark-bad", "1", "--reason", "first reason")
	mustRun(t, "--root", root, "mark-bad", "2")
	tests := []struct {
		id      uint64
		summary string
		failure string
	}{
		{1, "first", "first reason"},
		{2, "", "marked bad by bootctl"},
	}
	for _, tt := range tests {
		tx := txOf(t, root, tt.id)
		if tx.Summary != tt.summary || tx.LastFailure != tt.failure {
			t.Errorf("tx %d: summary %q, failure %q; want %q, %q", tt.id, tx.Summary, tx.LastFailure, tt.summary, tt.failure)
		}
	}
}

// TestFlagsConcurrent: two Main calls at once (as a test or an embedding
// program may make) keep their own flags; with shared package variables
// the race detector reports them and the tries cross over.
func TestFlagsConcurrent(t *testing.T) {
	const n = 4
	roots := make([]string, n)
	trees := make([]string, n)
	for i := range roots {
		roots[i], trees[i] = t.TempDir(), tree(t)
	}
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i := range roots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = Main([]string{"--root", roots[i], "commit", trees[i], "--tries", fmt.Sprint(i + 2), "--summary", fmt.Sprint("s", i)}, discard{}, discard{})
		}()
	}
	wg.Wait()
	for i, root := range roots {
		if codes[i] != ExitOK {
			t.Fatalf("commit %d: exit %d", i, codes[i])
		}
		if tx := txOf(t, root, 1); tx.TriesLeft != i+2 || tx.Summary != fmt.Sprint("s", i) {
			t.Errorf("root %d: tries %d summary %q, want %d %q", i, tx.TriesLeft, tx.Summary, i+2, fmt.Sprint("s", i))
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
