package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
)

// memFetcher serves files from memory: the Fetcher a fuzz target needs.
type memFetcher map[string][]byte

func (m memFetcher) URL(path string) string { return "mem:/" + path }

func (m memFetcher) Get(_ context.Context, path string) (io.ReadCloser, error) {
	b, ok := m[path]
	if !ok {
		return nil, &StatusError{URL: m.URL(path), Code: http.StatusNotFound, Status: "404 Not Found"}
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// FuzzPullManifest: whatever a server sends as a manifest, pull accepts it
// only if it decompresses (bounded) to bytes with the digest asked for.
func FuzzPullManifest(f *testing.F) {
	enc, _ := zstd.NewWriter(nil)
	good := []byte(manifest.Header + "\nd . 0755 0 0\n")
	f.Add(enc.EncodeAll(good, nil))
	f.Add([]byte("not zstd"))
	f.Add(enc.EncodeAll(bytes.Repeat([]byte{0}, 1<<20), nil))
	digest := manifest.Digest(good)
	dhex := digest[len("sha256:"):]
	mp, _ := ManifestPath(dhex)
	f.Fuzz(func(t *testing.T, body []byte) {
		p := &puller{f: memFetcher{mp: body}, o: PullOptions{Tries: 1}.withDefaults()}
		// Pinned as served (a signing key's holder can pin anything):
		// only the digest and the pinned size stand between it and pull.
		ref := NewFileRef(body, len(good))
		m, raw, err := p.manifest(context.Background(), dhex, digest, ref, &PullStats{})
		if err != nil {
			return
		}
		if !bytes.Equal(raw, good) || len(m.Entries) != 1 {
			t.Fatalf("accepted a manifest that is not the one with the digest: %q", raw)
		}
	})
}

// FuzzPullObject: whatever a server sends as an object (raw or zstd),
// only the exact content enters the import, and never more than the
// expected bytes are read.
func FuzzPullObject(f *testing.F) {
	content := bytes.Repeat([]byte("object content "), 100)
	enc, _ := zstd.NewWriter(nil)
	f.Add(content, false)
	f.Add(enc.EncodeAll(content, nil), true)
	f.Add(append(bytes.Clone(content), 'x'), false)
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, true)
	h := cas.Hash(sha256.Sum256(content))
	s, err := txstore.Open(f.TempDir(), txstore.Options{Create: true})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	f.Fuzz(func(t *testing.T, body []byte, compressed bool) {
		path, _ := ObjectPath(h.String(), compressed)
		fe := memFetcher{path: body}
		p := &puller{f: fe, o: PullOptions{Tries: 1}.withDefaults()}
		im, err := s.NewImport()
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		w := &objectWorker{p: p, im: im}
		defer w.close()
		n := &need{hash: h, size: int64(len(content)), keys: []cas.Key{cas.NewKey(h, 0o644, uint32(os.Geteuid()), uint32(os.Getegid()))}}
		limit := n.size
		_, err = w.once(context.Background(), path, n, compressed, limit)
		if err != nil {
			if !errors.Is(err, ErrContent) && !errors.Is(err, ErrFetch) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if compressed {
			return // some zstd stream of the content: the hash was checked
		}
		if !bytes.Equal(body, content) {
			t.Fatalf("accepted a raw body that is not the content (%d bytes)", len(body))
		}
		if err := im.Flush(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(s.Objects().Dir, n.keys[0].RelPath()))
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("object in the store: %v", err)
		}
	})
}
