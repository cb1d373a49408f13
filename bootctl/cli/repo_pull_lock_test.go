package cli

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/testtree"
)

// plPublished publishes one unsigned tx (tree(t) plus a file of its own)
// into a repository directory and returns it.
func plPublished(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	mustRun(t, "--root", src, "commit", tree(t, testtree.File{Path: "share/pulled", Data: "only in the repository", Mode: 0o644}))
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "--root", src, "publish", "--repo", repoDir, "1")
	return repoDir
}

type plExit struct {
	code     int
	out, err string
}

// plMain runs bootctl in a goroutine: the test bounds the wait, so a pull
// that hangs fails it instead of hanging it.
func plMain(args ...string) <-chan plExit {
	ch := make(chan plExit, 1)
	go func() {
		var out, errb bytes.Buffer
		code := Main(args, &out, &errb)
		ch <- plExit{code, out.String(), errb.String()}
	}()
	return ch
}

func plWaitExit(t *testing.T, ch <-chan plExit, limit time.Duration) plExit {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(limit):
		t.Fatalf("bootctl did not return within %v", limit)
		return plExit{}
	}
}

// TestPullTimeoutFlag: pull --timeout bounds the whole pull. Against a
// server that sends index.json one byte every 200 ms (which never trips
// the idle timeout, and used to keep bootctl pull alive indefinitely),
// --timeout 1s fails (exit 1) soon after, naming --timeout 1s, with
// nothing recorded. A limit that is not a positive duration is a usage
// error: a pull always has one.
func TestPullTimeoutFlag(t *testing.T) {
	repoDir := plPublished(t)
	index, err := os.ReadFile(filepath.Join(repoDir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	files := http.FileServer(http.Dir(repoDir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/index.json" {
			files.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(index)))
		for i := range index {
			w.Write(index[i : i+1])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}))
	defer srv.Close()
	defer close(done) // before srv.Close

	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"trickling index", []string{"--timeout", "1s"}, ExitFail, "took longer than --timeout 1s"},
		{"zero", []string{"--timeout", "0"}, ExitUsage, "positive"},
		{"negative", []string{"--timeout", "-5m"}, ExitUsage, "positive"},
		{"not a duration", []string{"--timeout", "soon"}, ExitUsage, "positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dst := t.TempDir()
			start := time.Now()
			r := plWaitExit(t, plMain(append([]string{"--root", dst, "pull", srv.URL, "--insecure"}, tc.args...)...), 30*time.Second)
			if r.code != tc.code || !strings.Contains(r.err, tc.msg) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", r.code, r.err, tc.code, tc.msg)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("returned after %v", d)
			}
			if tc.code == ExitFail && !strings.Contains(r.err, "index.json") {
				t.Errorf("stderr %q does not say what it was fetching", r.err)
			}
			if _, err := os.Stat(filepath.Join(dst, ".txboot", "store.db")); err == nil && txCount(t, dst) != 0 {
				t.Fatalf("a pull past --timeout recorded a tx")
			}
		})
	}
}

// TestPullLeavesWritersFree: while bootctl pull waits on a stalled object,
// set-default and mark-good (with the usual lock timeout) succeed at once
// — they used to fail with exit 5, "store is locked by another writer",
// for as long as the pull ran — and the pull, released, commits.
func TestPullLeavesWritersFree(t *testing.T) {
	oldInfo, oldCmd := bootInfoPath, procCmdline
	t.Cleanup(func() { bootInfoPath, procCmdline = oldInfo, oldCmd })
	dir := t.TempDir()
	bootInfoPath = filepath.Join(dir, "no-boot.json")
	procCmdline = filepath.Join(dir, "cmdline")
	if err := os.WriteFile(procCmdline, []byte("txboot.tx=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	repoDir := plPublished(t)
	release := make(chan struct{})
	var once, relOnce sync.Once
	stalled := make(chan struct{})
	files := http.FileServer(http.Dir(repoDir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/objects/") {
			once.Do(func() { close(stalled) })
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		files.ServeHTTP(w, r)
	}))
	defer srv.Close()
	free := func() { relOnce.Do(func() { close(release) }) }
	defer free() // before srv.Close

	dst := t.TempDir()
	mustRun(t, "--root", dst, "commit", tree(t))
	pull := plMain("--root", dst, "pull", srv.URL, "--insecure")
	select {
	case <-stalled:
	case r := <-pull:
		t.Fatalf("pull ended before it fetched an object: exit %d %s%s", r.code, r.out, r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("the pull fetched no object")
	}
	efi := t.TempDir()
	for _, args := range [][]string{{"set-default", "1", "--efivars", efi}, {"mark-good", "1"}} {
		start := time.Now()
		r := plWaitExit(t, plMain(append([]string{"--root", dst, "--timeout", "2s"}, args...)...), 10*time.Second)
		if r.code != ExitOK {
			t.Fatalf("%v during a pull: exit %d, %s%s", args, r.code, r.out, r.err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%v took %v during a pull", args, d)
		}
	}
	free()
	r := plWaitExit(t, pull, 20*time.Second)
	if r.code != ExitOK || !strings.Contains(r.out, "pulled tx 2") {
		t.Fatalf("pull: exit %d\n%s%s", r.code, r.out, r.err)
	}
	if n := txCount(t, dst); n != 2 {
		t.Fatalf("%d txs after the pull, want 2", n)
	}
}
