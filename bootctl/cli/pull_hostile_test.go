package cli

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

// hostileKey writes a fresh key pair; it returns the private key and the
// public file.
func hostileKey(t *testing.T, dir, name string) (priv []byte, pubFile string) {
	t.Helper()
	privPEM, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pubFile = filepath.Join(dir, name+".pem")
	if err := os.WriteFile(pubFile, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return privPEM, pubFile
}

// TestPullHostileTx: issue 17's attack through the real verb. A tx that
// ships its own usr/lib/txboot/trusted.d/evil.pem and usr/lib/txboot/
// mkinitramfs, published with an index signed by that evil key, is
// refused by a device that trusts only the vendor's key, and --insecure is
// refused as soon as any key is trusted. Pulled from a vendor-signed index
// (the vendor's build server was fooled), its key is still not trusted:
// status shows it untrusted, and its program never ran.
func TestPullHostileTx(t *testing.T) {
	keys := t.TempDir()
	vendorPriv, vendorPub := hostileKey(t, keys, "vendor")
	evilPriv, evilPub := hostileKey(t, keys, "evil")
	evilPEM, _ := os.ReadFile(evilPub)
	marker := filepath.Join(t.TempDir(), "ran")
	src := t.TempDir()
	mustRun(t, "--root", src, "commit", tree(t,
		testtree.File{Path: "lib/txboot/trusted.d/evil.pem", Data: string(evilPEM), Mode: 0o644},
		testtree.File{Path: "lib/txboot/mkinitramfs", Data: "#!/bin/sh\ntouch " + marker + "\n", Mode: 0o755},
	), "--summary", "evil")
	publishWith := func(dir string, privPEM []byte) string {
		t.Helper()
		priv, err := sign.ParsePrivateKey(privPEM)
		if err != nil {
			t.Fatal(err)
		}
		s, err := txstore.Open(src, txstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := repo.Publish(s, dir, []uint64{1}, repo.PublishOptions{Key: priv, Version: "evil"}); err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	evilURL := publishWith(filepath.Join(t.TempDir(), "evil"), evilPriv)

	dst := t.TempDir()
	etc := filepath.Join(dst, "etc/txboot/trusted.d")
	os.MkdirAll(etc, 0o755)
	vendorData, _ := os.ReadFile(vendorPub)
	os.WriteFile(filepath.Join(etc, "vendor.pem"), vendorData, 0o644)
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"signed by the evil key", []string{"pull", evilURL}, ExitFail, "no signature by a trusted key"},
		{"--trust vendor --insecure", []string{"pull", evilURL, "--trust", vendorPub, "--insecure"}, ExitUsage, "--insecure with --trust"},
		{"--insecure with a key in /etc", []string{"pull", evilURL, "--insecure"}, ExitUsage, "--insecure refused: this system trusts 1 keys"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, errs := run(t, append([]string{"--root", dst}, c.args...)...)
			if code != c.code || !strings.Contains(errs, c.msg) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errs, c.code, c.msg)
			}
		})
	}
	if n := txCount(t, dst); n != 0 {
		t.Fatalf("refused pulls left %d txs", n)
	}

	// The vendor signed it (a fooled build server): it is pulled, but its
	// own key judges nothing and its own mkinitramfs never runs.
	vendorURL := publishWith(filepath.Join(t.TempDir(), "vendor"), vendorPriv)
	mustRun(t, "--root", dst, "pull", vendorURL)
	out := mustRun(t, "--root", dst, "status")
	if !strings.Contains(out, "vendor") && !strings.Contains(out, "evil") {
		t.Fatalf("status:\n%s", out)
	}
	evilKey, _ := sign.LoadPublicKey(evilPub)
	if strings.Contains(out, " "+evilKey.ID+" ") && !strings.Contains(out, "untrusted:"+evilKey.ID) {
		t.Fatalf("status trusts the tx's own key:\n%s", out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the tx's own mkinitramfs ran")
	}
	// A later pull from the evil repository, now that the tx is in the
	// store, is still refused: its key is not in the trust store.
	if code, _, errs := run(t, "--root", dst, "pull", evilURL); code != ExitFail || !strings.Contains(errs, "no signature by a trusted key") {
		t.Fatalf("evil repository after the tx arrived: exit %d %q", code, errs)
	}
}
