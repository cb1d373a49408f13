package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// Issue 9: with txs 1 (good), 2, 3 (bad) and 4, prune --keep 2 must keep
// tx 1 (the newest good) and remove the bad 3, so rollback still works.
func TestPruneKeepsGoodForRollback(t *testing.T) {
	bootInfoPath = filepath.Join(t.TempDir(), "none.json")
	root := t.TempDir()
	for i := 0; i < 4; i++ {
		mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/v", Data: strings.Repeat("v", i+1), Mode: 0o644}))
	}
	mustRun(t, "--root", root, "mark-good", "1")
	mustRun(t, "--root", root, "mark-bad", "3")
	out := mustRun(t, "--root", root, "prune", "--keep", "2")
	if !strings.Contains(out, "removed 1 tx(s) [3]") {
		t.Fatalf("prune --keep 2: %q, want only tx 3 removed", out)
	}
	out = mustRun(t, "--root", root, "rollback")
	if !strings.Contains(out, "tx 1 is the default (was 4)") {
		t.Fatalf("rollback after prune: %q", out)
	}
}

// When gc fails after prune removed txs, bootctl says what prune removed
// and that gc failed; a symlinked objects/zz is not followed by either.
func TestPruneThenGCFails(t *testing.T) {
	bootInfoPath = filepath.Join(t.TempDir(), "none.json")
	root := t.TempDir()
	for i := 0; i < 3; i++ {
		mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/v", Data: strings.Repeat("v", i+1), Mode: 0o644}))
	}
	victim := t.TempDir()
	var files []string
	for d := 0; d < 8; d++ {
		os.Mkdir(filepath.Join(victim, fmt.Sprint(d)), 0o755)
		for f := 0; f < 10; f++ {
			p := filepath.Join(victim, fmt.Sprint(d), fmt.Sprint(f))
			os.WriteFile(p, []byte("precious"), 0o644)
			files = append(files, p)
		}
	}
	if err := os.Symlink(victim, filepath.Join(root, txstore.DirName, "objects", "zz")); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "--root", root, "prune", "--keep", "1")
	if code != ExitFail || !strings.Contains(out, "removed 2 tx(s) [2 1]") ||
		!strings.HasPrefix(errs, "bootctl prune: gc: ") || !strings.Contains(errs, "prune itself succeeded: removed 2 tx(s) [2 1]; only gc failed") || !strings.Contains(errs, "objects/zz") {
		t.Fatalf("prune with a failing gc: exit %d\nstdout %q\nstderr %q", code, out, errs)
	}
	code, _, errs = run(t, "--root", root, "gc")
	if code != ExitFail || !strings.Contains(errs, "objects/zz is a symlink") {
		t.Fatalf("gc: exit %d, stderr %q", code, errs)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("file outside the store deleted: %v", err)
		}
	}
}
