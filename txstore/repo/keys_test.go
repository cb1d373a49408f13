package repo

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/sign"
)

// TestKeyRotation: an offline root key certifies an online key with an
// expiry; the online key signs; a revocation and a root rotation reach the
// device through signed statements only, and none can be rolled back.
func TestKeyRotation(t *testing.T) {
	root, online, online2, root2, evil := ptNewKey(t), ptNewKey(t), ptNewKey(t), ptNewKey(t), ptNewKey(t)
	_, dir, txs := ptSource(t, &online, ptTree(t, nil))
	srv := ptNewServer(t, dir)
	s := ptStore(t)
	trustDir := filepath.Join(s.Dir, TrustDirName)
	now := time.Now()
	at := func(d time.Duration) func() time.Time { return func() time.Time { return now.Add(d) } }
	pull := func(o PullOptions) error {
		o.Trusted, o.TrustDir = []sign.PublicKey{root.pub}, trustDir
		if o.Now == nil {
			o.Now = at(0)
		}
		_, _, err := ptPull(t, s, srv.URL, o)
		return err
	}
	certify := func(by ptKey, o CertifyOptions) {
		t.Helper()
		o.Key, o.Now = by.priv, at(0)
		if _, err := Certify(dir, o); err != nil {
			t.Fatal(err)
		}
	}
	// forge writes the next statement signed by any key (Certify itself
	// refuses to build on a statement its key did not sign).
	forge := func(by ptKey, add ptKey) {
		t.Helper()
		data, _ := os.ReadFile(filepath.Join(dir, KeysPath))
		ks, err := ParseKeys(data)
		if err != nil {
			t.Fatal(err)
		}
		ks.Version++
		ks.Keys = append(ks.Keys, CertifiedKey{ID: add.pub.ID, Public: PublicPEM(add.pub.Key), Role: RoleOnline, Expires: now.Add(time.Hour).UTC()})
		if data, err = EncodeKeys(ks); err != nil {
			t.Fatal(err)
		}
		sig, _ := EncodeSig([]sign.Signature{sign.SignKeys(by.priv, data)})
		os.WriteFile(filepath.Join(dir, KeysSigPath), sig, 0o644)
		os.WriteFile(filepath.Join(dir, KeysPath), data, 0o644)
	}
	bump := func(by ptKey, seq uint64) { ptReindex(t, dir, &by, func(ix *Index) { ix.Sequence = seq }) }
	saveKeys := func() (a, b []byte) {
		a, _ = os.ReadFile(filepath.Join(dir, KeysPath))
		b, _ = os.ReadFile(filepath.Join(dir, KeysSigPath))
		return a, b
	}

	// No statement: the online key is not trusted.
	if err := pull(PullOptions{}); !errors.Is(err, sign.ErrUnsigned) {
		t.Fatalf("uncertified online key = %v, want ErrUnsigned", err)
	}
	// The root certifies it for 1 h: the pull works and keeps the tx's
	// signature by the online key.
	certify(root, CertifyOptions{Online: []sign.PublicKey{online.pub}, Expires: time.Hour})
	v1, v1sig := saveKeys()
	if err := pull(PullOptions{}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.List()
	if len(got) != 1 || len(got[0].Signatures) != 1 || got[0].Signatures[0].KeyID != online.pub.ID || got[0].Digest != txs[0].Digest {
		t.Fatalf("pulled %+v", got)
	}
	if _, err := os.Stat(filepath.Join(trustDir, "keys", online.pub.ID+".pem")); err != nil {
		t.Fatalf("certified key not in the trust store: %v", err)
	}
	// Past its expiry the online key signs nothing, and leaves the store.
	bump(online, 2)
	if err := pull(PullOptions{Now: at(2 * time.Hour), Tx: "v1"}); !errors.Is(err, sign.ErrUnsigned) {
		t.Fatalf("expired online key = %v, want ErrUnsigned", err)
	}
	if _, err := os.Stat(filepath.Join(trustDir, "keys", online.pub.ID+".pem")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("expired key still in the trust store: %v", err)
	}

	// An online key cannot certify anything, nor can a stranger.
	for _, by := range []ptKey{online, evil} {
		a, b := saveKeys()
		forge(by, evil)
		if err := pull(PullOptions{}); !errors.Is(err, ErrBadKeys) {
			t.Fatalf("statement signed by %s = %v, want ErrBadKeys", by.pub.ID, err)
		}
		os.WriteFile(filepath.Join(dir, KeysPath), a, 0o644)
		os.WriteFile(filepath.Join(dir, KeysSigPath), b, 0o644)
	}

	// Stolen online key: the thief first pushes the sequence far ahead
	// (fast-forward), then the root revokes it and certifies another; the
	// floor the stolen key set goes with it, so sequence 3 is accepted.
	certify(root, CertifyOptions{Online: []sign.PublicKey{online.pub}, Expires: time.Hour}) // renewed
	bump(online, 1<<40)
	if err := pull(PullOptions{Tx: "v1"}); err != nil {
		t.Fatal(err)
	}
	certify(root, CertifyOptions{Revoke: []string{online.pub.ID}, Online: []sign.PublicKey{online2.pub}})
	bump(online2, 3)
	if err := pull(PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(trustDir, "revoked", online.pub.ID)); err != nil {
		t.Fatalf("revocation not kept: %v", err)
	}
	// The thief signs a newer index; a mirror also replays the statement
	// that certified the stolen key: both refused.
	bump(online, 4)
	if err := pull(PullOptions{}); !errors.Is(err, sign.ErrUnsigned) {
		t.Fatalf("index by the revoked key = %v, want ErrUnsigned", err)
	}
	os.WriteFile(filepath.Join(dir, KeysPath), v1, 0o644)
	os.WriteFile(filepath.Join(dir, KeysSigPath), v1sig, 0o644)
	if err := pull(PullOptions{}); !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), "key statement version 1 is older than version 3") {
		t.Fatalf("old statement = %v, want ErrRollback", err)
	}

	// Root rotation: the old root certifies a new root, the new root
	// revokes the old one; afterwards the old root (still in the device's
	// trust store) signs nothing.
	os.Remove(filepath.Join(dir, KeysPath))
	os.Remove(filepath.Join(dir, KeysSigPath))
	certify(root, CertifyOptions{Online: []sign.PublicKey{online2.pub}})
	certify(root, CertifyOptions{Root: []sign.PublicKey{root2.pub}})
	bump(online2, 5)
	if err := pull(PullOptions{}); !errors.Is(err, ErrRollback) {
		// the statement was rewritten from version 1: older than the floor
		t.Fatalf("rewritten statement history = %v, want ErrRollback", err)
	}
	certify(root, CertifyOptions{Root: []sign.PublicKey{root2.pub}}) // version 3 again, other content
	if err := pull(PullOptions{}); !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), "other content") {
		t.Fatalf("second statement version 3 = %v, want ErrRollback", err)
	}
	certify(root, CertifyOptions{Root: []sign.PublicKey{root2.pub}}) // version 4
	if err := pull(PullOptions{}); err != nil {
		t.Fatal(err)
	}
	certify(root2, CertifyOptions{Revoke: []string{root.pub.ID}}) // version 5, by the new root
	bump(online2, 6)
	if err := pull(PullOptions{}); err != nil {
		t.Fatal(err)
	}
	bump(root, 7)
	if err := pull(PullOptions{}); !errors.Is(err, sign.ErrUnsigned) {
		t.Fatalf("index by the revoked old root = %v, want ErrUnsigned", err)
	}
	forge(root, evil) // version 6, by the revoked root
	bump(online2, 8)
	if err := pull(PullOptions{}); !errors.Is(err, ErrBadKeys) {
		t.Fatalf("statement by the revoked root = %v, want ErrBadKeys", err)
	}
}

// TestCertifyRefusesForeignStatement: certify does not carry the keys of
// a statement its root did not sign (planted in the repository).
func TestCertifyRefusesForeignStatement(t *testing.T) {
	root, evil, online, root2 := ptNewKey(t), ptNewKey(t), ptNewKey(t), ptNewKey(t)
	dir := t.TempDir()
	if _, err := Certify(dir, CertifyOptions{Key: evil.priv, Online: []sign.PublicKey{evil.pub}}); err != nil {
		t.Fatal(err)
	}
	if _, err := Certify(dir, CertifyOptions{Key: root.priv, Online: []sign.PublicKey{online.pub}}); !errors.Is(err, ErrBadKeys) {
		t.Fatalf("certify over a planted statement = %v, want ErrBadKeys", err)
	}
	os.Remove(filepath.Join(dir, KeysPath))
	os.Remove(filepath.Join(dir, KeysSigPath))
	if _, err := Certify(dir, CertifyOptions{Key: root.priv, Root: []sign.PublicKey{root2.pub}}); err != nil {
		t.Fatal(err)
	}
	// The new root it names may take over.
	ks, err := Certify(dir, CertifyOptions{Key: root2.priv, Revoke: []string{root.pub.ID}})
	if err != nil || ks.Version != 2 || len(ks.Revoked) != 1 {
		t.Fatalf("takeover by the named root: %v %+v", err, ks)
	}
}
