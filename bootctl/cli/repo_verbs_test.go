package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

// keygenFiles runs keygen and loads both halves.
func keygenFiles(t *testing.T, prefix string) ([]sign.PublicKey, string) {
	t.Helper()
	out := mustRun(t, "keygen", "--out", prefix)
	pub, err := sign.LoadPublicKey(prefix + ".pem")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.LoadPrivateKey(prefix + ".key"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, pub.ID) {
		t.Fatalf("keygen output lacks the key id %s:\n%s", pub.ID, out)
	}
	return []sign.PublicKey{pub}, prefix + ".key"
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "vendor")
	keygenFiles(t, prefix)
	fi, err := os.Stat(prefix + ".key")
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v %v", fi.Mode(), err)
	}
	if fi, _ := os.Stat(prefix + ".pem"); fi.Mode().Perm() != 0o644 {
		t.Fatalf("public key mode %v", fi.Mode())
	}
	key, _ := os.ReadFile(prefix + ".key")
	if !strings.HasPrefix(string(key), "-----BEGIN PRIVATE KEY-----") {
		t.Fatalf("not PKCS#8 PEM: %q", key)
	}
	// Never overwrites, whichever half exists.
	pemBefore, _ := os.ReadFile(prefix + ".pem")
	code, _, errs := run(t, "keygen", "--out", prefix)
	if code != ExitFail || !strings.Contains(errs, "exists") {
		t.Fatalf("second keygen: exit %d %q", code, errs)
	}
	if k, _ := os.ReadFile(prefix + ".key"); string(k) != string(key) {
		t.Fatal("private key overwritten")
	}
	other := filepath.Join(dir, "half")
	os.WriteFile(other+".pem", []byte("mine"), 0o644)
	if code, _, errs := run(t, "keygen", "--out", other); code != ExitFail || !strings.Contains(errs, "half.pem") {
		t.Fatalf("keygen over a .pem: exit %d %q", code, errs)
	}
	if _, err := os.Lstat(other + ".key"); err == nil {
		t.Fatal("keygen wrote a .key next to a foreign .pem")
	}
	if p, _ := os.ReadFile(prefix + ".pem"); string(p) != string(pemBefore) {
		t.Fatal("public key overwritten")
	}
	if code, _, _ := run(t, "keygen"); code != ExitUsage {
		t.Fatalf("keygen without --out: exit %d", code)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
}

// TestKeygenOutDir: --out is a path prefix; a directory (existing, or
// named with a trailing "/") would get hidden ".key"/".pem" files, so it
// is a usage error and nothing is written.
func TestKeygenOutDir(t *testing.T) {
	cases := []struct {
		name string
		out  func(dir string) string
	}{
		{"an existing directory", func(dir string) string { return dir }},
		{"an existing directory with a slash", func(dir string) string { return dir + "/" }},
		{"a missing directory with a slash", func(dir string) string { return filepath.Join(dir, "keys") + "/" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			code, out, errs := run(t, "keygen", "--out", c.out(dir))
			if code != ExitUsage || !strings.Contains(errs, "--out") || !strings.Contains(errs, "directory") {
				t.Errorf("exit %d, want %d and a usage error about --out naming a directory:\n%s%s", code, ExitUsage, out, errs)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				t.Errorf("keygen wrote %s", e.Name())
			}
		})
	}
}

func TestCommitSign(t *testing.T) {
	root := t.TempDir()
	keys, keyPath := keygenFiles(t, filepath.Join(t.TempDir(), "k"))
	out := mustRun(t, "--root", root, "commit", tree(t), "--sign", keyPath)
	if !strings.Contains(out, "signed by key "+keys[0].ID) {
		t.Fatalf("commit output:\n%s", out)
	}
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tx, err := s.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.VerifyTx(keys, tx.Digest, tx.Signatures); err != nil {
		t.Fatalf("record signature: %v", err)
	}
	// A bad key fails before anything is committed.
	bad := filepath.Join(t.TempDir(), "bad.key")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	code, _, errs := run(t, "--root", root, "commit", tree(t, testtree.File{Path: "x", Data: "x", Mode: 0o644}), "--sign", bad)
	if code != ExitFail || !strings.Contains(errs, "bad.key") {
		t.Fatalf("commit --sign bad key: exit %d %q", code, errs)
	}
	if txs, _ := s.List(); len(txs) != 1 {
		t.Fatalf("%d txs after a failed signed commit", len(txs))
	}
}

func TestPublishVerb(t *testing.T) {
	root := t.TempDir()
	mustRun(t, "--root", root, "commit", tree(t), "--summary", "first")
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/new", Data: "new", Mode: 0o644}), "--summary", "second")
	keys, keyPath := keygenFiles(t, filepath.Join(t.TempDir(), "k"))
	dir := filepath.Join(t.TempDir(), "repo")

	// Default: the default tx (2), signed.
	out := mustRun(t, "--root", root, "publish", "--repo", dir, "--key", keyPath, "--version", "2.0")
	if !strings.Contains(out, "tx 2 ") || !strings.Contains(out, `"2.0"`) || !strings.Contains(out, "signed") {
		t.Fatalf("publish output:\n%s", out)
	}
	data, err := os.ReadFile(filepath.Join(dir, repo.IndexPath))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := repo.ParseIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	sigData, _ := os.ReadFile(filepath.Join(dir, repo.SigPath))
	sigs, err := repo.ParseSig(sigData)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.VerifyIndex(keys, data, sigs); err != nil {
		t.Fatal(err)
	}
	if len(ix.Txs) != 1 || ix.Txs[0].Version != "2.0" {
		t.Fatalf("index %+v", ix.Txs)
	}
	if _, err := sign.VerifyTx(keys, ix.Txs[0].Digest, ix.Txs[0].Signatures); err != nil {
		t.Fatal(err)
	}

	// --json, an explicit older ID; tx 2 now has its parent in the index.
	out = mustRun(t, "--root", root, "--json", "publish", "--repo", dir, "--key", keyPath, "1")
	var st repo.PublishStats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if len(st.Txs) != 1 || st.Txs[0].ID != 1 || !st.Txs[0].New || st.SkippedObjects == 0 || !st.IndexWritten {
		t.Fatalf("stats %+v", st)
	}
	data, _ = os.ReadFile(filepath.Join(dir, repo.IndexPath))
	ix, _ = repo.ParseIndex(data)
	if len(ix.Txs) != 2 || ix.Txs[1].Parent != ix.Txs[0].Digest {
		t.Fatalf("index %+v", ix.Txs)
	}

	// Without the key the signed index is left alone: every publish
	// writes a new index (sequence, expiry), which needs the key.
	code, _, errs := run(t, "--root", root, "publish", "--repo", dir, "--version", "x", "2")
	if code != ExitFail || !strings.Contains(errs, "signed") {
		t.Fatalf("re-publish without key of a published tx: exit %d %q", code, errs)
	}
	if data2, _ := os.ReadFile(filepath.Join(dir, repo.IndexPath)); string(data2) != string(data) {
		t.Fatal("a refused publish changed index.json")
	}
	// With it, a publish of nothing new refreshes the index.
	out = mustRun(t, "--root", root, "publish", "--repo", dir, "--key", keyPath, "--expires", "30d", "2")
	if !strings.Contains(out, fmt.Sprintf("index sequence %d written and signed, valid until", ix.Sequence+1)) {
		t.Fatalf("refresh: %s", out)
	}
	data, _ = os.ReadFile(filepath.Join(dir, repo.IndexPath))
	if ix2, _ := repo.ParseIndex(data); ix2.Expires.Sub(ix2.Updated) != 30*24*time.Hour || len(ix2.Txs) != 2 {
		t.Fatalf("refreshed index: %+v", ix2)
	}
	for _, bad := range []string{"0", "400d", "soon", "-1h"} {
		if code, _, _ := run(t, "--root", root, "publish", "--repo", dir, "--key", keyPath, "--expires", bad); code != ExitUsage {
			t.Errorf("--expires %s: exit %d, want usage", bad, code)
		}
	}
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/third", Data: "3", Mode: 0o644}))
	code, _, errs = run(t, "--root", root, "publish", "--repo", dir)
	if code != ExitFail || !strings.Contains(errs, "signed") {
		t.Fatalf("unsigned publish into a signed repo: exit %d %q", code, errs)
	}

	// Usage errors.
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"publish"}, ExitUsage, "--repo"},
		{[]string{"publish", "--repo", dir, "abc"}, ExitUsage, "not a transaction id"},
		{[]string{"publish", "--repo", dir, "--version", "v", "1", "2"}, ExitUsage, "one tx"},
		{[]string{"publish", "--repo", dir, "--version", "a\tb", "1"}, ExitUsage, "control character"},
		{[]string{"publish", "--repo", dir, "9"}, ExitNotFound, "no such transaction"},
		{[]string{"publish", "--repo", dir, "--key", filepath.Join(dir, "config")}, ExitFail, "config"},
		{[]string{"publish", "--repo", root}, ExitFail, "not empty"}, // not a repository: refused, nothing written
	} {
		code, _, errs := run(t, append([]string{"--root", root}, c.args...)...)
		if code != c.code || !strings.Contains(errs, c.msg) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%v: exit %d %q, want %d %q", c.args, code, errs, c.code, c.msg)
		}
	}
}
