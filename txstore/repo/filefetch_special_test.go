package repo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/testkit"
	"golang.org/x/sys/unix"
)

// unusedMajor is a device major (of "Character devices" or "Block
// devices") that /proc/devices does not list: opening a node with it
// reaches no driver and fails with ENXIO, which shows whether Get opened
// the node. 0 when none of the experimental-use majors is free.
func unusedMajor(t *testing.T, section string) uint32 {
	t.Helper()
	f, err := os.Open("/proc/devices")
	if err != nil {
		return 0
	}
	defer f.Close()
	used := map[uint64]bool{}
	in := false
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := strings.TrimSpace(sc.Text())
		if strings.HasSuffix(line, ":") {
			in = line == section+":"
			continue
		}
		if fields := strings.Fields(line); in && len(fields) == 2 {
			if n, err := strconv.ParseUint(fields[0], 10, 32); err == nil {
				used[n] = true
			}
		}
	}
	for _, m := range []uint64{60, 61, 62, 63, 120, 121, 122, 123, 124, 125, 126, 127} {
		if !used[m] {
			return uint32(m)
		}
	}
	return 0
}

// TestFileFetcherSpecialFiles: a FIFO, a device node or a socket in a
// file:// repository, named like an object or the index, is refused (403,
// "not a regular file", permanent) without being opened: a FIFO does not
// block, and a node of a driver that does not exist fails the same way (an
// open would have reached it and failed with ENXIO instead).
func TestFileFetcherSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	obj := "objects/ab/" + strings.Repeat("ab", 32)
	if err := os.MkdirAll(filepath.Join(dir, "objects/ab"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A writer waits in open(2) on this FIFO until a reader opens it: if
	// Get opened it, the writer would get through.
	var writerIn chan error
	waitingWriter := func(p string) error {
		if err := unix.Mkfifo(p, 0o644); err != nil {
			return err
		}
		in := make(chan error, 1)
		writerIn = in
		tid := make(chan int, 1)
		go func() {
			runtime.LockOSThread() // its thread exits with it: no other goroutine runs there
			tid <- unix.Gettid()
			fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err == nil {
				unix.Close(fd)
			}
			in <- err
		}()
		// Wait until the writer is in open(2) (its wchan says so), or
		// the check would pass for a writer that came too late.
		wchan := fmt.Sprintf("/proc/self/task/%d/wchan", <-tid)
		for start := time.Now(); ; time.Sleep(time.Millisecond) {
			if b, _ := os.ReadFile(wchan); string(b) == "wait_for_partner" {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Logf("%s never said wait_for_partner: the writer check may miss a regression", wchan)
				break
			}
		}
		t.Cleanup(func() {
			// Let the writer through, if it is still waiting.
			if fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
				<-in
				unix.Close(fd)
			}
		})
		return nil
	}
	cases := []struct {
		name string
		path string
		make func(p string) error
	}{
		{"FIFO as an object", obj, func(p string) error { return unix.Mkfifo(p, 0o644) }},
		{"FIFO with a writer waiting", "objects/ab/" + strings.Repeat("cd", 32), waitingWriter},
		{"FIFO as the index", "index.json", func(p string) error { return unix.Mkfifo(p, 0o644) }},
		{"character device", "index.sig", func(p string) error {
			m := unusedMajor(t, "Character devices")
			if m == 0 {
				return unix.EPERM
			}
			return unix.Mknod(p, unix.S_IFCHR|0o644, int(unix.Mkdev(m, 0)))
		}},
		{"block device", "keys.json", func(p string) error {
			m := unusedMajor(t, "Block devices")
			if m == 0 {
				return unix.EPERM
			}
			return unix.Mknod(p, unix.S_IFBLK|0o644, int(unix.Mkdev(m, 0)))
		}},
		{"socket", "config", func(p string) error {
			l, err := net.Listen("unix", p)
			if err == nil {
				t.Cleanup(func() { l.Close() })
			}
			return err
		}},
	}
	f, err := NewFileFetcher("file://" + dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.make(filepath.Join(dir, c.path)); err != nil {
				if errors.Is(err, unix.EPERM) {
					testkit.Skipf(t, "cannot make it here: %v", err)
				}
				t.Fatal(err)
			}
			type result struct {
				body io.ReadCloser
				err  error
			}
			done := make(chan result, 1)
			go func() {
				b, err := f.Get(context.Background(), c.path)
				done <- result{b, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("Get %s blocked", c.path)
			}
			if r.err == nil {
				r.body.Close()
				t.Fatalf("Get %s served it", c.path)
			}
			var se *StatusError
			if !errors.As(r.err, &se) || se.Code != 403 || !strings.Contains(se.Status, "not a regular file") || !errors.Is(r.err, ErrFetch) || !permanent(r.err) {
				t.Fatalf("got %v, want a permanent 403 (not a regular file)", r.err)
			}
			if !strings.Contains(r.err.Error(), f.URL(c.path)) {
				t.Errorf("%q does not name %s", r.err, f.URL(c.path))
			}
			if writerIn != nil {
				// The writer wakes as soon as a reader opens; a moment
				// to see it does not (a slow machine can only make this
				// miss a regression, never fail a correct Get).
				select {
				case <-writerIn:
					t.Errorf("Get opened the FIFO: the writer waiting on it got through")
					writerIn <- nil // for the cleanup
				case <-time.After(200 * time.Millisecond):
				}
				writerIn = nil
			}
		})
	}
	// A regular file beside them is still served.
	if err := os.WriteFile(filepath.Join(dir, "objects/ab/file"), []byte("inside"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := f.Get(context.Background(), "objects/ab/file")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, err := io.ReadAll(b); err != nil || string(got) != "inside" {
		t.Fatalf("read %q, %v", got, err)
	}
}
