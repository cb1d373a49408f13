package repo

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPullRetriesStalledBody: a server that sends headers and half of a
// file and then nothing no longer hangs the pull: the stalled GET is
// abandoned and retried, and the pull succeeds when the retry is served;
// a file that stalls every time fails the pull with ErrStalled and leaves
// the store as it was.
func TestPullRetriesStalledBody(t *testing.T) {
	_, dir, txs := ptSource(t, nil, ptTree(t, nil))
	raws, zsts := ptObjectPaths(t, dir)
	mp, _ := ManifestPath(strings.TrimPrefix(txs[0].Digest, "sha256:"))
	cases := []struct {
		name   string
		path   string
		stalls int64 // GETs of path that stall; then it is served
		tries  int
		fail   bool
	}{
		{name: "index", path: "/" + IndexPath, stalls: 1, tries: 3},
		{name: "manifest", path: "/" + mp, stalls: 1, tries: 3},
		{name: "raw object", path: raws[0], stalls: 1, tries: 3},
		{name: "zst object", path: zsts[0], stalls: 2, tries: 3},
		{name: "always", path: raws[0], stalls: 1 << 30, tries: 2, fail: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, tc.path))
			if err != nil {
				t.Fatal(err)
			}
			srv := ptNewServer(t, dir)
			done := make(chan struct{})
			t.Cleanup(func() { close(done) }) // before srv.Close
			var gets atomic.Int64
			srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != tc.path || gets.Add(1) > tc.stalls {
					return false
				}
				w.Header().Set("Content-Length", strconv.Itoa(len(data)))
				w.Write(data[:len(data)/2])
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-done:
				}
				return true
			})
			f, err := NewHTTPFetcher(srv.URL, 4)
			if err != nil {
				t.Fatal(err)
			}
			f.BodyIdleTimeout = 200 * time.Millisecond
			defer f.CloseIdle()
			dst := ptStore(t)
			before := ptListing(t, dst)
			tx, _, err := Pull(context.Background(), dst, f, srv.URL, PullOptions{
				Insecure: true, Workers: 2, Tries: tc.tries, FlushInterval: -1,
				Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond})
			if tc.fail {
				if !errors.Is(err, ErrStalled) || !errors.Is(err, ErrFetch) || !strings.Contains(err.Error(), tc.path) || strings.Count(err.Error(), tc.path) != 1 {
					t.Fatalf("error %v; want a stall of %s", err, tc.path)
				}
				if n := gets.Load(); n != int64(tc.tries) {
					t.Errorf("%d GETs of %s, want %d (one per try)", n, tc.path, tc.tries)
				}
				if after := ptListing(t, dst); !slices.Equal(before, after) {
					t.Errorf("failed pull changed the store: %v -> %v", before, after)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := gets.Load(); n != tc.stalls+1 {
				t.Errorf("%d GETs of %s, want %d", n, tc.path, tc.stalls+1)
			}
			if tx.Digest != txs[0].Digest {
				t.Fatalf("pulled %s, want %s", tx.Digest, txs[0].Digest)
			}
			ptVerifyFull(t, dst, tx.ID)
		})
	}
}
