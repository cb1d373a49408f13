package txstore_test

import (
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testkit"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestMain lets the test binary act as a committing child process.
func TestMain(m *testing.M) {
	if root := os.Getenv("TXBOOT_CRASH_ROOT"); root != "" {
		os.Exit(crashChild(root, os.Getenv("TXBOOT_CRASH_SRC")))
	}
	os.Exit(m.Run())
}

func crashChild(root, src string) int {
	switch os.Getenv("TXBOOT_CRASH_MODE") {
	case "manifest":
		return commitManifestChild(root)
	case "layer", "layers":
		return layerChild(root, src, os.Getenv("TXBOOT_CRASH_MODE") == "layers")
	}
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	switch os.Getenv("TXBOOT_CRASH_MODE") {
	case "consume", "commit":
		// One commit that the parent's TXBOOT_FAILPOINTS stops at a step.
		_, _, err := s.Commit(src, txstore.CommitOptions{Consume: os.Getenv("TXBOOT_CRASH_MODE") == "consume"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	for i := 0; i < 3; i++ {
		if _, _, err := s.Commit(src, txstore.CommitOptions{Summary: "crash-" + strconv.Itoa(i)}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// TestCrashDuringCommit kills a committing process (SIGKILL) at random
// instants, again and again on the same store, and checks after each kill
// that the store opens, holds only whole transactions that verify clean,
// and that its leftovers are gone.
func TestCrashDuringCommit(t *testing.T) {
	kills := 60
	if testing.Short() {
		kills = 10
	}
	root := t.TempDir()
	srcs := make([]string, 4)
	for i := range srcs {
		srcs[i] = t.TempDir()
		extra := testtree.File{Path: "lib/gen", Data: strconv.Itoa(i), Mode: 0o644}
		if err := testtree.Write(srcs[i], append(testtree.Sample(), extra), time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		if err := testtree.Synthetic(filepath.Join(srcs[i], "share/bulk"), 400+i*50, 2048); err != nil {
			t.Fatal(err)
		}
	}
	// Measure one uninterrupted run to spread the kill instants over it.
	start := time.Now()
	if out, err := child(root, srcs[0]).CombinedOutput(); err != nil {
		t.Fatalf("clean run: %v\n%s", err, out)
	}
	span := time.Since(start)
	rng := rand.New(rand.NewSource(testkit.Seed(t))) // the kill instants; TXBOOT_TEST_SEED replays them
	t.Logf("one child run takes %s; killing %d times within it", span, kills)
	completed := 0
	for i := 0; i < kills; i++ {
		cmd := child(root, srcs[i%len(srcs)])
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(rng.Int63n(int64(span)))
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("kill %d: child failed on its own: %v", i, err)
			}
			completed++
		case <-time.After(delay):
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
		checkWhole(t, root, i)
	}
	t.Logf("%d of %d children finished before their kill", completed, kills)
}

func child(root, src string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TXBOOT_CRASH_ROOT="+root, "TXBOOT_CRASH_SRC="+src)
	return cmd
}

func checkWhole(t *testing.T, root string, round int) {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatalf("round %d: store does not open after a kill: %v", round, err)
	}
	defer s.Close()
	txs, err := s.List()
	if err != nil {
		t.Fatalf("round %d: list: %v", round, err)
	}
	for _, tx := range txs {
		probs, err := s.Verify(tx.ID, txstore.VerifyFull)
		if err != nil || len(probs) > 0 {
			t.Fatalf("round %d: tx %d is not whole: %v %v", round, tx.ID, probs, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Dir, "staging")); len(ents) != 0 {
		t.Fatalf("round %d: staging not cleaned: %d entries", round, len(ents))
	}
	trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees"))
	if len(trees) != len(txs) {
		t.Fatalf("round %d: %d trees for %d records", round, len(trees), len(txs))
	}
	if d, _ := s.Default(); len(txs) > 0 && d == 0 {
		t.Fatalf("round %d: no default with %d txs", round, len(txs))
	}
	// Keep the store small (and exercise prune and GC after crashes).
	if len(txs) > 4 {
		if _, err := s.Prune(2); err != nil {
			t.Fatalf("round %d: prune: %v", round, err)
		}
		if _, err := s.GC(); err != nil {
			t.Fatalf("round %d: gc: %v", round, err)
		}
	}
}
