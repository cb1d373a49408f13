package repo

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

// ptKey is a signing key pair for the tests' repositories.
type ptKey struct {
	priv ed25519.PrivateKey
	pub  sign.PublicKey
}

func ptNewKey(t *testing.T) ptKey {
	t.Helper()
	privPEM, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := sign.ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := sign.ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	return ptKey{priv, sign.PublicKey{Key: pub, ID: sign.KeyID(pub), Source: "test"}}
}

func ptStore(t *testing.T) *txstore.Store {
	t.Helper()
	s, err := txstore.Open(t.TempDir(), txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ptTree writes the sample tree plus extra files (path → content) and a
// compressible file, so that the repository holds both raw and .zst
// objects.
func ptTree(t *testing.T, extra map[string]string) string {
	t.Helper()
	files := append(testtree.Sample(),
		testtree.File{Path: "share/big.txt", Data: strings.Repeat("compressible text line\n", 400), Mode: 0o644})
	for p, d := range extra {
		files = append(files, testtree.File{Path: p, Data: d, Mode: 0o644})
	}
	d := t.TempDir()
	if err := testtree.Write(d, files, time.Unix(1000, 0)); err != nil {
		t.Fatal(err)
	}
	return d
}

// ptPublish writes a format-1 repository for the given txs of src into
// dir, the way repo-format.md says (a test-only publisher: the pull tests
// must be able to build broken repositories too). key may be nil.
func ptPublish(t *testing.T, src *txstore.Store, dir string, key *ptKey, txs ...*txstore.Tx) *Index {
	t.Helper()
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	write := func(rel string, data []byte) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(ConfigPath, []byte(ConfigMarker))
	ix := &Index{Format: FormatVersion, Repository: ptRepoID, Sequence: 1, Updated: time.Now().UTC()}
	ix.Expires = ix.Updated.Add(time.Hour)
	for i, tx := range txs {
		m, err := src.Manifest(tx)
		if err != nil {
			t.Fatal(err)
		}
		dhex := strings.TrimPrefix(tx.Digest, "sha256:")
		mp, _ := ManifestPath(dhex)
		mtext := m.Encode()
		mz := enc.EncodeAll(mtext, nil)
		write(mp, mz)
		seen := map[string]bool{}
		var table []TableEntry
		var stored int64
		for _, e := range m.Entries {
			if e.Type != manifest.File || e.Size == 0 || seen[e.Hash.String()] {
				continue
			}
			seen[e.Hash.String()] = true
			data, err := os.ReadFile(filepath.Join(src.TreeDir(tx.ID), e.Path))
			if err != nil {
				t.Fatal(err)
			}
			te := TableEntry{Hash: e.Hash.String(), Size: e.Size, Stored: e.Size}
			if z := enc.EncodeAll(data, nil); len(data) >= 512 && len(z) <= len(data)-len(data)/8 {
				te.Compressed, te.Stored, data = true, int64(len(z)), z
			}
			op, _ := te.Path()
			write(op, data)
			table = append(table, te)
			stored += te.Stored
		}
		text, err := EncodeTable(table)
		if err != nil {
			t.Fatal(err)
		}
		tp, _ := TablePath(dhex)
		tz := enc.EncodeAll(text, nil)
		write(tp, tz)
		it := IndexTx{Digest: tx.Digest, Version: fmt.Sprintf("v%d", i+1), Kernels: tx.Kernels,
			Created: tx.Created.Add(time.Duration(i) * time.Second).UTC(), Size: tx.Bytes, Entries: tx.Entries, Stored: stored,
			Manifest: NewFileRef(mz, len(mtext)), Table: NewFileRef(tz, len(text))}
		if key != nil {
			it.Signatures = []sign.Signature{sign.SignTx(key.priv, tx.Digest)}
		}
		ix.Txs = append(ix.Txs, it)
	}
	data, err := EncodeIndex(ix)
	if err != nil {
		t.Fatal(err)
	}
	ptWriteIndex(t, dir, data, key)
	return ix
}

// ptRepoID is the repository identity of every test-published repository.
const ptRepoID = "0123456789abcdef0123456789abcdef"

// ptWriteIndex writes index.json (and index.sig over it when key is set).
func ptWriteIndex(t *testing.T, dir string, data []byte, key *ptKey) {
	t.Helper()
	if key != nil {
		sig, err := EncodeSig([]sign.Signature{sign.SignIndex(key.priv, data)})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, SigPath), sig, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, IndexPath), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ptSource commits trees into a fresh store and publishes them.
func ptSource(t *testing.T, key *ptKey, trees ...string) (*txstore.Store, string, []*txstore.Tx) {
	t.Helper()
	src := ptStore(t)
	var txs []*txstore.Tx
	for _, d := range trees {
		tx, _, err := src.Commit(d, txstore.CommitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	dir := t.TempDir()
	ptPublish(t, src, dir, key, txs...)
	return src, dir, txs
}

// server serves a repository directory with fault injection: fault, if it
// returns true, has answered the request itself. It counts 200 answers to
// /objects/.
type ptServer struct {
	*httptest.Server
	mu      sync.Mutex
	fault   func(w http.ResponseWriter, r *http.Request) bool
	objects atomic.Int64
	gets    atomic.Int64
}

func ptNewServer(t *testing.T, dir string) *ptServer {
	t.Helper()
	srv := &ptServer{}
	files := http.FileServer(http.Dir(dir))
	srv.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.gets.Add(1)
		srv.mu.Lock()
		f := srv.fault
		srv.mu.Unlock()
		if f != nil && f(w, r) {
			return
		}
		if strings.HasPrefix(r.URL.Path, "/objects/") {
			if _, err := os.Stat(filepath.Join(dir, r.URL.Path)); err == nil {
				srv.objects.Add(1)
			}
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func (srv *ptServer) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	srv.mu.Lock()
	srv.fault = f
	srv.mu.Unlock()
}

// pull runs Pull with fast retries against srv.
func ptPull(t *testing.T, s *txstore.Store, url string, o PullOptions) (*txstore.Tx, *PullStats, error) {
	t.Helper()
	f, err := NewHTTPFetcher(url, 4)
	if err != nil {
		t.Fatal(err)
	}
	if o.Backoff == 0 {
		o.Backoff, o.MaxBackoff = time.Millisecond, 4*time.Millisecond
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = -1 // deterministic: publish only at the end
	}
	if o.Workers == 0 {
		o.Workers = 4
	}
	return Pull(context.Background(), s, f, url, o)
}

// listing is every name under objects/, trees/ and staging/ and every
// record: what a failed pull must leave exactly as it was.
func ptListing(t *testing.T, s *txstore.Store) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"objects", "trees", "staging"} {
		filepath.WalkDir(filepath.Join(s.Dir, sub), func(p string, d os.DirEntry, err error) error {
			if err == nil {
				rel, _ := filepath.Rel(s.Dir, p)
				out = append(out, rel)
			}
			return nil
		})
	}
	txs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range txs {
		out = append(out, fmt.Sprintf("tx %d %s", x.ID, x.Digest))
	}
	return out
}

func ptVerifyFull(t *testing.T, s *txstore.Store, id uint64) {
	t.Helper()
	probs, err := s.Verify(id, txstore.VerifyFull)
	if err != nil || len(probs) != 0 {
		t.Fatalf("verify tx %d: %v %v", id, probs, err)
	}
}

func TestPull(t *testing.T) {
	key := ptNewKey(t)
	src, dir, txs := ptSource(t, &key, ptTree(t, map[string]string{"lib/remote": "remote only"}))
	srv := ptNewServer(t, dir)
	dst := ptStore(t)
	// Something local first, so that the pulled tx is not tx 1.
	if _, _, err := dst.Commit(ptTree(t, map[string]string{"lib/local": "local"}), txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	tx, st, err := ptPull(t, dst, srv.URL, PullOptions{Trusted: []sign.PublicKey{key.pub}})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != txs[0].Digest || tx.Version != "v1" || tx.Origin != srv.URL || len(tx.Signatures) != 1 {
		t.Fatalf("record %+v", tx)
	}
	if _, err := sign.VerifyTx([]sign.PublicKey{key.pub}, tx.Digest, tx.Signatures); err != nil {
		t.Fatalf("tx signatures: %v", err)
	}
	ptVerifyFull(t, dst, tx.ID)
	ptVerifyFull(t, src, txs[0].ID)
	if st.Verified == "" || !strings.Contains(st.Verified, key.pub.ID) {
		t.Fatalf("verified by %q", st.Verified)
	}
	// The local tx shares most contents: they are present, not fetched.
	if st.Present == 0 || st.Fetched == 0 || st.Fetched+st.Present != st.Objects {
		t.Fatalf("stats %+v", st)
	}
	if int(srv.objects.Load()) != st.Fetched {
		t.Fatalf("%d object GETs, %d fetched", srv.objects.Load(), st.Fetched)
	}
	if def, _ := dst.Default(); def != tx.ID {
		t.Fatalf("default %d, want %d", def, tx.ID)
	}
	// Again: the store has that digest; nothing is fetched or committed.
	before := ptListing(t, dst)
	tx2, st2, err := ptPull(t, dst, srv.URL, PullOptions{Trusted: []sign.PublicKey{key.pub}})
	if err != nil || tx2.ID != tx.ID || st2.Existing != tx.ID {
		t.Fatalf("second pull: %+v %+v %v", tx2, st2, err)
	}
	if after := ptListing(t, dst); !slices.Equal(before, after) {
		t.Fatalf("second pull changed the store")
	}
}

func TestPullSelectsTx(t *testing.T) {
	_, dir, txs := ptSource(t, nil, ptTree(t, nil), ptTree(t, map[string]string{"lib/v2": "2"}), ptTree(t, map[string]string{"lib/v3": "3"}))
	srv := ptNewServer(t, dir)
	cases := []struct {
		want string
		tx   int
		err  error
	}{
		{"", 2, nil},
		{"latest", 2, nil},
		{"v2", 1, nil},
		{txs[0].Digest, 0, nil},
		{"v9", 0, ErrNoTx},
		{"sha256:" + strings.Repeat("0", 64), 0, ErrNoTx},
		{"sha256:../../etc", 0, txstore.ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.want, func(t *testing.T) {
			dst := ptStore(t)
			tx, _, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true, Tx: c.want})
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("got %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tx.Digest != txs[c.tx].Digest {
				t.Fatalf("pulled %s, want %s", tx.Digest, txs[c.tx].Digest)
			}
		})
	}
}

// TestPullUpdateFetchesOnlyNew: an update pulled into a store that has the
// previous tx fetches only the objects the update adds; one whose content
// the store has under another mode is copied locally.
func TestPullUpdateFetchesOnlyNew(t *testing.T) {
	d1 := ptTree(t, nil)
	src := ptStore(t)
	tx1, _, err := src.Commit(d1, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d2 := ptTree(t, map[string]string{"lib/new-1": "new one", "lib/new-2": "new two"})
	// bin/sh's content again, as a 0644 file: same hash, another mode.
	if err := os.WriteFile(filepath.Join(d2, "lib/sh-copy"), []byte("#!shell\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tx2, _, err := src.Commit(d2, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ptPublish(t, src, dir, nil, tx1, tx2)
	srv := ptNewServer(t, dir)
	dst := ptStore(t)
	if _, _, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true, Tx: "v1"}); err != nil {
		t.Fatal(err)
	}
	srv.objects.Store(0)
	tx, st, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != tx2.Digest {
		t.Fatalf("pulled %s", tx.Digest)
	}
	ptVerifyFull(t, dst, tx.ID)
	if st.Fetched != 2 || srv.objects.Load() != 2 || st.Copied != 1 {
		t.Fatalf("fetched %d (%d GETs), copied %d; want 2 fetched, 1 copied: %+v", st.Fetched, srv.objects.Load(), st.Copied, st)
	}
}

// TestPullResumes: objects published before a failure stay; a re-run
// fetches only the rest.
func TestPullResumes(t *testing.T) {
	extra := map[string]string{}
	for i := 0; i < 600; i++ {
		extra[fmt.Sprintf("lib/many/f%03d", i)] = fmt.Sprintf("file %d", i)
	}
	_, dir, txs := ptSource(t, nil, ptTree(t, extra))
	srv := ptNewServer(t, dir)
	var served atomic.Int64
	const cut = 530 // after Import's first batch of 512 objects
	srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/objects/") && served.Add(1) > cut {
			http.Error(w, "gone", http.StatusNotFound)
			return true
		}
		return false
	})
	dst := ptStore(t)
	_, _, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true, Workers: 1})
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("cut-off pull: %v", err)
	}
	if txs2, _ := dst.List(); len(txs2) != 0 {
		t.Fatalf("a failed pull recorded %d txs", len(txs2))
	}
	m, _ := ptStoreManifest(t, dir, txs[0].Digest)
	total := int64(len(needed(m, nil)))
	srv.setFault(nil)
	srv.objects.Store(0)
	tx, st, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	ptVerifyFull(t, dst, tx.ID)
	if got := srv.objects.Load(); got != total-512 || st.Present != 512 {
		t.Fatalf("re-run fetched %d of %d objects (present %d), want %d", got, total, st.Present, total-512)
	}
}

// ptStoreManifest reads a manifest from a test repository.
func ptStoreManifest(t *testing.T, dir, digest string) (*manifest.Manifest, []byte) {
	t.Helper()
	mp, _ := ManifestPath(strings.TrimPrefix(digest, "sha256:"))
	z, err := os.ReadFile(filepath.Join(dir, mp))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := decompress(z, manifest.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return m, raw
}

func TestPullRetriesTransientErrors(t *testing.T) {
	_, dir, txs := ptSource(t, nil, ptTree(t, nil))
	srv := ptNewServer(t, dir)
	var n atomic.Int64
	srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if n.Add(1)%2 == 1 { // every other request fails
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	dst := ptStore(t)
	tx, _, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != txs[0].Digest {
		t.Fatalf("pulled %s", tx.Digest)
	}
	ptVerifyFull(t, dst, tx.ID)
}

// objectPaths lists the repository's object files, raw and compressed.
func ptObjectPaths(t *testing.T, dir string) (raw, zst []string) {
	t.Helper()
	filepath.WalkDir(filepath.Join(dir, "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel := "/" + strings.TrimPrefix(p, dir+"/")
			if strings.HasSuffix(rel, ".zst") {
				zst = append(zst, rel)
			} else {
				raw = append(raw, rel)
			}
		}
		return nil
	})
	if len(raw) == 0 || len(zst) == 0 {
		t.Fatalf("test repository has %d raw and %d compressed objects; want both", len(raw), len(zst))
	}
	return raw, zst
}

// TestPullBadServer: every kind of bad answer ends in a clear error, and
// the store is exactly as before (objects, trees, staging, records).
func TestPullBadServer(t *testing.T) {
	key := ptNewKey(t)
	_, dir, txs := ptSource(t, &key, ptTree(t, nil))
	raws, zsts := ptObjectPaths(t, dir)
	rawObj, zstObj := raws[0], zsts[0]
	digestHex := strings.TrimPrefix(txs[0].Digest, "sha256:")
	mp, _ := ManifestPath(digestHex)
	goodIndex, err := os.ReadFile(filepath.Join(dir, IndexPath))
	if err != nil {
		t.Fatal(err)
	}
	// Another tx's manifest, to serve under this digest.
	other := ptStore(t)
	otx, _, err := other.Commit(ptTree(t, map[string]string{"lib/o": "o"}), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	om, _ := other.Manifest(otx)
	enc, _ := zstd.NewWriter(nil)
	otherManifest := enc.EncodeAll(om.Encode(), nil)

	serve := func(path string, body []byte) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != path {
				return false
			}
			w.Write(body)
			return true
		}
	}
	status := func(path string, code int) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != path {
				return false
			}
			http.Error(w, "no", code)
			return true
		}
	}
	readRepo := func(rel string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	flip := func(b []byte) []byte { c := bytes.Clone(b); c[len(c)/2] ^= 0x55; return c }
	// An index whose tx digest tries to leave the repository, validly signed.
	escIndex := bytes.Replace(goodIndex, []byte(txs[0].Digest), []byte("sha256:../../../../etc/passwd"), 1)
	escSig, _ := EncodeSig([]sign.Signature{sign.SignIndex(key.priv, escIndex)})
	tampered := bytes.Replace(goodIndex, []byte(`"v1"`), []byte(`"v2"`), 1)
	trusted := []sign.PublicKey{key.pub}

	cases := []struct {
		name     string
		fault    func(w http.ResponseWriter, r *http.Request) bool
		insecure bool
		noKeys   bool
		want     error
		msg      string // in the error
	}{
		{name: "wrong bytes raw", fault: serve(rawObj, flip(readRepo(rawObj))), want: ErrContent, msg: "hashes to"},
		{name: "wrong bytes zst", fault: serve(zstObj, flip(readRepo(zstObj))), want: ErrContent},
		{name: "object larger than the manifest says", fault: serve(rawObj, append(readRepo(rawObj), "more"...)), want: ErrContent, msg: "more than"},
		{name: "truncated body", fault: func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != rawObj {
				return false
			}
			b := readRepo(rawObj)
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b[:len(b)/2])
			return true // the server closes a connection with a short body
		}, want: ErrFetch, msg: rawObj},
		{name: "404 object", fault: func(w http.ResponseWriter, r *http.Request) bool {
			if strings.HasPrefix(r.URL.Path, rawObj) {
				http.Error(w, "no", http.StatusNotFound)
				return true
			}
			return false
		}, want: ErrFetch, msg: "HTTP 404"},
		{name: "500 object", fault: status(zstObj, http.StatusInternalServerError), want: ErrFetch, msg: "HTTP 500 Internal Server Error (4 tries)"},
		{name: "503 manifest", fault: status("/"+mp, http.StatusServiceUnavailable), want: ErrFetch, msg: mp},
		{name: "404 index", fault: status("/"+IndexPath, http.StatusNotFound), want: ErrFetch, msg: "/index.json: HTTP 404"},
		{name: "redirect loop", fault: func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != rawObj && r.URL.Path != "/loop" {
				return false
			}
			http.Redirect(w, r, "/loop", http.StatusFound)
			return true
		}, want: ErrRedirects},
		{name: "manifest does not decode", fault: serve("/"+mp, []byte("not zstd at all")), want: ErrContent},
		{name: "manifest of another tx", fault: serve("/"+mp, otherManifest), want: ErrContent, msg: "bytes"},
		{name: "index does not decode", fault: func(w http.ResponseWriter, r *http.Request) bool {
			bad := []byte(`{"format": 1, "txs": [`)
			sig, _ := EncodeSig([]sign.Signature{sign.SignIndex(key.priv, bad)})
			switch r.URL.Path {
			case "/" + IndexPath:
				w.Write(bad)
			case "/" + SigPath:
				w.Write(sig)
			default:
				return false
			}
			return true
		}, want: ErrBadIndex},
		{name: "digest escaping the repository", fault: func(w http.ResponseWriter, r *http.Request) bool {
			switch r.URL.Path {
			case "/" + IndexPath:
				w.Write(escIndex)
			case "/" + SigPath:
				w.Write(escSig)
			default:
				return false
			}
			return true
		}, want: ErrBadHash},
		{name: "signature does not verify", fault: serve("/"+IndexPath, tampered), want: sign.ErrBadSignature},
		{name: "insecure is refused with a trusted key", insecure: true, fault: serve("/"+IndexPath, tampered), want: ErrInsecure},
		{name: "index.sig missing", fault: status("/"+SigPath, http.StatusNotFound), want: ErrUntrusted},
		{name: "index.sig garbage", fault: serve("/"+SigPath, []byte("[{")), want: ErrBadIndex},
		{name: "no trusted key", noKeys: true, want: ErrUntrusted, msg: "--insecure"},
		{name: "not a repository", fault: serve("/"+ConfigPath, []byte("txboot-repo 2\n")), want: ErrNotRepo},
		{name: "config too long", fault: serve("/"+ConfigPath, []byte(strings.Repeat("x", 1000))), want: ErrNotRepo},
		{name: "insecure does not skip content checks", insecure: true, noKeys: true, fault: serve(rawObj, flip(readRepo(rawObj))), want: ErrContent},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := ptNewServer(t, dir)
			srv.setFault(c.fault)
			dst := ptStore(t)
			// A tx already there (sharing no content with the repository's,
			// so the broken object is one the pull needs), so that
			// "unchanged" covers existing objects and records too.
			mine := t.TempDir()
			if err := testtree.Write(mine, []testtree.File{{Path: "mine", Data: "mine only", Mode: 0o644}}, time.Unix(1, 0)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := dst.Commit(mine, txstore.CommitOptions{}); err != nil {
				t.Fatal(err)
			}
			before := ptListing(t, dst)
			o := PullOptions{Trusted: trusted, Insecure: c.insecure}
			if c.noKeys {
				o.Trusted = nil
			}
			tx, _, err := ptPull(t, dst, srv.URL, o)
			if err == nil {
				t.Fatalf("pull succeeded: tx %d", tx.ID)
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %q does not say %q", err, c.msg)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if after := ptListing(t, dst); !slices.Equal(before, after) {
				t.Fatalf("store changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// TestPullSignatureRace: a reader that gets the new index with the old
// signature fetches both again once.
func TestPullSignatureRace(t *testing.T) {
	key := ptNewKey(t)
	_, dir, _ := ptSource(t, &key, ptTree(t, nil))
	srv := ptNewServer(t, dir)
	oldSig := []byte(`[{"key_id": "` + key.pub.ID + `", "sig": "` + strings.Repeat("A", 86) + `=="}]`)
	var sigGets atomic.Int64
	srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/"+SigPath && sigGets.Add(1) == 1 {
			w.Write(oldSig)
			return true
		}
		return false
	})
	dst := ptStore(t)
	if _, _, err := ptPull(t, dst, srv.URL, PullOptions{Trusted: []sign.PublicKey{key.pub}}); err != nil {
		t.Fatal(err)
	}
	if sigGets.Load() != 2 {
		t.Fatalf("index.sig fetched %d times, want 2", sigGets.Load())
	}
}

func TestNeededGroupsKeys(t *testing.T) {
	h := sha256.Sum256([]byte("x"))
	line := func(p, mode string) string {
		return fmt.Sprintf("f %s %s 0 0 1 %s\n", p, mode, hex.EncodeToString(h[:]))
	}
	raw := manifest.Header + "\nd . 0755 0 0\n" + line("a", "0644") + line("b", "0755") + line("c", "0644")
	m, err := manifest.Decode([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	n := needed(m, nil)
	if len(n) != 1 || len(n[0].keys) != 2 || n[0].size != 1 {
		t.Fatalf("needed %+v", n)
	}
}
