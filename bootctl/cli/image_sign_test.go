package cli

import (
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

// getRecord reads tx id's record.
func getRecord(t *testing.T, root string, id uint64) *txstore.Tx {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	x, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// updateRecord changes tx id's record, as a seal or a pull would have.
func updateRecord(t *testing.T, root string, id uint64, fn func(x *txstore.Tx)) {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Update(id, txstore.Event{}, func(x *txstore.Tx) error { fn(x); return nil }); err != nil {
		t.Fatal(err)
	}
}

// imageSignedBy reports whether one of t's image signatures verifies
// with k.
func imageSignedBy(t *txstore.Tx, k cliKey) bool {
	pub, err := sign.ParsePublicKey(k.pem)
	if err != nil {
		return false
	}
	_, err = sign.VerifyImage([]sign.PublicKey{{Key: pub, ID: k.id}}, t.Digest, t.Image, t.ImageSignatures)
	return err == nil
}

// TestSignImage: commit --sign and sign sign the tx's image with its
// digest (sign.SignImage) into the record; a tx without an image is
// signed all the same, saying there was no image.
func TestSignImage(t *testing.T) {
	k := genKey(t)
	keyFile := filepath.Join(t.TempDir(), "k.key")
	writeKey(t, keyFile, k.privPEM)
	root := t.TempDir()

	out := mustRun(t, "--root", root, "commit", tree(t), "--sign", keyFile)
	tx := getRecord(t, root, 1)
	if tx.Image == "" {
		t.Fatalf("commit built no image: %s", tx.SealNote)
	}
	if !strings.Contains(out, "image "+tx.Image+" signed by key "+k.id) || !imageSignedBy(tx, k) {
		t.Fatalf("commit --sign: image signatures %v\n%s", tx.ImageSignatures, out)
	}

	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/two", Data: "2", Mode: 0o644}))
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/three", Data: "3", Mode: 0o644}))
	updateRecord(t, root, 3, func(x *txstore.Tx) { x.Image, x.SealNote = "", "no image: test" })
	cases := []struct {
		id        uint64
		want      []string
		wantImage bool
	}{
		{2, []string{"tx 2 ", " signed by key " + k.id, "  image sha256:", " signed by key " + k.id}, true},
		{3, []string{"tx 3 ", " signed by key " + k.id, "no image to sign: no image: test (bootctl seal 3 builds one"}, false},
		{2, []string{"tx 2 "}, true}, // again: the same key's signature is replaced, not added
	}
	for _, c := range cases {
		out := mustRun(t, "--root", root, "sign", strconv.FormatUint(c.id, 10), "--key", keyFile)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("sign %d: output lacks %q:\n%s", c.id, w, out)
			}
		}
		x := getRecord(t, root, c.id)
		if len(x.Signatures) != 1 {
			t.Errorf("tx %d: signatures %v", c.id, x.Signatures)
		}
		if c.wantImage != (len(x.ImageSignatures) == 1 && imageSignedBy(x, k)) || !c.wantImage && len(x.ImageSignatures) != 0 {
			t.Errorf("tx %d: image signatures %v", c.id, x.ImageSignatures)
		}
	}
	if code, _, errs := run(t, "--root", root, "sign", "9", "--key", keyFile); code == 0 || !strings.Contains(errs, "9") {
		t.Errorf("sign of a missing tx: exit %d %q", code, errs)
	}
	if code, _, errs := run(t, "--root", root, "sign", "1"); code != ExitUsage || !strings.Contains(errs, "--key") {
		t.Errorf("sign without --key: exit %d %q", code, errs)
	}
}

// TestVerifyShowImage: verify and show say whether a tx's image is signed
// by a key of the system's trust store; a trusted key's image signature
// that does not verify is a problem.
func TestVerifyShowImage(t *testing.T) {
	site, other := genKey(t), genKey(t)
	root := t.TempDir()
	writeKey(t, filepath.Join(root, "etc/txboot/trusted.d/site.pem"), site.pem)
	for i := 1; i <= 5; i++ {
		mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/v", Data: strings.Repeat("v", i), Mode: 0o644}))
	}
	imageSig := func(k cliKey, image string) func(x *txstore.Tx) {
		return func(x *txstore.Tx) { x.ImageSignatures = []sign.Signature{sign.SignImage(k.priv, x.Digest, image)} }
	}
	updateRecord(t, root, 1, func(x *txstore.Tx) { imageSig(site, x.Image)(x) })
	updateRecord(t, root, 3, func(x *txstore.Tx) { imageSig(other, x.Image)(x) })
	updateRecord(t, root, 4, imageSig(site, "sha256:"+strings.Repeat("0", 64)))
	updateRecord(t, root, 5, func(x *txstore.Tx) { x.Image, x.SealNote = "", "no image: test" })
	cases := []struct {
		id               uint64
		code             int
		verify, show     string
		jsState, jsSigBy string
	}{
		{1, 0, ", image signed by " + site.id + ")", "(image signed by " + site.id + ")", "valid", site.id},
		{2, 0, ", image not signed)", "(image not signed)", "unsigned", ""},
		{3, 0, ", image signed by untrusted:" + other.id, "(image signed by untrusted:" + other.id, "untrusted", other.id},
		{4, ExitProblems, "signature does not verify", "(image signature by " + site.id + " does not verify)", "bad", site.id},
		{5, 0, "ms)", "image:    none: no image: test", "unsigned", ""},
	}
	for _, c := range cases {
		id := strconv.FormatUint(c.id, 10)
		code, out, errs := run(t, "--root", root, "verify", id)
		if code != c.code || !strings.Contains(out, c.verify) {
			t.Errorf("verify %s: exit %d, want %d and %q:\n%s%s", id, code, c.code, c.verify, out, errs)
		}
		if out := mustRun(t, "--root", root, "show", id); !strings.Contains(out, c.show) {
			t.Errorf("show %s: lacks %q:\n%s", id, c.show, out)
		}
		_, out, _ = run(t, "--root", root, "--json", "verify", id)
		var js []verifyResult
		if err := json.Unmarshal([]byte(out), &js); err != nil || len(js) != 1 {
			t.Fatalf("verify --json: %v\n%s", err, out)
		}
		if js[0].ImageSignature != c.jsState || js[0].ImageSignedBy != c.jsSigBy || (js[0].Image == "") != (c.id == 5) {
			t.Errorf("verify --json %s: %+v", id, js[0])
		}
	}
}

// TestPullImageMismatchCLI: a vendor-signed index naming another image
// than the one the device builds from the signed manifest (a hostile
// builder, or one whose image format differs) is refused, naming the tx
// and both images, and nothing is recorded; the true index pulls, and
// show reports the vendor's image signature.
func TestPullImageMismatchCLI(t *testing.T) {
	keys := t.TempDir()
	vendorPEM, vendorPub := hostileKey(t, keys, "vendor")
	vendor, err := sign.ParsePrivateKey(vendorPEM)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	mustRun(t, "--root", src, "commit", tree(t), "--summary", "one")
	publishTo := func(dir string) (*txstore.Tx, string) {
		t.Helper()
		s, err := txstore.Open(src, txstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := repo.Publish(s, dir, []uint64{1}, repo.PublishOptions{Key: vendor}); err != nil {
			t.Fatal(err)
		}
		tx, err := s.Get(1)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
		t.Cleanup(srv.Close)
		return tx, srv.URL
	}
	bad := filepath.Join(t.TempDir(), "bad")
	tx, badURL := publishTo(bad)
	if tx.Image == "" {
		t.Fatalf("no image: %s", tx.SealNote)
	}
	other := "sha256:" + strings.Repeat("e", 64)
	resignImage(t, bad, vendor, tx.Digest, other)

	dst := t.TempDir()
	vendorData, _ := os.ReadFile(vendorPub)
	writeKey(t, filepath.Join(dst, "etc/txboot/trusted.d/vendor.pem"), vendorData)
	code, _, errs := run(t, "--root", dst, "pull", badURL)
	if code != ExitFail {
		t.Fatalf("pull of another image: exit %d %q", code, errs)
	}
	for _, w := range []string{tx.Digest, other, tx.Image, "differs"} {
		if !strings.Contains(errs, w) {
			t.Errorf("error lacks %q: %q", w, errs)
		}
	}
	if n := txCount(t, dst); n != 0 {
		t.Fatalf("a refused pull left %d txs", n)
	}
	_, goodURL := publishTo(filepath.Join(t.TempDir(), "good"))
	mustRun(t, "--root", dst, "pull", goodURL)
	vk, _ := sign.LoadPublicKey(vendorPub)
	if out := mustRun(t, "--root", dst, "show", "1"); !strings.Contains(out, tx.Image+" (image signed by "+vk.ID+")") {
		t.Fatalf("show after pull:\n%s", out)
	}
}

// resignImage rewrites the repository's index entry for digest to name
// image, with key's image signature, and signs the new index with key.
func resignImage(t *testing.T, dir string, key ed25519.PrivateKey, digest, image string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, repo.IndexPath))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := repo.ParseIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	e := ix.Find(digest)
	e.Image, e.ImageSignatures = image, []sign.Signature{sign.SignImage(key, digest, image)}
	if data, err = repo.EncodeIndex(ix); err != nil {
		t.Fatal(err)
	}
	sig, err := repo.EncodeSig([]sign.Signature{sign.SignIndex(key, data)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, repo.SigPath), sig, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, repo.IndexPath), data, 0o644); err != nil {
		t.Fatal(err)
	}
}
