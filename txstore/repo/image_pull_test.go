package repo

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// ptSetImage rewrites dir's index entry for digest with image and sigs,
// signing the new index with key (nil: the old index.sig stays, as a
// mirror that edits index.json leaves it).
func ptSetImage(t *testing.T, dir, digest, image string, sigs []sign.Signature, key *ptKey) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, IndexPath))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := ParseIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	e := ix.Find(digest)
	e.Image, e.ImageSignatures = image, sigs
	if data, err = EncodeIndex(ix); err != nil {
		t.Fatal(err)
	}
	ptWriteIndex(t, dir, data, key)
}

// TestPullImage: the index's image pins the image the device builds from
// the manifest (another one refuses the tx, nothing recorded), its image
// signatures reach the record only when a trusted key made them, and an
// entry without an image gets the device's own, unsigned.
func TestPullImage(t *testing.T) {
	key, other := ptNewKey(t), ptNewKey(t)
	_, dir, txs := ptSource(t, &key, ptTree(t, nil))
	d, image := txs[0].Digest, txs[0].Image
	if image == "" {
		t.Fatalf("the source store built no image: %s", txs[0].SealNote)
	}
	cases := []struct {
		name      string
		image     string
		sigs      []sign.Signature
		mirror    bool     // index.json edited, index.sig left as it was
		wantErr   error    // nil: pulled
		wantMsg   []string // in the error
		wantSigns []string // key IDs of the record's image signatures
	}{
		{name: "image signed by the trusted key", image: image, sigs: []sign.Signature{sign.SignImage(key.priv, d, image)}, wantSigns: []string{key.pub.ID}},
		{name: "no image field", image: ""},
		{name: "image, no signature", image: image},
		{name: "signature by an untrusted key dropped", image: image, sigs: []sign.Signature{sign.SignImage(other.priv, d, image)}},
		{name: "untrusted dropped, trusted kept", image: image,
			sigs: []sign.Signature{sign.SignImage(other.priv, d, image), sign.SignImage(key.priv, d, image)}, wantSigns: []string{key.pub.ID}},
		{name: "a tx signature is no image signature", image: image, sigs: []sign.Signature{sign.SignTx(key.priv, d)},
			wantErr: sign.ErrBadSignature},
		{name: "another image, signed", image: imageB, sigs: []sign.Signature{sign.SignImage(key.priv, d, imageB)},
			wantErr: txstore.ErrImageMismatch, wantMsg: []string{d, imageB, image}},
		{name: "another image, unsigned", image: imageB, wantErr: txstore.ErrImageMismatch, wantMsg: []string{d, imageB, image}},
		{name: "a mirror swaps the image", image: imageB, mirror: true, wantErr: sign.ErrBadSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repoDir := t.TempDir()
			if err := os.CopyFS(repoDir, os.DirFS(dir)); err != nil {
				t.Fatal(err)
			}
			signer := &key
			if c.mirror {
				signer = nil
			}
			ptSetImage(t, repoDir, d, c.image, c.sigs, signer)
			srv := ptNewServer(t, repoDir)
			s := ptStore(t)
			tx, _, err := ptPull(t, s, srv.URL, PullOptions{Trusted: []sign.PublicKey{key.pub}})
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("pull = %v, want %v", err, c.wantErr)
				}
				t.Log(err)
				for _, m := range c.wantMsg {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error %q does not name %s", err, m)
					}
				}
				if got, _ := s.List(); len(got) != 0 {
					t.Fatalf("a refused pull recorded %d txs", len(got))
				}
				if trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees")); len(trees) != 0 {
					t.Fatalf("a refused pull placed %v", trees)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tx.Image != image {
				t.Fatalf("recorded image %q, built here from the manifest %q", tx.Image, image)
			}
			var ids []string
			for _, g := range tx.ImageSignatures {
				ids = append(ids, g.KeyID)
			}
			if !slices.Equal(ids, c.wantSigns) {
				t.Fatalf("image signatures by %v, want %v", ids, c.wantSigns)
			}
			if len(c.wantSigns) > 0 {
				if _, err := sign.VerifyImage([]sign.PublicKey{key.pub}, d, image, tx.ImageSignatures); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestPublishPullImage: what publish --key writes, pull takes: the
// device records the same image, with the publisher's image signature.
func TestPublishPullImage(t *testing.T) {
	key := ptNewKey(t)
	src := ptStore(t)
	tx, _, err := src.Commit(ptTree(t, nil), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Image == "" {
		t.Fatalf("no image: %s", tx.SealNote)
	}
	dir := t.TempDir()
	if _, err := Publish(src, dir, []uint64{tx.ID}, PublishOptions{Key: key.priv}); err != nil {
		t.Fatal(err)
	}
	srv := ptNewServer(t, dir)
	got, _, err := ptPull(t, ptStore(t), srv.URL, PullOptions{Trusted: []sign.PublicKey{key.pub}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Image != tx.Image {
		t.Fatalf("pulled image %s, published %s", got.Image, tx.Image)
	}
	if k, err := sign.VerifyImage([]sign.PublicKey{key.pub}, got.Digest, got.Image, got.ImageSignatures); err != nil || k.ID != key.pub.ID {
		t.Fatalf("image signature: %v", err)
	}
}
