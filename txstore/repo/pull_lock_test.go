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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
)

// plFetchStore opens a store at root for fetching, as bootctl pull does.
func plFetchStore(t *testing.T, root string) *txstore.Store {
	t.Helper()
	s, err := txstore.OpenFetch(root, txstore.Options{Create: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// plRun runs a pull (or a download) in a goroutine and returns its
// result channel: a test waits on it with a timer, so a pull that hangs
// fails the test instead of hanging it.
type plResult struct {
	tx  *txstore.Tx
	d   *txstore.Download
	st  *PullStats
	err error
}

func plRun(t *testing.T, s *txstore.Store, url string, download bool, o PullOptions) <-chan plResult {
	t.Helper()
	f, err := NewHTTPFetcher(url, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.CloseIdle)
	if o.Backoff == 0 {
		o.Backoff, o.MaxBackoff = time.Millisecond, 4*time.Millisecond
	}
	o.Insecure = true
	ch := make(chan plResult, 1)
	go func() {
		var r plResult
		if download {
			r.d, r.st, r.err = Download(context.Background(), s, f, url, o)
		} else {
			r.tx, r.st, r.err = Pull(context.Background(), s, f, url, o)
		}
		ch <- r
	}()
	return ch
}

func plWait(t *testing.T, ch <-chan plResult, limit time.Duration) plResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(limit):
		t.Fatalf("the pull did not return within %v", limit)
		return plResult{}
	}
}

// TestPullTimeout: a server that sends index.json (or the objects) one
// byte every 200 ms never trips the idle timeout, and used to keep a pull
// alive indefinitely (minutes here; for ever with an endless body). With PullOptions.Timeout of 1 s the pull returns
// soon after with a *DeadlineError (ErrDeadline) naming the limit and
// what it was fetching; nothing is recorded, and objects it had checked
// and published stay for the re-run, which fetches only the rest.
func TestPullTimeout(t *testing.T) {
	_, dir, txs := ptSource(t, nil, ptTree(t, nil))
	cases := []struct {
		name     string
		download bool
		trickle  func(path string, objectGets int64) bool
		what     string // in the error
	}{
		{name: "index", trickle: func(p string, _ int64) bool { return p == "/"+IndexPath }, what: IndexPath},
		{name: "index, download only", download: true, trickle: func(p string, _ int64) bool { return p == "/"+IndexPath }, what: IndexPath},
		// Objects trickle from the third on: the first two are published
		// by then.
		{name: "objects", trickle: func(p string, n int64) bool { return strings.HasPrefix(p, "/objects/") && n > 2 }, what: "/objects/"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := ptNewServer(t, dir)
			done := make(chan struct{})
			t.Cleanup(func() { close(done) }) // before srv.Close
			var objectGets atomic.Int64
			var trickling atomic.Bool
			trickling.Store(true)
			srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				var n int64
				if strings.HasPrefix(r.URL.Path, "/objects/") {
					n = objectGets.Add(1)
				}
				if !trickling.Load() || !tc.trickle(r.URL.Path, n) {
					return false
				}
				data, err := os.ReadFile(filepath.Join(dir, r.URL.Path))
				if err != nil {
					return false // a 404 probe of the other spelling
				}
				w.Header().Set("Content-Length", strconv.Itoa(len(data)))
				for i := range data {
					w.Write(data[i : i+1])
					w.(http.Flusher).Flush()
					select {
					case <-r.Context().Done():
						return true
					case <-done:
						return true
					case <-time.After(200 * time.Millisecond):
					}
				}
				return true
			})
			s := plFetchStore(t, t.TempDir())
			before := ptListing(t, s)
			start := time.Now()
			r := plWait(t, plRun(t, s, srv.URL, tc.download, PullOptions{Timeout: time.Second, Workers: 1, FlushInterval: 50 * time.Millisecond}), 20*time.Second)
			if d := time.Since(start); d > 8*time.Second {
				t.Errorf("gave up after %v; the limit was 1s", d)
			}
			var de *DeadlineError
			if !errors.Is(r.err, ErrDeadline) || !errors.As(r.err, &de) || de.Limit != time.Second ||
				!strings.Contains(r.err.Error(), "took longer than 1s") || !strings.Contains(r.err.Error(), tc.what) {
				t.Fatalf("error %v; want a DeadlineError of 1s naming %s", r.err, tc.what)
			}
			after := ptListing(t, s)
			if slices.ContainsFunc(after, func(x string) bool { return strings.HasPrefix(x, "tx ") || strings.HasPrefix(x, "trees/") }) {
				t.Fatalf("a pull past its time limit recorded something: %v", after)
			}
			if ds, err := s.Downloads(); err != nil || len(ds) != 0 {
				t.Fatalf("downloads after the time limit: %v %v", ds, err)
			}
			if tc.name != "objects" {
				if !slices.Equal(before, after) {
					t.Fatalf("store changed: %v -> %v", before, after)
				}
				return
			}
			// What was checked and published stays; the re-run (a fresh
			// fetch store, as the next bootctl pull) fetches the rest.
			s.Close()
			trickling.Store(false)
			s2 := plFetchStore(t, filepath.Dir(s.Dir))
			r = plWait(t, plRun(t, s2, srv.URL, false, PullOptions{Timeout: 10 * time.Second}), 20*time.Second)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.st.Fetched >= r.st.Objects || r.st.Present < 2 || r.tx.Digest != txs[0].Digest {
				t.Fatalf("re-run: %+v; want the 2 published objects present, the rest fetched", r.st)
			}
			ptVerifyFull(t, s2, r.tx.ID)
		})
	}
}

// plStallServer serves dir, but object GETs after the first free ones
// block (no response) until release is closed; stalled is closed when
// the first one blocks.
func plStallServer(t *testing.T, dir string, free int64) (srv *ptServer, stalled <-chan struct{}, release func()) {
	t.Helper()
	srv = ptNewServer(t, dir)
	rel := make(chan struct{})
	st := make(chan struct{})
	var once, relOnce sync.Once
	var gets atomic.Int64
	srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, "/objects/") || gets.Add(1) <= free {
			return false
		}
		once.Do(func() { close(st) })
		select {
		case <-rel:
			return false // then served
		case <-r.Context().Done():
			return true
		}
	})
	release = func() { relOnce.Do(func() { close(rel) }) }
	t.Cleanup(release) // before srv.Close
	return srv, st, release
}

func plWaitStalled(t *testing.T, stalled <-chan struct{}, ch <-chan plResult) {
	t.Helper()
	select {
	case <-stalled:
	case r := <-ch:
		t.Fatalf("the pull ended before it reached the stalled object: %+v %v", r.st, r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("no object GET reached the stall")
	}
}

// TestPullHoldsNoWriterLock: while a pull (or a download) waits on a
// stalled object, another process opens the store for writing with a 2 s
// lock timeout, marks tx 1 good and sets the default: it succeeds at once
// (it used to fail with ErrBusy — on a device, the health service's
// mark-good during a background pull). Released, the pull commits the tx
// correctly, after the writer's changes and without undoing them.
func TestPullHoldsNoWriterLock(t *testing.T) {
	_, dir, txs := ptSource(t, nil, ptTree(t, nil), ptTree(t, map[string]string{"share/update": "only in the update"}))
	for _, download := range []bool{false, true} {
		name := map[bool]string{false: "pull", true: "download only"}[download]
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			// Tx 1 is the first tx, pulled as usual.
			base := plFetchStore(t, root)
			r := plWait(t, plRun(t, base, ptNewServer(t, dir).URL, false, PullOptions{Tx: txs[0].Digest}), 20*time.Second)
			if r.err != nil {
				t.Fatal(r.err)
			}
			base.Close()

			srv, stalled, release := plStallServer(t, dir, 0)
			s := plFetchStore(t, root)
			ch := plRun(t, s, srv.URL, download, PullOptions{Tx: txs[1].Digest, Workers: 1})
			plWaitStalled(t, stalled, ch)

			start := time.Now()
			w, err := txstore.Open(root, txstore.Options{Timeout: 2 * time.Second})
			if err != nil {
				t.Fatalf("writer open during a pull: %v", err)
			}
			_, err = w.Update(1, txstore.Event{Kind: "mark-good"}, func(tx *txstore.Tx) error { tx.MarkGood(); return nil })
			if err == nil {
				err = w.SetDefault(1)
			}
			w.Close()
			if err != nil {
				t.Fatalf("mark-good / set-default during a pull: %v", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("the writer took %v during a pull", d)
			}

			release()
			r = plWait(t, ch, 20*time.Second)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if download {
				if r.d == nil || r.d.Digest != txs[1].Digest {
					t.Fatalf("download %+v, want %s", r.d, txs[1].Digest)
				}
				ds, err := s.Downloads()
				if err != nil || len(ds) != 1 {
					t.Fatalf("download records %v %v", ds, err)
				}
			} else {
				if r.tx.Digest != txs[1].Digest || r.tx.ID != 2 {
					t.Fatalf("pulled %+v, want tx 2 %s", r.tx, txs[1].Digest)
				}
				ptVerifyFull(t, s, r.tx.ID)
				if def, err := s.Default(); err != nil || def != 2 {
					t.Fatalf("default %d %v, want the pulled tx 2", def, err)
				}
			}
			if t1, err := s.Get(1); err != nil || t1.State != txstore.StateGood {
				t.Fatalf("tx 1: %+v %v; the writer's mark-good is lost", t1, err)
			}
		})
	}
}

// TestPullSurvivesGCAndCleanup: while a pull waits on a stalled object
// after two objects were published (no tx references them yet), a
// writer's open (its Cleanup) and a GC run: the pull's staging directory
// stays, GC removes nothing and says a pull is running (PullRunning,
// Kept), and the released pull commits a tx that verifies in full. With
// the writer lock no longer held by the pull, these used to delete its
// staging directory and its published objects.
func TestPullSurvivesGCAndCleanup(t *testing.T) {
	_, dir, txs := ptSource(t, nil, ptTree(t, nil))
	srv, stalled, release := plStallServer(t, dir, 2)
	root := t.TempDir()
	s := plFetchStore(t, root)
	ch := plRun(t, s, srv.URL, false, PullOptions{Workers: 1, FlushInterval: 50 * time.Millisecond})
	plWaitStalled(t, stalled, ch)
	objects := func() int {
		n := 0
		filepath.WalkDir(filepath.Join(s.Dir, "objects"), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	for deadline := time.Now().Add(20 * time.Second); objects() < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d objects published while the third stalls, want 2", objects())
		}
	}
	imports, _ := filepath.Glob(filepath.Join(s.Dir, "staging", "import-*"))
	if len(imports) != 1 {
		t.Fatalf("staging holds %v, want the pull's import", imports)
	}

	w, err := txstore.Open(root, txstore.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	st, err := w.GC()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !st.PullRunning || st.Removed != 0 || st.Kept < 2 {
		t.Fatalf("GC during a pull: %+v; want nothing removed, the pull's objects kept", st)
	}
	if _, err := os.Stat(imports[0]); err != nil {
		t.Fatalf("the pull's staging directory after a writer's open: %v", err)
	}
	if n := objects(); n < 2 {
		t.Fatalf("%d objects left after GC", n)
	}

	release()
	r := plWait(t, ch, 20*time.Second)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.tx.Digest != txs[0].Digest || r.st.Fetched != r.st.Objects {
		t.Fatalf("pulled %+v %+v", r.tx, r.st)
	}
	ptVerifyFull(t, s, r.tx.ID)
	// Afterwards GC runs normally and the pull's objects are referenced.
	s.Close()
	w, err = txstore.Open(root, txstore.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if st, err := w.GC(); err != nil || st.PullRunning || st.Removed != 0 {
		t.Fatalf("GC after the pull: %+v %v", st, err)
	}
	if left, _ := os.ReadDir(filepath.Join(w.Dir, "staging")); len(left) != 0 {
		t.Fatalf("staging after the pull: %v", left)
	}
}
