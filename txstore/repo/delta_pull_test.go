package repo

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
)

// dpSource commits the sample tree, then an update of it (one file
// changed, two added), and publishes both with the real Publish (which
// writes the update's delta).
func dpSource(t *testing.T) (dir string, tx1, tx2 *txstore.Tx) {
	t.Helper()
	src := ptStore(t)
	var err error
	if tx1, _, err = src.Commit(ptTree(t, map[string]string{"lib/changes": "old content"}), txstore.CommitOptions{Summary: "v1"}); err != nil {
		t.Fatal(err)
	}
	if tx2, _, err = src.Commit(ptTree(t, map[string]string{"lib/changes": "new content", "lib/added-1": "one", "lib/added-2": "two"}), txstore.CommitOptions{Summary: "v2"}); err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	st, err := Publish(src, dir, []uint64{tx1.ID, tx2.ID}, PublishOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Txs) != 2 || st.Txs[0].Delta || !st.Txs[1].Delta {
		t.Fatalf("publish: %+v", st.Txs)
	}
	return dir, tx1, tx2
}

// pathLog records every path the server is asked for.
type pathLog struct {
	mu    sync.Mutex
	paths []string
}

func (l *pathLog) attach(srv *ptServer, fault func(w http.ResponseWriter, r *http.Request) bool) {
	srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		l.mu.Lock()
		l.paths = append(l.paths, r.URL.Path)
		l.mu.Unlock()
		return fault != nil && fault(w, r)
	})
}

func (l *pathLog) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, p := range l.paths {
		if strings.HasPrefix(p, prefix) {
			n++
		}
	}
	return n
}

// TestPullUsesDelta: an update pull into a store that has the parent
// fetches the delta, neither the new manifest nor its table, and only the
// new objects; a delta that is missing or does not verify falls back to
// the whole manifest, said once.
func TestPullUsesDelta(t *testing.T) {
	dir, tx1, tx2 := dpSource(t)
	h2 := strings.TrimPrefix(tx2.Digest, "sha256:")
	h1 := strings.TrimPrefix(tx1.Digest, "sha256:")
	deltaPath, _ := DeltaPath(h2, h1)
	good, err := os.ReadFile(filepath.Join(dir, deltaPath))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		fault func(w http.ResponseWriter, r *http.Request) bool
		delta string
	}{
		{"delta", nil, "used"},
		{"delta 404", func(w http.ResponseWriter, r *http.Request) bool {
			if strings.HasPrefix(r.URL.Path, "/deltas/") {
				http.NotFound(w, r)
				return true
			}
			return false
		}, "none"},
		{"delta of another tx", func(w http.ResponseWriter, r *http.Request) bool {
			if strings.HasPrefix(r.URL.Path, "/deltas/") {
				// A delta whose header and result are for other digests.
				w.Write(zstdBytes(t, []byte(DeltaHeader+" "+tx2.Digest+" "+tx1.Digest+"\n=1\n")))
				return true
			}
			return false
		}, "fallback"},
		{"delta not zstd", func(w http.ResponseWriter, r *http.Request) bool {
			if strings.HasPrefix(r.URL.Path, "/deltas/") {
				w.Write(good[:len(good)/2])
				return true
			}
			return false
		}, "fallback"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := ptNewServer(t, dir)
			dst := ptStore(t)
			if _, _, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true, Tx: tx1.Digest}); err != nil {
				t.Fatal(err)
			}
			var log pathLog
			log.attach(srv, c.fault)
			srv.objects.Store(0)
			var warned []string
			tx, st, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true, Warn: func(s string) { warned = append(warned, s) }})
			if err != nil {
				t.Fatal(err)
			}
			if tx.Digest != tx2.Digest || st.Delta != c.delta {
				t.Fatalf("pulled %s, delta %q; want %s, %q", tx.Digest, st.Delta, tx2.Digest, c.delta)
			}
			ptVerifyFull(t, dst, tx.ID)
			// Three new contents: the changed file and the two added ones.
			if st.Fetched != 3 || srv.objects.Load() != 3 {
				t.Fatalf("fetched %d (%d object GETs), want 3: %+v", st.Fetched, srv.objects.Load(), st)
			}
			if st.Present+st.Fetched != st.Objects {
				t.Fatalf("stats %+v", st)
			}
			full := log.count("/manifests/") + log.count("/txs/")
			if c.delta == "used" {
				if full != 0 || log.count("/deltas/") != 1 || len(warned) != 0 {
					t.Fatalf("with a delta: %d manifest/table GETs, %d delta GETs, warned %q", full, log.count("/deltas/"), warned)
				}
			} else if full != 2 || log.count("/deltas/") != 1 {
				t.Fatalf("%s: %d manifest/table GETs, %d delta GETs", c.delta, full, log.count("/deltas/"))
			}
			// A delta that is not published is normal (a repository from
			// before deltas): no warning on every update. One served but
			// unusable is said once.
			switch {
			case c.delta == "none" && len(warned) != 0:
				t.Fatalf("no delta published: warned %q", warned)
			case c.delta == "fallback" && (len(warned) != 1 || !strings.Contains(warned[0], "delta")):
				t.Fatalf("fallback: warned %q", warned)
			}
		})
	}
}

// TestPullDeltaParentObjectMissing: a delta names parent lines whose
// object is not in the store (damage): the pull fails naming the object,
// and nothing is recorded.
func TestPullDeltaParentObjectMissing(t *testing.T) {
	dir, tx1, _ := dpSource(t)
	srv := ptNewServer(t, dir)
	dst := ptStore(t)
	p1, _, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true, Tx: tx1.Digest})
	if err != nil {
		t.Fatal(err)
	}
	m, err := dst.Manifest(p1)
	if err != nil {
		t.Fatal(err)
	}
	var gone cas.Key
	for _, e := range m.Entries {
		if e.Path == "share/big.txt" {
			gone = e.Key()
		}
	}
	// Remove it from the CAS (the parent's tree keeps its own link).
	if err := os.Remove(filepath.Join(dst.Dir, "objects", gone.RelPath())); err != nil {
		t.Fatal(err)
	}
	_, _, err = ptPull(t, dst, srv.URL, PullOptions{Insecure: true})
	if !errors.Is(err, txstore.ErrMissingObject) || !strings.Contains(err.Error(), gone.RelPath()) {
		t.Fatalf("pull: %v, want ErrMissingObject naming %s", err, gone.RelPath())
	}
	if txs, _ := dst.List(); len(txs) != 1 {
		t.Fatalf("%d txs recorded", len(txs))
	}
}

// TestDownloadGCApply: download-only stores objects and the manifest but
// no tx; gc keeps them; apply commits from the store alone; an update
// downloaded against the pending download as parent uses the delta.
func TestDownloadGCApply(t *testing.T) {
	dir, tx1, tx2 := dpSource(t)
	srv := ptNewServer(t, dir)
	dst := ptStore(t)
	f, err := NewFetcher(srv.URL, 4)
	if err != nil {
		t.Fatal(err)
	}
	o := PullOptions{Insecure: true, Tx: tx1.Digest, FlushInterval: -1}
	d, st, err := Download(context.Background(), dst, f, srv.URL, o)
	if err != nil {
		t.Fatal(err)
	}
	if d.Digest != tx1.Digest || d.Version != "v1" || st.Fetched != st.Objects {
		t.Fatalf("download %+v stats %+v", d, st)
	}
	if txs, _ := dst.List(); len(txs) != 0 {
		t.Fatalf("download-only recorded %d txs", len(txs))
	}
	if def, _ := dst.Default(); def != 0 {
		t.Fatalf("download-only set default %d", def)
	}
	if ents, _ := os.ReadDir(filepath.Join(dst.Dir, "trees")); len(ents) != 0 {
		t.Fatalf("download-only placed trees: %v", ents)
	}
	// The update, downloaded too: its parent is the pending download.
	o.Tx = ""
	d2, st2, err := Download(context.Background(), dst, f, srv.URL, o)
	if err != nil {
		t.Fatal(err)
	}
	if d2.Digest != tx2.Digest || st2.Delta != "used" || st2.Fetched != 3 {
		t.Fatalf("second download %+v stats %+v", d2, st2)
	}
	if gc, err := dst.GC(); err != nil || gc.Removed != 0 {
		t.Fatalf("gc with pending downloads: %+v %v", gc, err)
	}
	srv.Close() // apply needs no network
	for _, want := range []string{tx1.Digest, "latest"} {
		dl, err := dst.FindDownload(want)
		if err != nil {
			t.Fatal(err)
		}
		tx, existed, err := dst.ApplyDownload(dl, txstore.CommitOptions{})
		if err != nil || existed {
			t.Fatalf("apply %s: %v", want, err)
		}
		if tx.Origin != srv.URL || tx.Digest != dl.Digest {
			t.Fatalf("applied %+v", tx)
		}
		ptVerifyFull(t, dst, tx.ID)
	}
	if ds, _ := dst.Downloads(); len(ds) != 0 {
		t.Fatalf("downloads left: %v", ds)
	}
}

func zstdBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	return w0().EncodeAll(b, nil)
}
