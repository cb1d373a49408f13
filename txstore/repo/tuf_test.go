package repo

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// ptReindex rewrites dir's index.json through edit and signs it with key
// (nil: index.sig is left alone).
func ptReindex(t *testing.T, dir string, key *ptKey, edit func(*Index)) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, IndexPath))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := ParseIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	edit(ix)
	if data, err = EncodeIndex(ix); err != nil {
		t.Fatal(err)
	}
	ptWriteIndex(t, dir, data, key)
	return data
}

// ptSaveIndex returns index.json and index.sig as they are now.
func ptSaveIndex(t *testing.T, dir string) (index, sig []byte) {
	t.Helper()
	index, err := os.ReadFile(filepath.Join(dir, IndexPath))
	if err != nil {
		t.Fatal(err)
	}
	sig, _ = os.ReadFile(filepath.Join(dir, SigPath))
	return index, sig
}

func ptRestoreIndex(t *testing.T, dir string, index, sig []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, SigPath), sig, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, IndexPath), index, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPullRollbackFreeze: TUF's rollback and indefinite-freeze attacks
// against a device, by a mirror that replays validly signed old indexes.
func TestPullRollbackFreeze(t *testing.T) {
	key := ptNewKey(t)
	trusted := []sign.PublicKey{key.pub}
	_, dir, _ := ptSource(t, &key, ptTree(t, nil), ptTree(t, map[string]string{"lib/v2": "2"}), ptTree(t, map[string]string{"lib/v3": "3"}))
	// Sequence 1 lists v1 only; sequence 3 lists v1..v3.
	full, fullSig := ptSaveIndex(t, dir)
	ptReindex(t, dir, &key, func(ix *Index) { ix.Txs = ix.Txs[:1] })
	old, oldSig := ptSaveIndex(t, dir)
	ptRestoreIndex(t, dir, full, fullSig)
	ptReindex(t, dir, &key, func(ix *Index) { ix.Sequence = 3 })
	cur, curSig := ptSaveIndex(t, dir)
	srv := ptNewServer(t, dir)
	s := ptStore(t)

	tx, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: trusted})
	if err != nil || tx.Version != "v3" {
		t.Fatalf("pull v3: %v %+v", err, tx)
	}
	r, err := LoadRemote(s.Dir, ptRepoID)
	if err != nil || r == nil || r.Sequence != 3 || r.Origin != srv.URL || !r.Fresh(time.Now()) {
		t.Fatalf("remote state after pull: %+v %v", r, err)
	}
	before := ptListing(t, s)

	// Rollback: the v1-era index, validly signed, sequence 1 < 3.
	ptRestoreIndex(t, dir, old, oldSig)
	_, _, err = ptPull(t, s, srv.URL, PullOptions{Trusted: trusted, Tx: "v1"})
	if !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), "sequence 1 is older than sequence 3") {
		t.Fatalf("old index = %v, want ErrRollback naming both sequences", err)
	}
	// The same through another mirror URL of the same repository.
	srv2 := ptNewServer(t, dir)
	if _, _, err = ptPull(t, s, srv2.URL, PullOptions{Trusted: trusted}); !errors.Is(err, ErrRollback) {
		t.Fatalf("old index from another mirror = %v, want ErrRollback", err)
	}
	// Two indexes with one sequence number (a misused key): refused.
	ptRestoreIndex(t, dir, cur, curSig)
	ptReindex(t, dir, &key, func(ix *Index) { ix.Txs = ix.Txs[:2] })
	if _, _, err = ptPull(t, s, srv.URL, PullOptions{Trusted: trusted}); !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), "other content") {
		t.Fatalf("forked index = %v, want ErrRollback", err)
	}
	if after := ptListing(t, s); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Fatalf("a refused index changed the store:\n%v\nwant\n%v", after, before)
	}
	if r2, _ := LoadRemote(s.Dir, ptRepoID); r2.Sequence != 3 || r2.IndexSHA256 != r.IndexSHA256 {
		t.Fatalf("a refused index moved the floor: %+v", r2)
	}

	// Freeze: the current index, replayed past its expiry.
	ptRestoreIndex(t, dir, cur, curSig)
	later := func() time.Time { return time.Now().Add(2 * time.Hour) } // ptPublish: valid 1 h
	_, _, err = ptPull(t, s, srv.URL, PullOptions{Trusted: trusted, Now: later})
	if !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), "expired 20") {
		t.Fatalf("expired index = %v, want ErrExpired saying when", err)
	}
	// The same index while valid: nothing new, nothing fetched.
	if _, st, err := ptPull(t, s, srv.URL, PullOptions{Trusted: trusted}); err != nil || st.Existing != tx.ID {
		t.Fatalf("current index again: %v %+v", err, st)
	}
	// A newer sequence moves the floor.
	ptReindex(t, dir, &key, func(ix *Index) { ix.Sequence = 9 })
	if _, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: trusted}); err != nil {
		t.Fatal(err)
	}
	if r3, _ := LoadRemote(s.Dir, ptRepoID); r3.Sequence != 9 {
		t.Fatalf("floor %d, want 9", r3.Sequence)
	}
	// An index of the old format (no sequence or expiry) is refused.
	ptReindex(t, dir, &key, func(ix *Index) {
		ix.Format, ix.Repository, ix.Sequence, ix.Expires = FormatV1, "", 0, time.Time{}
		for i := range ix.Txs {
			ix.Txs[i].Manifest, ix.Txs[i].Table, ix.Txs[i].Delta = nil, nil, nil
		}
	})
	if _, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: trusted}); !errors.Is(err, ErrOldFormat) {
		t.Fatalf("format 1 index = %v, want ErrOldFormat", err)
	}
}

// TestPullDowngrade: a pull does not make an older tx the default unless
// told to; rollback and set-default stay local decisions.
func TestPullDowngrade(t *testing.T) {
	key := ptNewKey(t)
	trusted := []sign.PublicKey{key.pub}
	_, dir, _ := ptSource(t, &key, ptTree(t, nil), ptTree(t, map[string]string{"lib/v2": "2"}))
	srv := ptNewServer(t, dir)
	s := ptStore(t)
	v2, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: trusted})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = ptPull(t, s, srv.URL, PullOptions{Trusted: trusted, Tx: "v1"})
	if !errors.Is(err, ErrDowngrade) || !strings.Contains(err.Error(), "--allow-downgrade") {
		t.Fatalf("pull v1 over v2 = %v, want ErrDowngrade", err)
	}
	if def, _ := s.Default(); def != v2.ID {
		t.Fatalf("default %d, want %d", def, v2.ID)
	}
	// --no-default: stored, not the default.
	v1, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: trusted, Tx: "v1", Commit: txstore.CommitOptions{NoDefault: true}})
	if err != nil {
		t.Fatal(err)
	}
	if def, _ := s.Default(); def != v2.ID {
		t.Fatalf("--no-default changed the default to %d", def)
	}
	// Asked for explicitly: allowed (v1 is in the store already, so a
	// fresh store shows the default moving).
	s2 := ptStore(t)
	if _, _, err := ptPull(t, s2, srv.URL, PullOptions{Trusted: trusted}); err != nil {
		t.Fatal(err)
	}
	old, _, err := ptPull(t, s2, srv.URL, PullOptions{Trusted: trusted, Tx: "v1", AllowDowngrade: true})
	if err != nil || old.Version != "v1" {
		t.Fatalf("--allow-downgrade: %v", err)
	}
	if def, _ := s2.Default(); def != old.ID {
		t.Fatalf("--allow-downgrade: default %d, want %d", def, old.ID)
	}
	_ = v1
}

// TestPullUntrustedSigner: an index signed only by a key the device does
// not trust is refused, even when the index and its txs are otherwise
// perfect (the mutation "accept any signature" must fail a test).
func TestPullUntrustedSigner(t *testing.T) {
	vendor, evil := ptNewKey(t), ptNewKey(t)
	_, dir, _ := ptSource(t, &evil, ptTree(t, nil))
	srv := ptNewServer(t, dir)
	s := ptStore(t)
	_, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: []sign.PublicKey{vendor.pub}})
	if !errors.Is(err, sign.ErrUnsigned) {
		t.Fatalf("index signed by an untrusted key = %v, want ErrUnsigned", err)
	}
	if txs, _ := s.List(); len(txs) != 0 {
		t.Fatalf("%d txs recorded", len(txs))
	}
	if rs, _ := LoadRemotes(s.Dir); len(rs) != 0 {
		t.Fatalf("an unverified index was recorded: %+v", rs[0])
	}
}

// TestPullEndlessData: metadata and objects are read up to what the
// signed index pins and no further, content errors are not retried, and a
// small compressed bomb costs bounded memory.
func TestPullEndlessData(t *testing.T) {
	key := ptNewKey(t)
	trusted := []sign.PublicKey{key.pub}
	_, dir, txs := ptSource(t, &key, ptTree(t, nil))
	dhex := strings.TrimPrefix(txs[0].Digest, "sha256:")
	mp, _ := ManifestPath(dhex)
	tp, _ := TablePath(dhex)
	raws, _ := ptObjectPaths(t, dir)
	// A 1 GiB zstd bomb of ~33 KB.
	var bomb bytes.Buffer
	zw, _ := zstd.NewWriter(&bomb, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	zero := make([]byte, 1<<20)
	for i := 0; i < 1024; i++ {
		zw.Write(zero)
	}
	zw.Close()

	endless := func(path string) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != path {
				return false
			}
			chunk := bytes.Repeat([]byte("x"), 64<<10)
			for i := 0; i < 1<<14; i++ { // 1 GiB unless the client stops
				if _, err := w.Write(chunk); err != nil {
					return true
				}
			}
			return true
		}
	}
	cases := []struct {
		name  string
		path  string
		fault func(w http.ResponseWriter, r *http.Request) bool
		edit  func(*Index) // a key holder pinning what it likes
		msg   string
	}{
		{name: "endless manifest", path: "/" + mp, fault: endless("/" + mp), msg: "larger than"},
		{name: "endless table", path: "/" + tp, fault: endless("/" + tp), msg: "larger than"},
		{name: "endless object", path: raws[0], fault: endless(raws[0]), msg: "more than"},
		{name: "bomb as manifest, pinned", path: "/" + mp, fault: func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/"+mp {
				return false
			}
			w.Write(bomb.Bytes())
			return true
		}, edit: func(ix *Index) {
			size := ix.Txs[0].Manifest.Size
			ix.Txs[0].Manifest = NewFileRef(bomb.Bytes(), int(size))
		}, msg: "more than the pinned"},
		{name: "table swapped", path: "/" + tp, fault: func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/"+tp {
				return false
			}
			enc, _ := zstd.NewWriter(nil)
			w.Write(enc.EncodeAll([]byte{}, nil))
			return true
		}, msg: "the signed index pins"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			index, sig := ptSaveIndex(t, dir)
			defer ptRestoreIndex(t, dir, index, sig)
			if c.edit != nil {
				ptReindex(t, dir, &key, c.edit)
			}
			srv := ptNewServer(t, dir)
			var hits int
			srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path == c.path {
					hits++
				}
				return c.fault(w, r)
			})
			s := ptStore(t)
			before := ptListing(t, s)
			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			_, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: trusted})
			runtime.ReadMemStats(&m1)
			if !errors.Is(err, ErrContent) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("pull = %v, want ErrContent saying %q", err, c.msg)
			}
			if hits != 1 {
				t.Fatalf("%s fetched %d times: content errors are not retried", c.path, hits)
			}
			if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > 64<<20 {
				t.Fatalf("the pull allocated %d MiB", alloc>>20)
			}
			if after := ptListing(t, s); strings.Join(after, "\n") != strings.Join(before, "\n") {
				t.Fatalf("store changed:\n%v", after)
			}
		})
	}
}

// TestPullTxSignatures: the record keeps only tx signatures the device's
// keys verify (a signature by a key the tx or the index brings is data,
// not trust), and a trusted key's signature that does not verify fails.
func TestPullTxSignatures(t *testing.T) {
	vendor, stranger := ptNewKey(t), ptNewKey(t)
	trusted := []sign.PublicKey{vendor.pub}
	_, dir, txs := ptSource(t, &vendor, ptTree(t, nil))
	ptReindex(t, dir, &vendor, func(ix *Index) {
		ix.Txs[0].Signatures = append(ix.Txs[0].Signatures, sign.SignTx(stranger.priv, txs[0].Digest))
	})
	srv := ptNewServer(t, dir)
	s := ptStore(t)
	tx, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: trusted})
	if err != nil {
		t.Fatal(err)
	}
	if len(tx.Signatures) != 1 || tx.Signatures[0].KeyID != vendor.pub.ID {
		t.Fatalf("record signatures %+v: want the vendor's only", tx.Signatures)
	}
	ptReindex(t, dir, &vendor, func(ix *Index) {
		ix.Sequence++
		ix.Txs[0].Signatures = []sign.Signature{sign.SignTx(vendor.priv, "sha256:"+strings.Repeat("0", 64))}
		ix.Txs[0].Signatures[0].KeyID = vendor.pub.ID
	})
	if _, _, err := ptPull(t, ptStore(t), srv.URL, PullOptions{Trusted: trusted}); !errors.Is(err, sign.ErrBadSignature) {
		t.Fatalf("tx signature by the trusted key over another digest = %v, want ErrBadSignature", err)
	}
}
