package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
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

// TestFlagsConcurrentRepoVerbs: concurrent pulls with different --tx and
// --tries, publishes with different --version and keygens with different
// --out each get their own flags (shared package variables race and cross
// over).
func TestFlagsConcurrentRepoVerbs(t *testing.T) {
	const n = 4
	src := t.TempDir()
	mustRun(t, "--root", src, "commit", tree(t), "--summary", "one")
	mustRun(t, "--root", src, "commit", tree(t, testtree.File{Path: "lib/two", Data: "2", Mode: 0o644}), "--summary", "two")
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "--root", src, "publish", "--repo", repoDir, "--version", "v1", "1")
	mustRun(t, "--root", src, "publish", "--repo", repoDir, "--version", "v2", "2")
	url := "file://" + repoDir

	keyDir := t.TempDir()
	roots, repos := make([]string, n), make([]string, n)
	for i := range roots {
		roots[i], repos[i] = t.TempDir(), filepath.Join(t.TempDir(), "repo")
	}
	version := func(i int) string { return fmt.Sprint("v", i%2+1) }
	var wg sync.WaitGroup
	codes := make([][3]int, n)
	for i := range roots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i][0] = Main([]string{"--root", roots[i], "pull", url, "--insecure", "--tx", version(i), "--tries", fmt.Sprint(i + 2)}, discard{}, discard{})
			codes[i][1] = Main([]string{"--root", src, "publish", "--repo", repos[i], "--version", fmt.Sprint("p", i), "1"}, discard{}, discard{})
			codes[i][2] = Main([]string{"keygen", "--out", filepath.Join(keyDir, fmt.Sprint("k", i))}, discard{}, discard{})
		}()
	}
	wg.Wait()
	for i := range roots {
		if codes[i] != [3]int{} {
			t.Fatalf("pull, publish, keygen %d: exit %v", i, codes[i])
		}
		if tx := txOf(t, roots[i], 1); tx.Version != version(i) || tx.TriesLeft != i+2 {
			t.Errorf("pull %d: version %q tries %d, want %q %d", i, tx.Version, tx.TriesLeft, version(i), i+2)
		}
		data, err := os.ReadFile(filepath.Join(repos[i], repo.IndexPath))
		if err != nil {
			t.Fatal(err)
		}
		ix, err := repo.ParseIndex(data)
		if err != nil {
			t.Fatal(err)
		}
		if len(ix.Txs) != 1 || ix.Txs[0].Version != fmt.Sprint("p", i) {
			t.Errorf("publish %d: index %+v, want version p%d", i, ix.Txs, i)
		}
		for _, ext := range []string{".key", ".pem"} {
			if _, err := os.Stat(filepath.Join(keyDir, fmt.Sprint("k", i)+ext)); err != nil {
				t.Errorf("keygen %d: %v", i, err)
			}
		}
	}
}
