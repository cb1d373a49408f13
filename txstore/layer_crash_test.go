package txstore_test

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/testkit"
	"github.com/txboot/txboot/txstore/testtree"
)

// layerPoints is every failpoint of CommitLayer: whether the tx is
// recorded when the process dies there. A point declared but missing
// here fails TestLayerFailpointCrash.
var layerPoints = map[string]bool{
	"layer/scanned":                false,
	"layer/objects-synced":         false,
	"layer/objects-half-published": false,
	"layer/objects-published":      false,
	"layer/blitted":                false,
	"layer/tree-synced":            false,
	"layer/image-built":            false,
	"layer/tree-published":         false, // recorded again by the next open
	"layer/recorded":               true,
}

var layerPkgChanges = []txstore.PkgChange{{Name: "hello", Arch: "amd64", New: "2.10-3"}}

// layerChild is the crash tests' committing process: one CommitLayer on
// the default tx with an /etc state (three in a row with loop).
func layerChild(root, upper string, loop bool) int {
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	n := 1
	if loop {
		n = 3
	}
	for i := 0; i < n; i++ {
		def, err := s.Default()
		if err == nil {
			var etc string
			if etc, err = stageEtc(s, "child", os.TempDir()); err == nil {
				_, _, err = s.CommitLayer(def, upper, txstore.CommitOptions{Etc: etc, PkgChanges: layerPkgChanges})
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// layerFixture is an upper over the sample tree that adds, changes and
// deletes files, deletes and remakes a directory, with bulk enough that
// objects are published in several steps; and what the tree becomes.
func layerFixture(t *testing.T) (upper, merged string) {
	t.Helper()
	u, m := layerFS{t, t.TempDir()}, layerFS{t, sampleDir(t)}
	for _, f := range []layerFS{u, m} {
		f.file("lib/os-release", "ID=layered\n", 0o644)
		f.file("bin/new-tool", "new tool", 0o755)
		f.file("lib/modules/7.0/vmlinuz", "kernel 7", 0o644)
		if err := testtree.Synthetic(f.path("share/bulk"), 64, 1024); err != nil {
			t.Fatal(err)
		}
	}
	u.whiteout("lib/dup-a")
	m.remove("lib/dup-a")
	u.opaque("share/doc")
	m.remove("share/doc")
	for _, f := range []layerFS{u, m} {
		f.file("share/doc/readme", "remade", 0o644)
	}
	return u.root, m.root
}

// TestLayerFailpointCrash dies (SIGKILL) and fails (an injected error) at
// every failpoint of CommitLayer. After each, reopened twice: the tx is
// recorded exactly when the point lies after the record (or recorded
// again from its whole tree, with its /etc state), every tx verifies,
// staging is empty, trees match records, and the upper is untouched.
func TestLayerFailpointCrash(t *testing.T) {
	for _, n := range failpoint.Names() {
		if _, ok := layerPoints[n]; strings.HasPrefix(n, "layer/") && !ok {
			t.Errorf("failpoint %s is not in layerPoints: test it", n)
		}
	}
	for name, recorded := range layerPoints {
		for _, action := range []string{"crash", "error"} {
			t.Run(name+"/"+action, func(t *testing.T) {
				root := storeWithOne(t)
				upper, merged := layerFixture(t)
				upWant := tsnap(t, upper)
				if action == "crash" {
					crashLayerAt(t, root, upper, name)
				} else {
					errorLayerAt(t, root, upper, name)
				}
				recovered := action == "crash" && name == "layer/tree-published"
				for round := 0; round < 2; round++ {
					checkAfterLayer(t, root, recorded, recovered, snapshot(t, merged))
					sameTree(t, "the upper", tsnap(t, upper), upWant)
				}
			})
		}
	}
}

func crashLayerAt(t *testing.T, root, upper, point string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TXBOOT_CRASH_ROOT="+root, "TXBOOT_CRASH_SRC="+upper,
		"TXBOOT_CRASH_MODE=layer", failpoint.EnvVar+"="+point+"=crash")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Sys().(interface{ Signaled() bool }).Signaled() {
		t.Fatalf("child not killed at %s: %v\n%s", point, err, out)
	}
}

func errorLayerAt(t *testing.T, root, upper, point string) {
	t.Helper()
	restore, err := failpoint.Enable(point, "error")
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	etc := stageEtcT(t, s, "child")
	_, _, err = s.CommitLayer(1, upper, txstore.CommitOptions{Etc: etc, PkgChanges: layerPkgChanges})
	if !errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("CommitLayer: %v, want the injected error", err)
	}
}

// checkAfterLayer opens the store after a failed or killed CommitLayer of
// tx 1 and checks it holds tx 1 only, or tx 2 too, whole (want) with its
// /etc state.
func checkAfterLayer(t *testing.T, root string, recorded, recovered bool, want map[string]string) {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer s.Close()
	txs := listTxs(t, s)
	if got := len(txs) == 2; got != (recorded || recovered) {
		t.Fatalf("%d txs, want recorded=%v", len(txs), recorded || recovered)
	}
	checkWholeTrees(t, s, txs)
	def, _ := s.Default()
	switch {
	case recovered: // a whole tree whose record was lost: not the default
		wantEtc(t, s, 2, "child")
		sameTree(t, "the new tx", snapshot(t, s.TreeDir(2)), want)
		if def != 1 {
			t.Errorf("default %d, want 1", def)
		}
	case recorded:
		wantEtc(t, s, 2, "child")
		sameTree(t, "the new tx", snapshot(t, s.TreeDir(2)), want)
		if txs[1].Parent != 1 || !reflect.DeepEqual(txs[1].PkgChanges, layerPkgChanges) || def != 2 {
			t.Errorf("record %+v, default %d", txs[1], def)
		}
	default:
		if def != 1 {
			t.Errorf("default %d, want 1", def)
		}
	}
}

// checkWholeTrees: every tx verifies full, one tree a record, staging is
// empty.
func checkWholeTrees(t *testing.T, s *txstore.Store, txs []*txstore.Tx) {
	t.Helper()
	for _, tx := range txs {
		if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) > 0 {
			t.Fatalf("tx %d: %v %v", tx.ID, probs, err)
		}
	}
	stagingEmpty(t, s)
	treesHaveImages(t, s, txs)
	if trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees")); len(trees) != len(txs) {
		t.Fatalf("%d trees for %d records", len(trees), len(txs))
	}
}

// TestCrashDuringLayer kills a process making layers (SIGKILL) at random
// instants, again and again on the same store: after each kill the store
// opens and holds only whole txs, each layer with its /etc state.
func TestCrashDuringLayer(t *testing.T) {
	kills := 12
	if testing.Short() {
		kills = 4
	}
	root := storeWithOne(t)
	upper, _ := layerFixture(t)
	start := time.Now()
	if out, err := layerKid(root, upper).CombinedOutput(); err != nil {
		t.Fatalf("clean run: %v\n%s", err, out)
	}
	span := time.Since(start)
	rng := rand.New(rand.NewSource(testkit.Seed(t)))
	for i := 0; i < kills; i++ {
		cmd := layerKid(root, upper)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("kill %d: child failed on its own: %v", i, err)
			}
		case <-time.After(time.Duration(rng.Int63n(int64(span)))):
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
		checkLayers(t, root, i)
	}
}

func layerKid(root, upper string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TXBOOT_CRASH_ROOT="+root, "TXBOOT_CRASH_SRC="+upper, "TXBOOT_CRASH_MODE=layers")
	return cmd
}

// checkLayers is checkWhole for layers: every tx but the first carries
// its /etc state; old ones are pruned to keep the store small.
func checkLayers(t *testing.T, root string, round int) {
	t.Helper()
	checkWhole(t, root, round)
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tx := range listTxs(t, s) {
		if tx.ID != 1 {
			wantEtc(t, s, tx.ID, "child")
		}
	}
}
