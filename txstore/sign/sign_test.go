package sign

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
)

// The fixtures were made with openssl 3 (see testdata/README): keys by
// `openssl genpkey -algorithm ed25519` / `openssl pkey -pubout`, tx.sig by
// `openssl pkeyutl -sign -rawin` over tx.msg.
var fixtureDigest = "sha256:" + strings.Repeat("ab", 32)

func mustPub(t *testing.T, name string) PublicKey {
	t.Helper()
	k, err := LoadPublicKey(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestOpenSSLInterop(t *testing.T) {
	msg, err := os.ReadFile("testdata/tx.msg")
	if err != nil {
		t.Fatal(err)
	}
	if string(msg) != string(txMessage(fixtureDigest)) {
		t.Fatalf("tx message format changed: %q", msg)
	}
	raw, err := os.ReadFile("testdata/tx.sig")
	if err != nil {
		t.Fatal(err)
	}
	vendor, other := mustPub(t, "vendor.pem"), mustPub(t, "other.pem")
	sig := Signature{KeyID: vendor.ID, Sig: raw}
	if k, err := VerifyTx([]PublicKey{other, vendor}, fixtureDigest, []Signature{sig}); err != nil || k.ID != vendor.ID {
		t.Fatalf("openssl's signature: %v", err)
	}
	// Our own signature with openssl's private key verifies the same way.
	priv, err := LoadPrivateKey("testdata/vendor.key")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyTx([]PublicKey{vendor}, fixtureDigest, []Signature{SignTx(priv, fixtureDigest)}); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyFailures(t *testing.T) {
	vendor, other := mustPub(t, "vendor.pem"), mustPub(t, "other.pem")
	priv, err := LoadPrivateKey("testdata/vendor.key")
	if err != nil {
		t.Fatal(err)
	}
	good := SignTx(priv, fixtureDigest)
	flipped := Signature{KeyID: good.KeyID, Sig: append([]byte(nil), good.Sig...)}
	flipped.Sig[10] ^= 1
	idx := []byte(`{"txs":[]}`)
	for _, c := range []struct {
		name string
		keys []PublicKey
		dig  string
		sigs []Signature
		want error
	}{
		{"unsigned", []PublicKey{vendor}, fixtureDigest, nil, ErrUnsigned},
		{"untrusted signer", []PublicKey{other}, fixtureDigest, []Signature{good}, ErrUnsigned},
		{"no trusted keys", nil, fixtureDigest, []Signature{good}, ErrUnsigned},
		{"other digest", []PublicKey{vendor}, "sha256:" + strings.Repeat("cd", 32), []Signature{good}, ErrBadSignature},
		{"flipped bit", []PublicKey{vendor}, fixtureDigest, []Signature{flipped}, ErrBadSignature},
		{"short signature", []PublicKey{vendor}, fixtureDigest, []Signature{{KeyID: vendor.ID, Sig: good.Sig[:10]}}, ErrBadSignature},
		// Domain separation: an index signature is never a tx signature.
		{"index signature as tx", []PublicKey{vendor}, string(idx), []Signature{SignIndex(priv, idx)}, ErrBadSignature},
	} {
		_, err := VerifyTx(c.keys, c.dig, c.sigs)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// One good signature among bad ones is enough.
	if _, err := VerifyTx([]PublicKey{vendor}, fixtureDigest, []Signature{flipped, good}); err != nil {
		t.Errorf("good after bad: %v", err)
	}
	if _, err := VerifyIndex([]PublicKey{vendor}, idx, []Signature{SignIndex(priv, idx)}); err != nil {
		t.Errorf("index: %v", err)
	}
	if _, err := VerifyIndex([]PublicKey{vendor}, append(idx, ' '), []Signature{SignIndex(priv, idx)}); !errors.Is(err, ErrBadSignature) {
		t.Errorf("changed index: %v", err)
	}
}

func TestBadKeyFiles(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"ec.pem":    mustRead(t, "testdata/ec.pem"),
		"priv.pem":  mustRead(t, "testdata/vendor.key"),
		"empty.pem": "",
		"junk.pem":  "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
	}
	for n, data := range files {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPublicKey(p); !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want ErrKey naming the file", n, err)
		}
	}
	if _, err := LoadPrivateKey("testdata/vendor.pem"); !errors.Is(err, ErrKey) {
		t.Errorf("public key as private: %v", err)
	}
	// A bad file in a trust directory is an error, not a skipped key.
	if _, err := LoadTrustDirs(dir); !errors.Is(err, ErrKey) {
		t.Errorf("trust dir with bad files: %v", err)
	}
	if keys, err := LoadTrustDirs(filepath.Join(dir, "missing"), "testdata"); err == nil {
		t.Errorf("testdata holds ec.pem, want an error, got %d keys", len(keys))
	}
	good := t.TempDir()
	for _, n := range []string{"vendor.pem", "other.pem"} {
		os.WriteFile(filepath.Join(good, n), []byte(mustRead(t, "testdata/"+n)), 0o644)
	}
	os.WriteFile(filepath.Join(good, "dup.pem"), []byte(mustRead(t, "testdata/vendor.pem")), 0o644)
	keys, err := LoadTrustDirs(filepath.Join(dir, "missing"), good)
	if err != nil || len(keys) != 2 {
		t.Errorf("trust dir: %d keys, %v; want 2", len(keys), err)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Keys bootctl makes are the files openssl makes.
func TestGenerateKeyOpenSSL(t *testing.T) {
	privPEM, pubPEM, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParsePrivateKey(privPEM); err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		testkit.Skip(t, "openssl not installed (scripts/install-deps.sh installs it)")
	}
	dir := t.TempDir()
	kp := filepath.Join(dir, "k.key")
	os.WriteFile(kp, privPEM, 0o600)
	out, err := exec.Command(openssl, "pkey", "-in", kp, "-pubout").Output()
	if err != nil {
		t.Fatalf("openssl pkey: %v", err)
	}
	got, err := ParsePublicKey(out)
	if err != nil || !got.Equal(pub) {
		t.Fatalf("openssl derived another public key: %v", err)
	}
}
