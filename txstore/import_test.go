package txstore_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/testtree"
)

// storeListing is every name under the store's objects/, trees/ and
// staging/, plus the records: what a failed import must leave unchanged.
func storeListing(t *testing.T, s *txstore.Store) []string {
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
		out = append(out, "tx "+x.Digest)
	}
	return out
}

// sourceManifest commits dir into a scratch store and returns its
// manifest, encoding and a map from content hash to a file of dir with it.
func sourceManifest(t *testing.T, dir string) (*manifest.Manifest, []byte, map[cas.Hash]string, string) {
	t.Helper()
	src, _ := newStore(t)
	tx, _, err := src.Commit(dir, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := src.Manifest(tx)
	if err != nil {
		t.Fatal(err)
	}
	files := map[cas.Hash]string{}
	for _, e := range m.Entries {
		if e.Type == manifest.File && e.Size > 0 {
			files[e.Hash] = filepath.Join(dir, e.Path)
		}
	}
	return m, m.Encode(), files, tx.Digest
}

// keysByHash groups the distinct non-empty keys of m by content.
func keysByHash(m *manifest.Manifest) map[cas.Hash][]cas.Key {
	out := map[cas.Hash][]cas.Key{}
	for _, e := range m.Entries {
		if e.Type != manifest.File || e.Size == 0 {
			continue
		}
		if k := e.Key(); !slices.Contains(out[e.Hash], k) {
			out[e.Hash] = append(out[e.Hash], k)
		}
	}
	return out
}

func copyIntoImport(t *testing.T, im *txstore.Import, src string) string {
	t.Helper()
	f, err := im.TempFile()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if _, err := io.Copy(f, in); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func TestImportCommitManifest(t *testing.T) {
	// The same content under two modes: one key linked, one copied.
	dir := sampleDir(t, testtree.File{Path: "bin/twin-a", Data: "twin content", Mode: 0o644},
		testtree.File{Path: "bin/twin-x", Data: "twin content", Mode: 0o755})
	m, raw, files, digest := sourceManifest(t, dir)
	s, _ := newStore(t)
	im, err := s.NewImport()
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for h, keys := range keysByHash(m) {
		fi, err := os.Stat(files[h])
		if err != nil {
			t.Fatal(err)
		}
		if err := im.AddFile(copyIntoImport(t, im, files[h]), h, fi.Size(), keys); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := im.Commit(m, raw, txstore.CommitOptions{Version: "v1", Origin: "http://example/repo"})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != digest || tx.Version != "v1" || tx.Origin != "http://example/repo" {
		t.Fatalf("record %+v, want digest %s", tx, digest)
	}
	probs, err := s.Verify(tx.ID, txstore.VerifyFull)
	if err != nil || len(probs) != 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
	if def, _ := s.Default(); def != tx.ID {
		t.Fatalf("default %d, want %d", def, tx.ID)
	}
	// A second tx from the same manifest needs nothing new.
	tx2, err := s.CommitManifest(m, raw, txstore.CommitOptions{NoDefault: true})
	if err != nil {
		t.Fatal(err)
	}
	if tx2.Digest != digest || tx2.ID != tx.ID+1 {
		t.Fatalf("second record %+v", tx2)
	}
}

func TestImportPresentCopyLocal(t *testing.T) {
	dir := sampleDir(t, testtree.File{Path: "bin/tool", Data: "tool content", Mode: 0o644})
	s, _ := newStore(t)
	if _, _, err := s.Commit(dir, txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	// The same content wanted under mode 0755: found by hash, copied.
	dir2 := sampleDir(t, testtree.File{Path: "bin/tool", Data: "tool content", Mode: 0o755})
	m, raw, _, digest := sourceManifest(t, dir2)
	im, err := s.NewImport()
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	copied := 0
	for h, keys := range keysByHash(m) {
		var missing []cas.Key
		for _, k := range keys {
			if has, err := im.Has(k); err != nil {
				t.Fatal(err)
			} else if !has {
				missing = append(missing, k)
			}
		}
		if len(missing) == 0 {
			continue
		}
		present, err := im.Present(h)
		if err != nil || len(present) == 0 {
			t.Fatalf("content %s not found under any mode: %v", h, err)
		}
		var size int64
		for _, e := range m.Entries {
			if e.Hash == h {
				size = e.Size
			}
		}
		if err := im.CopyLocal(present[0], size, missing); err != nil {
			t.Fatal(err)
		}
		copied++
	}
	if copied != 1 {
		t.Fatalf("copied %d contents locally, want 1 (bin/tool)", copied)
	}
	tx, err := im.Commit(m, raw, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != digest {
		t.Fatalf("digest %s, want %s", tx.Digest, digest)
	}
	if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
}

func TestCommitManifestRefuses(t *testing.T) {
	m, raw, _, _ := sourceManifest(t, sampleDir(t))
	other, _, _, _ := sourceManifest(t, sampleDir(t, testtree.File{Path: "lib/extra", Data: "x", Mode: 0o644}))
	cases := []struct {
		name string
		m    *manifest.Manifest
		raw  []byte
		o    txstore.CommitOptions
		want error
	}{
		{"objects missing", m, raw, txstore.CommitOptions{}, txstore.ErrMissingObject},
		{"manifest is not raw", other, raw, txstore.CommitOptions{}, txstore.ErrDigest},
		{"consume", m, raw, txstore.CommitOptions{Consume: true}, txstore.ErrInvalid},
		{"empty manifest", &manifest.Manifest{}, nil, txstore.CommitOptions{}, txstore.ErrBadManifest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, _ := newStore(t)
			before := storeListing(t, s)
			_, err := s.CommitManifest(c.m, c.raw, c.o)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if after := storeListing(t, s); !slices.Equal(before, after) {
				t.Fatalf("store changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

func TestImportAddFileChecks(t *testing.T) {
	s, _ := newStore(t)
	im, err := s.NewImport()
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	outside := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(outside, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := cas.Hash{1}
	k := cas.NewKey(h, 0o644, 0, 0)
	if err := im.AddFile(outside, h, 3, []cas.Key{k}); !errors.Is(err, txstore.ErrInvalid) {
		t.Fatalf("file outside the import: got %v", err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Fatalf("a file outside the import was touched: %v", err)
	}
	f, err := im.TempFile()
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("abcd")
	f.Close()
	if err := im.AddFile(f.Name(), h, 3, []cas.Key{k}); err == nil || !strings.Contains(err.Error(), "3 bytes") {
		t.Fatalf("wrong size: got %v", err)
	}
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	if im.Published() != 0 {
		t.Fatalf("published %d objects", im.Published())
	}
}
