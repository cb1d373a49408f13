package txstore_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/sealimg"
)

// atStep runs f when a write path reaches the named failpoint, for the
// rest of the test.
func atStep(t *testing.T, name string, f func()) {
	t.Helper()
	restore, err := failpoint.EnableFunc(name, func() error { f(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(restore)
}

// storeFailpoints is every failpoint of the store's write paths: whether
// the tx is recorded when the process dies there, and the commit mode
// that reaches it. A point declared but missing here fails
// TestFailpointCrash: each one is tested on purpose.
var storeFailpoints = map[string]struct {
	recorded bool
	mode     string // commit, consume (the point is only on that path) or manifest
}{
	// An error (not a crash) in adopt puts DIR back and blits instead:
	// the tx is recorded, DIR kept (see errFallsBack).
	"commit/scanned":                     {false, "commit"},
	"commit/objects-synced":              {false, "commit"},
	"commit/objects-half-published":      {false, "commit"},
	"commit/objects-published":           {false, "commit"},
	"commit/consume-journaled":           {false, "consume"},
	"commit/adopted":                     {false, "consume"},
	"commit/relink-half":                 {false, "consume"},
	"commit/relinked":                    {false, "consume"},
	"commit/blitted":                     {false, "commit"},
	"commit/tree-synced":                 {false, "commit"},
	"commit/image-built":                 {false, "commit"},
	"commit/tree-published":              {false, "commit"},
	"commit/recorded":                    {true, "commit"},
	"commit/source-removed":              {true, "consume"},
	"commit-manifest/objects-checked":    {false, "manifest"},
	"commit-manifest/manifest-published": {false, "manifest"},
	"commit-manifest/blitted":            {false, "manifest"},
	"commit-manifest/tree-synced":        {false, "manifest"},
	"commit-manifest/image-built":        {false, "manifest"},
	"commit-manifest/tree-published":     {false, "manifest"},
	"commit-manifest/recorded":           {true, "manifest"},
}

// recoveredAt: a crash here leaves a published tree without a record,
// which the next writer's open records again (see recordLostTrees).
var recoveredAt = map[string]bool{"commit/tree-published": true, "commit-manifest/tree-published": true}

// errFallsBack: an injected error at these points makes a consuming
// commit put DIR back and blit a copy (CommitStats.ConsumeErr says why).
var errFallsBack = map[string]bool{"commit/adopted": true, "commit/relink-half": true, "commit/relinked": true}

// commitManifestChild commits tx 1's manifest again (a pull of a tx whose
// objects are all present) in a child process.
func commitManifestChild(root string) int {
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 1
	}
	defer s.Close()
	err = commitManifestOf(s, 1)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 1
	}
	return 0
}

func commitManifestOf(s *txstore.Store, id uint64) error {
	tx, err := s.Get(id)
	if err != nil {
		return err
	}
	raw, err := s.ManifestBytes(tx.Manifest, tx.Digest)
	if err != nil {
		return err
	}
	m, err := s.Manifest(tx)
	if err != nil {
		return err
	}
	_, err = s.CommitManifest(m, raw, txstore.CommitOptions{Summary: "again"})
	return err
}

// TestFailpointCrash dies (SIGKILL) and fails (an injected error) at every
// named failpoint of Commit and CommitManifest, consuming and not. After
// each, reopened twice: the store opens, the tx is recorded exactly when
// the point lies after the record, every tx verifies full, staging is
// empty, trees match records, and a consumed DIR is either the new tx or
// back with all its content.
func TestFailpointCrash(t *testing.T) {
	names := failpoint.Names()
	for _, n := range names {
		if strings.HasPrefix(n, "commit/") || strings.HasPrefix(n, "commit-manifest/") {
			if _, ok := storeFailpoints[n]; !ok {
				t.Errorf("failpoint %s is not in storeFailpoints: test it", n)
			}
		}
	}
	for name, p := range storeFailpoints {
		if !contains(names, name) {
			t.Errorf("storeFailpoints names %s, which is not declared", name)
			continue
		}
		modes := []string{p.mode}
		if p.mode == "commit" {
			modes = append(modes, "consume") // every commit point is on the consume path too
		}
		for _, mode := range modes {
			for _, action := range []string{"crash", "error"} {
				t.Run(name+"/"+mode+"/"+action, func(t *testing.T) {
					root := storeWithOne(t)
					src := consumeSrc(t)
					want := snapshot(t, src)
					var err error
					if action == "crash" {
						cmd := exec.Command(os.Args[0], "-test.run=^$")
						cmd.Env = append(os.Environ(), "TXBOOT_CRASH_ROOT="+root, "TXBOOT_CRASH_SRC="+src,
							"TXBOOT_CRASH_MODE="+mode, failpoint.EnvVar+"="+name+"=crash")
						out, err := cmd.CombinedOutput()
						var ee *exec.ExitError
						if !errors.As(err, &ee) || !ee.Sys().(interface{ Signaled() bool }).Signaled() {
							t.Fatalf("child not killed at %s: %v\n%s", name, err, out)
						}
					} else {
						restore, ferr := failpoint.Enable(name, "error")
						if ferr != nil {
							t.Fatal(ferr)
						}
						s, oerr := txstore.Open(root, txstore.Options{})
						if oerr != nil {
							restore()
							t.Fatal(oerr)
						}
						var st *txstore.CommitStats
						if mode == "manifest" {
							err = commitManifestOf(s, 1)
						} else {
							_, st, err = s.Commit(src, txstore.CommitOptions{Consume: mode == "consume"})
						}
						s.Close()
						restore()
						if errFallsBack[name] {
							if err != nil || st == nil || !errors.Is(st.ConsumeErr, failpoint.ErrInjected) {
								t.Fatalf("commit: %v (stats %+v), want success by copy with the injected error as ConsumeErr", err, st)
							}
						} else if !errors.Is(err, failpoint.ErrInjected) {
							t.Fatalf("commit: %v, want the injected error", err)
						}
					}
					recorded, kept := p.recorded, false
					if action == "error" && errFallsBack[name] {
						recorded, kept = true, true
					}
					// A whole tree whose record is missing is recorded
					// again by the next writer's open (not the default);
					// a consumed DIR goes back first, so none is left.
					recovered := action == "crash" && mode != "consume" && recoveredAt[name]
					for round := 0; round < 2; round++ {
						checkAfterFailpoint(t, root, src, want, mode, recorded || recovered, recovered, kept, round)
					}
				})
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func checkAfterFailpoint(t *testing.T, root, src string, want map[string]string, mode string, recorded, recovered, kept bool, round int) {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		t.Fatalf("round %d: open: %v", round, err)
	}
	defer s.Close()
	txs, err := s.List()
	if err != nil {
		t.Fatalf("round %d: list: %v", round, err)
	}
	if got := len(txs) == 2; got != recorded {
		t.Fatalf("round %d: recorded=%v (%d txs), want %v", round, got, len(txs), recorded)
	}
	for _, tx := range txs {
		if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) > 0 {
			t.Fatalf("round %d: tx %d: %v %v", round, tx.ID, probs, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Dir, "staging")); len(ents) != 0 {
		t.Fatalf("round %d: staging holds %d entries", round, len(ents))
	}
	if trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees")); len(trees) != len(txs) {
		t.Fatalf("round %d: %d trees for %d records", round, len(trees), len(txs))
	}
	treesHaveImages(t, s, txs)
	if _, err := os.Stat(filepath.Join(s.Dir, "consume.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("round %d: consume journal still there: %v", round, err)
	}
	if recorded {
		wantTx := want
		if mode == "manifest" { // tx 1 again
			wantTx = snapshot(t, s.TreeDir(1))
		}
		sameTree(t, "the new tx", snapshot(t, s.TreeDir(2)), wantTx)
	}
	switch {
	case mode != "consume" || kept:
		sameTree(t, "DIR (not consumed)", snapshot(t, src), want)
	case recorded:
		if _, err := os.Lstat(src); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: consumed DIR still there: %v", round, err)
		}
	default:
		sameTree(t, "DIR put back", snapshot(t, src), want)
	}
	if recorded {
		want := uint64(2)
		if recovered {
			want = 1
		}
		if d, err := s.Default(); err != nil || d != want {
			t.Fatalf("round %d: default %d (%v), want %d", round, d, err, want)
		}
	}
}

// treesHaveImages: every tree holds its image (placed with it, never
// after) and nothing else beside usr/ and etc/ (no temp file); a record
// that names an image names that one (a tree recorded again after a
// crash names none until Seal).
func treesHaveImages(t *testing.T, s *txstore.Store, txs []*txstore.Tx) {
	t.Helper()
	for _, tx := range txs {
		ents, err := os.ReadDir(filepath.Dir(s.TreeDir(tx.ID)))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			if e.Name() != "usr" && e.Name() != "etc" {
				names = append(names, e.Name())
			}
		}
		if len(names) != 1 || names[0] != sealimg.FileName {
			t.Fatalf("trees/%d holds %v beside usr/ and etc/, want only %s", tx.ID, names, sealimg.FileName)
		}
		if tx.Image != "" {
			checkImage(t, s, tx.ID)
		}
	}
}
