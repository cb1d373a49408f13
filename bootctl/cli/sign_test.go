package cli

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

type cliKey struct {
	priv ed25519.PrivateKey
	id   string
	pem  []byte
}

func genKey(t *testing.T) cliKey {
	t.Helper()
	privPEM, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := sign.ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cliKey{priv: priv, id: sign.KeyID(priv.Public().(ed25519.PublicKey)), pem: pubPEM}
}

func writeKey(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// initrdHolds reports whether tx id's initrd carries the key as
// etc/txboot/trusted.d/<id>.pem.
func initrdHolds(t *testing.T, root string, tx int, keyID string) bool {
	t.Helper()
	z, err := os.ReadFile(filepath.Join(root, txstore.DirName, "boot", strconv.Itoa(tx), "initrd.img"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	raw, err := d.DecodeAll(z, nil)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(raw, []byte("etc/txboot/trusted.d/"+keyID+".pem\x00"))
}

// TestInitrdTrust: the initrd bootctl builds carries the tx's own
// usr/lib/txboot/trusted.d keys and the system's etc/txboot/trusted.d
// keys; a key file that is not a key, or a symlink, fails the build and
// names the file.
func TestInitrdTrust(t *testing.T) {
	td := tools(t)
	vendor, site := genKey(t), genKey(t)
	cases := []struct {
		name    string
		treeKey []byte // lib/txboot/trusted.d/vendor.pem in the tx
		siteKey []byte // ROOT/etc/txboot/trusted.d/site.pem
		symlink bool   // the tx's key is a symlink to the site key's path
		want    []string
		err     string
	}{
		{name: "no keys"},
		{name: "the tx's and the system's", treeKey: vendor.pem, siteKey: site.pem, want: []string{vendor.id, site.id}},
		{name: "the system's only", siteKey: site.pem, want: []string{site.id}},
		{name: "a bad key in the system's", treeKey: vendor.pem, siteKey: []byte("garbage"), err: "etc/txboot/trusted.d/site.pem"},
		{name: "a bad key in the tx", treeKey: []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"), err: "lib/txboot/trusted.d/vendor.pem"},
		{name: "a symlink in the tx is not followed", siteKey: site.pem, symlink: true, err: "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, esp := t.TempDir(), t.TempDir()
			if c.siteKey != nil {
				writeKey(t, filepath.Join(root, "etc/txboot/trusted.d/site.pem"), c.siteKey)
			}
			files := []testtree.File{{Path: "lib/modules/6.1.0-test/vmlinuz", Data: "kernel", Mode: 0o644}}
			if c.treeKey != nil {
				files = append(files, testtree.File{Path: "lib/txboot/trusted.d/vendor.pem", Data: string(c.treeKey), Mode: 0o644})
			}
			if c.symlink {
				files = append(files, testtree.File{Path: "lib/txboot/trusted.d/vendor.pem", Link: filepath.Join(root, "etc/txboot/trusted.d/site.pem")})
			}
			code, out, errs := run(t, "--root", root, "commit", tree(t, files...), "--esp", esp, "--root-arg", "PARTUUID=1",
				"--mkinitramfs", filepath.Join(td, "mkinitramfs"), "--initagent", filepath.Join(td, "initagent"))
			if c.err != "" {
				if code == 0 || !strings.Contains(errs, c.err) {
					t.Fatalf("exit %d, want a failure naming %q:\n%s%s", code, c.err, out, errs)
				}
				return
			}
			if code != 0 {
				t.Fatalf("commit: exit %d\n%s%s", code, out, errs)
			}
			for _, id := range []string{vendor.id, site.id} {
				want := strings.Contains(strings.Join(c.want, " "), id)
				if got := initrdHolds(t, root, 1, id); got != want {
					t.Errorf("initrd holds key %s: %v, want %v", id, got, want)
				}
			}
		})
	}
}

// TestStatusSigned: status says per tx whether it is signed, by which key,
// and whether that signature verifies against the keys the system and the
// txs carry.
func TestStatusSigned(t *testing.T) {
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	site, vendor, other := genKey(t), genKey(t), genKey(t)
	root := t.TempDir()
	writeKey(t, filepath.Join(root, "etc/txboot/trusted.d/site.pem"), site.pem)
	for i := 1; i <= 5; i++ {
		extra := []testtree.File{{Path: "lib/v", Data: strings.Repeat("v", i), Mode: 0o644}}
		if i == 3 {
			extra = append(extra, testtree.File{Path: "lib/txboot/trusted.d/vendor.pem", Data: string(vendor.pem), Mode: 0o644})
		}
		mustRun(t, "--root", root, "commit", tree(t, extra...))
	}
	s, err := txstore.Open(root, txstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	signWith := map[uint64]cliKey{2: site, 3: vendor, 4: other, 5: site}
	for id, k := range signWith {
		if _, err := s.Update(id, txstore.Event{}, func(x *txstore.Tx) error {
			sig := sign.SignTx(k.priv, x.Digest)
			if id == 5 {
				sig.Sig[0] ^= 1
			}
			x.Signatures = []sign.Signature{sig}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	efi := t.TempDir()
	if err := os.WriteFile(bootInfoPath, []byte(`{"booted":2,"requested":5,"signed_by":"`+site.id+`","failures":[{"tx":5,"reason":"signature does not verify","kind":"bad-signature"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "--root", root, "status", "--efivars", efi)
	if !strings.Contains(out, "Booted:   tx 2 (fell back from tx 5) (signature checked at boot: key "+site.id+")") ||
		!strings.Contains(out, "tx 5 failed this boot: signature does not verify") {
		t.Errorf("boot info not shown:\n%s", out)
	}
	want := map[string]string{"1": "-", "2": site.id, "3": vendor.id, "4": "untrusted:" + other.id, "5": "BAD:" + site.id}
	lines := strings.Split(out, "\n")
	for id, w := range want {
		found := false
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == id {
				found = true
				if !strings.Contains(l, " "+w+" ") && !strings.HasSuffix(l, " "+w) {
					t.Errorf("tx %s: %q, want signed %q", id, l, w)
				}
			}
		}
		if !found {
			t.Errorf("tx %s not listed:\n%s", id, out)
		}
	}
	if !strings.Contains(out, "SIGNED") {
		t.Errorf("no SIGNED column:\n%s", out)
	}
	var js struct {
		Transactions []struct {
			ID        uint64 `json:"id"`
			Signature string `json:"signature"`
			SignedBy  string `json:"signed_by"`
		} `json:"transactions"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", "status", "--efivars", efi)), &js); err != nil {
		t.Fatal(err)
	}
	wantJS := map[uint64][2]string{1: {"unsigned", ""}, 2: {"valid", site.id}, 3: {"valid", vendor.id}, 4: {"untrusted", other.id}, 5: {"bad", site.id}}
	if len(js.Transactions) != 5 {
		t.Fatalf("json: %+v", js)
	}
	for _, x := range js.Transactions {
		if w := wantJS[x.ID]; x.Signature != w[0] || x.SignedBy != w[1] {
			t.Errorf("json tx %d: %q %q, want %q", x.ID, x.Signature, x.SignedBy, w)
		}
	}
}
