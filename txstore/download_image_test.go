package txstore_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

// imageDownload commits a tree, records its manifest as a download
// pinning image with sigs, and prunes the tx (a newer one stays): what is
// left is a download of a tx whose image the store builds as image0.
func imageDownload(t *testing.T, s *txstore.Store, image string, sigs []sign.Signature) (d *txstore.Download, image0 string) {
	t.Helper()
	tx, _, err := s.Commit(sampleDir(t, testtree.File{Path: "lib/unique", Data: "downloaded", Mode: 0o644}), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Image == "" {
		t.Fatalf("no image: %s", tx.SealNote)
	}
	m, err := s.Manifest(tx)
	if err != nil {
		t.Fatal(err)
	}
	if image == "" {
		image = tx.Image
	}
	d, err = s.StoreDownload(m, m.Encode(), txstore.Download{Version: "v1", Image: image, ImageSignatures: sigs})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Commit(sampleDir(t, testtree.File{Path: "lib/unique", Data: "newer", Mode: 0o644}), txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Prune(1); err != nil || len(res.Removed) != 1 || res.Removed[0] != tx.ID {
		t.Fatalf("prune: %+v %v", res, err)
	}
	return d, tx.Image
}

// TestDownloadImageRecord: the download record keeps the image pin and
// its signatures under the keys image and image_signatures, and
// Downloads reads them back; apply records both.
func TestDownloadImageRecord(t *testing.T) {
	s, _ := newStore(t)
	sigs := []sign.Signature{{KeyID: "k", Sig: []byte("image sig")}}
	d, image := imageDownload(t, s, "", sigs)
	raw, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"image":"` + image + `"`, `"image_signatures":[{`} {
		if !strings.Contains(string(raw), k) {
			t.Errorf("download record %s lacks %s", raw, k)
		}
	}
	got, err := s.FindDownload(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if got.Image != image || !reflect.DeepEqual(got.ImageSignatures, sigs) {
		t.Fatalf("read back image %s signed %+v, stored %s %+v", got.Image, got.ImageSignatures, image, sigs)
	}
	tx, _, err := s.ApplyDownload(got, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Image != image || !reflect.DeepEqual(tx.ImageSignatures, sigs) {
		t.Fatalf("applied image %s signed %+v, want %s %+v", tx.Image, tx.ImageSignatures, image, sigs)
	}
}

// TestApplyDownloadImageMismatch: a download pinning an image other than
// the one built from its manifest is refused at apply, naming both;
// nothing is recorded and the download stays pending.
func TestApplyDownloadImageMismatch(t *testing.T) {
	s, _ := newStore(t)
	other := "sha256:" + strings.Repeat("b2", 32)
	d, image := imageDownload(t, s, other, nil)
	before, _ := s.List()
	_, _, err := s.ApplyDownload(d, txstore.CommitOptions{})
	if !errors.Is(err, txstore.ErrImageMismatch) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), image) {
		t.Fatalf("apply = %v, want ErrImageMismatch naming %s and %s", err, other, image)
	}
	t.Log(err)
	if after, _ := s.List(); len(after) != len(before) {
		t.Fatalf("a refused apply recorded: %d txs, %d before", len(after), len(before))
	}
	if trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees")); len(trees) != len(before) {
		t.Fatalf("a refused apply placed a tree: %v", trees)
	}
	if ds, _ := s.Downloads(); len(ds) != 1 {
		t.Fatalf("%d downloads pending, want 1", len(ds))
	}
}
