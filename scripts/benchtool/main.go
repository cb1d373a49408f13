// Command benchtool is scripts/bench.sh's hook into txstore: it times the
// phases the bootctl CLI does not expose on their own (blit of an existing
// transaction into a fresh directory, verify with a timing breakdown).
//
//	benchtool commit ROOT DIR        # txstore.Commit with a per-step breakdown
//	benchtool blit   ROOT ID DST     # tree from the store, like ostree checkout -H
//	benchtool verify ROOT ID fast|full
//	benchtool setxattrs DIR          # a user.* xattr on every regular file
//
// It prints one line "seconds=<float>" (wall time of the whole operation,
// including opening the store and loading the manifest) plus details on stderr.
package main

import (
	"bytes"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/failpoint"
)

func main() {
	if p := os.Getenv("TXBOOT_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "benchtool:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func usage() error {
	return fmt.Errorf("usage: benchtool commit ROOT DIR | blit ROOT ID DST | verify ROOT ID fast|full | setxattrs DIR")
}

func run(args []string) error {
	if len(args) == 3 && args[0] == "commit" {
		return commit(args[1], args[2])
	}
	if len(args) == 2 && args[0] == "setxattrs" {
		return setxattrs(args[1])
	}
	if len(args) < 3 {
		return usage()
	}
	id, err := strconv.ParseUint(args[2], 10, 64)
	if err != nil {
		return usage()
	}
	workers, _ := strconv.Atoi(os.Getenv("TXBOOT_WORKERS"))
	start := time.Now()
	s, err := txstore.Open(args[1], txstore.Options{ReadOnly: true, Workers: workers})
	if err != nil {
		return err
	}
	defer s.Close()
	switch args[0] {
	case "blit":
		if len(args) != 4 {
			return usage()
		}
		t, err := s.Get(id)
		if err != nil {
			return err
		}
		m, err := s.Manifest(t)
		if err != nil {
			return err
		}
		loaded := time.Now()
		st, err := blit.Blit(m, s.Objects(), args[3], workers)
		if err != nil {
			return err
		}
		end := time.Now()
		fmt.Fprintf(os.Stderr, "blit: manifest %.3fs, blit %.3fs, %+v\n", loaded.Sub(start).Seconds(), end.Sub(loaded).Seconds(), st)
		fmt.Printf("seconds=%.3f\n", end.Sub(start).Seconds())
	case "verify":
		if len(args) != 4 || (args[3] != "fast" && args[3] != "full") {
			return usage()
		}
		mode := txstore.VerifyFast
		if args[3] == "full" {
			mode = txstore.VerifyFull
		}
		t, err := s.Get(id)
		if err != nil {
			return err
		}
		if _, err := s.Manifest(t); err != nil {
			return err
		}
		loaded := time.Now()
		probs, err := s.Verify(id, mode)
		if err != nil {
			return err
		}
		end := time.Now()
		fmt.Fprintf(os.Stderr, "verify %s: manifest load %.3fs, verify (incl. its own manifest load) %.3fs, %d problems\n",
			args[3], loaded.Sub(start).Seconds(), end.Sub(loaded).Seconds(), len(probs))
		for i, p := range probs {
			if i == 10 {
				fmt.Fprintf(os.Stderr, "  …\n")
				break
			}
			fmt.Fprintf(os.Stderr, "  %s\n", p)
		}
		if len(probs) > 0 {
			return fmt.Errorf("%d problems", len(probs))
		}
		fmt.Printf("seconds=%.3f\n", end.Sub(loaded).Seconds())
	default:
		return usage()
	}
	return nil
}

// commit runs one commit and prints when each of its steps ended.
func commit(root, dir string) error {
	workers, _ := strconv.Atoi(os.Getenv("TXBOOT_WORKERS"))
	start := time.Now()
	s, err := txstore.Open(root, txstore.Options{Create: true, Workers: workers})
	if err != nil {
		return err
	}
	defer s.Close()
	last := time.Now()
	fmt.Fprintf(os.Stderr, "commit: open %.3fs", last.Sub(start).Seconds())
	// Every step of the commit is a failpoint: time them there.
	for _, name := range failpoint.Names() {
		step, ok := strings.CutPrefix(name, "commit/")
		if !ok {
			continue
		}
		restore, err := failpoint.EnableFunc(name, func() error {
			now := time.Now()
			fmt.Fprintf(os.Stderr, ", %s +%.3fs%s", step, now.Sub(last).Seconds(), dirty())
			last = now
			return nil
		})
		if err != nil {
			return err
		}
		defer restore()
	}
	_, st, err := s.Commit(dir, txstore.CommitOptions{Consume: os.Getenv("TXBOOT_CONSUME") != ""})
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	end := time.Now()
	fmt.Fprintf(os.Stderr, "commit: %d entries, %d new objects, %d deduplicated\n", st.Entries, st.NewObjects, st.Deduplicated)
	fmt.Printf("seconds=%.3f\n", end.Sub(start).Seconds())
	return nil
}

// dirty reports the page cache's dirty and writeback amounts when
// TXBOOT_BENCH_DIRTY is set (to see what a syncfs will have to write).
func dirty() string {
	if os.Getenv("TXBOOT_BENCH_DIRTY") == "" {
		return ""
	}
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return ""
	}
	out := ""
	for _, line := range bytes.Split(data, []byte("\n")) {
		if f := bytes.Fields(line); len(f) >= 2 && (string(f[0]) == "Dirty:" || string(f[0]) == "Writeback:") {
			out += " " + string(f[0]) + string(f[1]) + "k"
		}
	}
	return " [" + out[1:] + "]"
}
