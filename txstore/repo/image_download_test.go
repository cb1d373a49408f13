package repo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// TestDownloadApplyImage: pull --download-only keeps the index's image
// pin and its trusted image signatures (an untrusted key's are dropped, as
// by a direct pull) in the download record; apply records them, or
// refuses an image other than the one built here, recording nothing.
func TestDownloadApplyImage(t *testing.T) {
	key, other := ptNewKey(t), ptNewKey(t)
	_, dir, txs := ptSource(t, &key, ptTree(t, nil))
	d, image := txs[0].Digest, txs[0].Image
	if image == "" {
		t.Fatalf("the source store built no image: %s", txs[0].SealNote)
	}
	cases := []struct {
		name      string
		image     string
		wantErr   error
		wantSigns []string
	}{
		{name: "pinned and signed", image: image, wantSigns: []string{key.pub.ID}},
		{name: "another image", image: imageB, wantErr: txstore.ErrImageMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repoDir := t.TempDir()
			if err := os.CopyFS(repoDir, os.DirFS(dir)); err != nil {
				t.Fatal(err)
			}
			sigs := []sign.Signature{sign.SignImage(other.priv, d, c.image), sign.SignImage(key.priv, d, c.image)}
			ptSetImage(t, repoDir, d, c.image, sigs, &key)
			srv := ptNewServer(t, repoDir)
			s := ptStore(t)
			dl := ptDownload(t, s, srv.URL, PullOptions{Trusted: []sign.PublicKey{key.pub}})
			if dl.Image != c.image || !slices.Equal(sigIDs(dl.ImageSignatures), []string{key.pub.ID}) {
				t.Fatalf("download record: image %s signed by %v, want %s by %s", dl.Image, sigIDs(dl.ImageSignatures), c.image, key.pub.ID)
			}
			srv.Close() // apply needs no network
			got, err := s.FindDownload(d)
			if err != nil {
				t.Fatal(err)
			}
			tx, _, err := s.ApplyDownload(got, txstore.CommitOptions{})
			if c.wantErr != nil {
				ptRefusedApply(t, s, err, c.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tx.Image != image || !slices.Equal(sigIDs(tx.ImageSignatures), c.wantSigns) {
				t.Fatalf("applied: image %s signed by %v, want %s by %v", tx.Image, sigIDs(tx.ImageSignatures), image, c.wantSigns)
			}
			if _, err := sign.VerifyImage([]sign.PublicKey{key.pub}, d, image, tx.ImageSignatures); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// ptDownload runs Download with fast retries against url.
func ptDownload(t *testing.T, s *txstore.Store, url string, o PullOptions) *txstore.Download {
	t.Helper()
	f, err := NewHTTPFetcher(url, 4)
	if err != nil {
		t.Fatal(err)
	}
	o.FlushInterval, o.Workers = -1, 4
	d, _, err := Download(context.Background(), s, f, url, o)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// ptRefusedApply checks an apply failed with want and recorded nothing:
// no tx, no tree, the download still pending.
func ptRefusedApply(t *testing.T, s *txstore.Store, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("apply = %v, want %v", err, want)
	}
	t.Log(err)
	if got, _ := s.List(); len(got) != 0 {
		t.Fatalf("a refused apply recorded %d txs", len(got))
	}
	if trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees")); len(trees) != 0 {
		t.Fatalf("a refused apply placed %v", trees)
	}
	if ds, _ := s.Downloads(); len(ds) != 1 {
		t.Fatalf("%d downloads pending after a refused apply, want 1", len(ds))
	}
}

func sigIDs(sigs []sign.Signature) []string {
	var ids []string
	for _, g := range sigs {
		ids = append(ids, g.KeyID)
	}
	return ids
}
