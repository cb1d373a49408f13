package repo

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// imageA and imageB stand for image digests: publish copies the record's,
// it never builds one.
var (
	imageA = "sha256:" + strings.Repeat("a1", 32)
	imageB = "sha256:" + strings.Repeat("b2", 32)
)

// setImage sets record id's image digest and image signatures, as a seal
// or a pull would have.
func setImage(t *testing.T, root string, id uint64, image string, sigs []sign.Signature) {
	t.Helper()
	s := openStore(t, root, true)
	_, err := s.Update(id, txstore.Event{Kind: "test"}, func(x *txstore.Tx) error {
		x.Image, x.ImageSignatures = image, sigs
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestPublishImage: an entry carries its record's image digest and image
// signatures (with --key's, which also goes into the record); a tx
// without an image gets an entry without one.
func TestPublishImage(t *testing.T) {
	dir := t.TempDir()
	vendor, vendorKeys, _ := newKey(t, dir, "vendor")
	other, otherKeys, _ := newKey(t, dir, "other")
	cases := []struct {
		name      string
		key       bool             // publish with vendor's key
		recordSig bool             // tx 1's record has other's image signature
		wantKeys  []sign.PublicKey // keys whose image signature the entry carries
	}{
		{"unsigned", false, false, nil},
		{"record signature carried", false, true, otherKeys},
		{"signed by --key", true, false, vendorKeys},
		{"both", true, true, append(append([]sign.PublicKey{}, vendorKeys...), otherKeys...)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := newStore(t, 2, txstore.CommitOptions{})
			var sigs []sign.Signature
			if c.recordSig {
				sigs = []sign.Signature{sign.SignImage(other, getTx(t, root, 1).Digest, imageA)}
			}
			setImage(t, root, 1, imageA, sigs)
			setImage(t, root, 2, "", nil)
			o := PublishOptions{}
			if c.key {
				o.Key = vendor
			}
			repo := t.TempDir()
			st := publish(t, root, repo, []uint64{1, 2}, o)
			ix := checkRepo(t, repo, nil)
			e1, e2 := ix.Find(getTx(t, root, 1).Digest), ix.Find(getTx(t, root, 2).Digest)
			if e1.Image != imageA || e2.Image != "" || len(e2.ImageSignatures) != 0 {
				t.Fatalf("entries: image %q, %q %v", e1.Image, e2.Image, e2.ImageSignatures)
			}
			if st.Txs[0].Image != imageA || st.Txs[0].ImageSigned != (len(c.wantKeys) > 0) || st.Txs[1].ImageSigned {
				t.Fatalf("stats %+v", st.Txs)
			}
			if len(e1.ImageSignatures) != len(c.wantKeys) {
				t.Fatalf("image signatures %+v, want %d", e1.ImageSignatures, len(c.wantKeys))
			}
			for _, k := range c.wantKeys {
				if _, err := sign.VerifyImage([]sign.PublicKey{k}, e1.Digest, imageA, e1.ImageSignatures); err != nil {
					t.Fatalf("key %s: %v", k.ID, err)
				}
			}
			if c.key {
				rec := getTx(t, root, 1)
				if _, err := sign.VerifyImage(vendorKeys, rec.Digest, imageA, rec.ImageSignatures); err != nil {
					t.Fatalf("record's image signatures: %v", err)
				}
				if rec2 := getTx(t, root, 2); len(rec2.ImageSignatures) != 0 {
					t.Fatalf("tx 2 without an image got image signatures %v", rec2.ImageSignatures)
				}
			}
		})
	}
}

// TestPublishImageLater: an entry published before its tx had an image
// gains it (and --key's image signature) at the next publish; an entry
// pinning another image than the record is refused, index untouched.
func TestPublishImageLater(t *testing.T) {
	key, keys, _ := newKey(t, t.TempDir(), "vendor")
	root := newStore(t, 1, txstore.CommitOptions{})
	setImage(t, root, 1, "", nil)
	repo := t.TempDir()
	publish(t, root, repo, []uint64{1}, PublishOptions{Key: key})
	if ix := checkRepo(t, repo, keys); ix.Txs[0].Image != "" {
		t.Fatalf("image %q", ix.Txs[0].Image)
	}
	setImage(t, root, 1, imageA, nil)
	st := publish(t, root, repo, []uint64{1}, PublishOptions{Key: key})
	ix := checkRepo(t, repo, keys)
	if ix.Txs[0].Image != imageA || !st.Txs[0].ImageSigned || st.Txs[0].Signed {
		t.Fatalf("entry %+v, stats %+v", ix.Txs[0], st.Txs[0])
	}
	if _, err := sign.VerifyImage(keys, ix.Txs[0].Digest, imageA, ix.Txs[0].ImageSignatures); err != nil {
		t.Fatal(err)
	}

	setImage(t, root, 1, imageB, nil)
	before, _ := os.ReadFile(filepath.Join(repo, IndexPath))
	s := openStore(t, root, true)
	_, err := Publish(s, repo, []uint64{1}, PublishOptions{Key: key})
	s.Close()
	if !errors.Is(err, ErrImageConflict) || !strings.Contains(err.Error(), imageA) || !strings.Contains(err.Error(), imageB) {
		t.Fatalf("publish of another image = %v, want ErrImageConflict naming both", err)
	}
	if after, _ := os.ReadFile(filepath.Join(repo, IndexPath)); !bytes.Equal(before, after) {
		t.Fatal("refused publish changed index.json")
	}
}

func getTx(t *testing.T, root string, id uint64) *txstore.Tx {
	t.Helper()
	s := openStore(t, root, false)
	defer s.Close()
	x, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return x
}
