package repo

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/sign"
)

// TestKeyStatementConcurrentPull: two pulls race on the key statement. One
// accepts version 3 while the other is still fetching version 2 (from a
// slower mirror); the slower one must be refused as a rollback, not write
// version 2 over version 3 (which could bring back a key 3 revoked).
func TestKeyStatementConcurrentPull(t *testing.T) {
	root, online := ptNewKey(t), ptNewKey(t)
	_, dir, _ := ptSource(t, &online, ptTree(t, nil))
	srv := ptNewServer(t, dir)
	s := ptStore(t)
	trustDir := filepath.Join(s.Dir, TrustDirName)
	now := time.Now()
	o := PullOptions{Trusted: []sign.PublicKey{root.pub}, TrustDir: trustDir, Now: func() time.Time { return now }}
	certify := func() (data, sig []byte) {
		t.Helper()
		if _, err := Certify(dir, CertifyOptions{Key: root.priv, Now: o.Now, Online: []sign.PublicKey{online.pub}, Expires: time.Hour}); err != nil {
			t.Fatal(err)
		}
		data, _ = os.ReadFile(filepath.Join(dir, KeysPath))
		sig, _ = os.ReadFile(filepath.Join(dir, KeysSigPath))
		return data, sig
	}
	certify() // version 1, accepted by a first pull
	if _, _, err := ptPull(t, s, srv.URL, o); err != nil {
		t.Fatal(err)
	}
	v2, v2sig := certify()
	v3, _ := certify()
	os.WriteFile(filepath.Join(dir, KeysPath), v2, 0o644)
	os.WriteFile(filepath.Join(dir, KeysSigPath), v2sig, 0o644)

	// While this pull fetches version 2's signature, the other pull
	// accepts version 3.
	var raced atomic.Bool
	srv.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/"+KeysSigPath && !raced.Swap(true) {
			ks, err := ParseKeys(v3)
			if err != nil {
				t.Error(err)
			} else if err := applyStatement(trustDir, ks, v3, now); err != nil {
				t.Error(err)
			}
		}
		return false
	})
	_, _, err := ptPull(t, s, srv.URL, o)
	if !errors.Is(err, ErrRollback) {
		t.Fatalf("pull of statement version 2 after version 3 was accepted = %v, want ErrRollback", err)
	}
	got, _ := os.ReadFile(filepath.Join(trustDir, statementFile))
	if !bytes.Equal(got, v3) {
		t.Fatalf("the device's statement is no longer version 3:\n%s", got)
	}
}
