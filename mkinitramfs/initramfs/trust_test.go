package initramfs

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/sign"
)

func keyFiles(t *testing.T, dir string) (priv, pub, pub2 string, id, id2 string) {
	t.Helper()
	privPEM, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	_, pub2PEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, pub, pub2 = filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pem"), filepath.Join(dir, "k2.pem")
	writeFile(t, priv, privPEM)
	writeFile(t, pub, pubPEM)
	writeFile(t, pub2, pub2PEM)
	for _, p := range []struct {
		path string
		id   *string
	}{{pub, &id}, {pub2, &id2}} {
		k, err := sign.LoadPublicKey(p.path)
		if err != nil {
			t.Fatal(err)
		}
		*p.id = k.ID
	}
	return
}

// TestTrust: --trust keys land in TrustDir as <key id>.pem, re-encoded
// (so the same key from another file gives the same bytes), once each, in
// an image that does not depend on the order they were given in.
func TestTrust(t *testing.T) {
	o, root := testOptions(t)
	_, pub, pub2, id, id2 := keyFiles(t, root)
	// The same key with a comment before it and CRLF line ends: another
	// file, the same key.
	orig, _ := os.ReadFile(pub)
	dup := filepath.Join(root, "dup.pem")
	writeFile(t, dup, append([]byte("vendor key\r\n"), bytes.ReplaceAll(orig, []byte("\n"), []byte("\r\n"))...))

	o.Trust = []string{pub, pub2, dup}
	img, _ := build(t, o)
	byName := map[string][]byte{}
	var keys []string
	for _, r := range readImage(t, img) {
		if strings.HasPrefix(r.Name, strings.TrimPrefix(TrustDir, "/")+"/") {
			keys = append(keys, r.Name)
			byName[r.Name] = content(t, r)
			if r.Mode&0o777 != 0o644 {
				t.Errorf("%s: mode %o", r.Name, r.Mode)
			}
		}
	}
	dir := strings.TrimPrefix(TrustDir, "/")
	want := []string{dir + "/" + id + ".pem", dir + "/" + id2 + ".pem"}
	if want[0] > want[1] {
		want[0], want[1] = want[1], want[0]
	}
	if strings.Join(keys, " ") != strings.Join(want, " ") {
		t.Fatalf("keys in the image %v, want %v", keys, want)
	}
	if got := byName[dir+"/"+id+".pem"]; !bytes.Equal(got, orig) {
		t.Errorf("key file is %q, want %q", got, orig)
	}
	if k, err := sign.ParsePublicKey(byName[dir+"/"+id2+".pem"]); err != nil || sign.KeyID(k) != id2 {
		t.Errorf("key %s does not parse back: %v", id2, err)
	}

	o2 := o
	o2.Trust = []string{dup, pub2}
	if b, _ := build(t, o2); !bytes.Equal(img, b) {
		t.Error("the same keys in another order (and from other files) give different bytes")
	}
	o3 := o
	o3.Trust = nil
	if b, _ := build(t, o3); bytes.Equal(img, b) {
		t.Error("keys do not change the image")
	}
}

func TestTrustRefused(t *testing.T) {
	o, root := testOptions(t)
	priv, _, _, _, _ := keyFiles(t, root)
	garbage := filepath.Join(root, "garbage.pem")
	writeFile(t, garbage, []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	empty := filepath.Join(root, "empty.pem")
	writeFile(t, empty, nil)
	ec := filepath.Join("..", "..", "txstore", "sign", "testdata", "ec.pem")
	cases := []struct{ name, file, want string }{
		{"private key", priv, "PRIVATE KEY"},
		{"garbage", garbage, "not an ed25519 key"},
		{"empty", empty, "no PEM block"},
		{"missing", filepath.Join(root, "nosuch.pem"), "no such file"},
		{"a directory", root, "not a regular file"},
		{"not ed25519", ec, "not an ed25519 key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := o
			o.Trust = []string{c.file}
			out := filepath.Join(t.TempDir(), "initrd.img")
			_, _, err := Build(out, o)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.file) {
				t.Fatalf("err = %v, want it to name %s and say %q", err, c.file, c.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Fatal("an image was written")
			}
		})
	}
}
