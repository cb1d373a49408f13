package cli

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
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
	priv    ed25519.PrivateKey
	privPEM []byte
	id      string
	pem     []byte
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
	return cliKey{priv: priv, privPEM: privPEM, id: sign.KeyID(priv.Public().(ed25519.PublicKey)), pem: pubPEM}
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

// trustCase is one system: its keys, and which tx (if any) booted.
type trustCase struct {
	name     string
	treeKey  []byte   // lib/txboot/trusted.d/vendor.pem in tx 1
	siteKey  []byte   // ROOT/etc/txboot/trusted.d/site.pem
	storeKey []byte   // STORE/trust/keys/rotated.pem (accepted through rotation)
	revoke   []string // key IDs with a file in STORE/trust/revoked
	symlink  string   // "tree", "site" or "store": that key file is a symlink to a real key
	booted   string   // "good", "trying" or "bad": tx 1 is the running system's booted tx in that state; "": offline --root
	want     []string // key IDs tx 2's initrd carries
	err      string   // building tx 2's initrd fails naming this
}

// TestInitrdTrust: the initrd of a tx carries the system's trust store
// (ROOT/etc/txboot/trusted.d, STORE/trust/keys, and the vendor keys of the
// booted tx once it is good, less the revoked keys), never the keys a tx
// ships itself: tx 2 ships evil.pem and is signed by that key, and no
// initrd carries it. A key file that is not a key, or a symlink, fails the
// build and names the file.
func TestInitrdTrust(t *testing.T) {
	td := tools(t)
	oldInfo, oldLive := bootInfoPath, liveRoot
	t.Cleanup(func() { bootInfoPath, liveRoot = oldInfo, oldLive })
	vendor, site, rotated, evil := genKey(t), genKey(t), genKey(t), genKey(t)
	garbage := []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
	cases := []trustCase{
		{name: "no keys"},
		{name: "offline: a tx's own keys are never carried", treeKey: vendor.pem, siteKey: site.pem, want: []string{site.id}},
		{name: "a key accepted through rotation", storeKey: rotated.pem, want: []string{rotated.id}},
		{name: "the booted good tx's vendor keys", treeKey: vendor.pem, siteKey: site.pem, booted: "good", want: []string{vendor.id, site.id}},
		{name: "the booted tx on trial: its keys are not trusted yet", treeKey: vendor.pem, booted: "trying"},
		{name: "the booted tx is bad: its keys are not trusted", treeKey: vendor.pem, booted: "bad"},
		{name: "a revoked key is left out of every source", treeKey: vendor.pem, siteKey: site.pem, storeKey: rotated.pem, booted: "good",
			revoke: []string{site.id, rotated.id, vendor.id}},
		{name: "revocation leaves the other keys", siteKey: site.pem, storeKey: rotated.pem, revoke: []string{site.id}, want: []string{rotated.id}},
		{name: "a bad key in the system's", treeKey: vendor.pem, siteKey: []byte("garbage"), err: "etc/txboot/trusted.d/site.pem"},
		{name: "a bad key in the store's", storeKey: garbage, err: "trust/keys/rotated.pem"},
		{name: "a bad key in the booted good tx", treeKey: garbage, booted: "good", err: "lib/txboot/trusted.d/vendor.pem"},
		{name: "a bad key in a tx not booted is never read", treeKey: garbage, siteKey: site.pem, want: []string{site.id}},
		{name: "a symlinked system key is refused", siteKey: site.pem, symlink: "site", err: "not a regular file"},
		{name: "a symlinked store key is refused", storeKey: rotated.pem, symlink: "store", err: "not a regular file"},
		{name: "a symlink in the booted tx is not followed", siteKey: site.pem, treeKey: vendor.pem, symlink: "tree", booted: "good", err: "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, esp := t.TempDir(), t.TempDir()
			bootInfoPath, liveRoot = filepath.Join(t.TempDir(), "no-boot.json"), oldLive
			real := filepath.Join(t.TempDir(), "real.pem") // what a symlink points at: a real key
			writeKey(t, real, site.pem)
			keyFile := func(p string, data []byte, which string) {
				if c.symlink == which {
					if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.Symlink(real, p); err != nil {
						t.Fatal(err)
					}
					return
				}
				writeKey(t, p, data)
			}
			if c.siteKey != nil {
				keyFile(filepath.Join(root, "etc/txboot/trusted.d/site.pem"), c.siteKey, "site")
			}
			files := []testtree.File{{Path: "lib/modules/6.1.0-test/vmlinuz", Data: "kernel", Mode: 0o644}}
			switch {
			case c.symlink == "tree":
				files = append(files, testtree.File{Path: "lib/txboot/trusted.d/vendor.pem", Link: real})
			case c.treeKey != nil:
				files = append(files, testtree.File{Path: "lib/txboot/trusted.d/vendor.pem", Data: string(c.treeKey), Mode: 0o644})
			}
			mustRun(t, "--root", root, "commit", tree(t, files...)) // tx 1; no ESP yet, so no initrd
			store := filepath.Join(root, txstore.DirName)
			if c.storeKey != nil {
				keyFile(filepath.Join(store, "trust/keys/rotated.pem"), c.storeKey, "store")
			}
			for _, id := range c.revoke {
				writeKey(t, filepath.Join(store, "trust/revoked", id), nil)
			}
			if c.booted != "" {
				setState(t, root, 1, txstore.State(c.booted))
				liveRoot = root
				writeKey(t, bootInfoPath, []byte(`{"booted":1,"requested":1}`))
			}
			// tx 2 is hostile: it ships its own key and is signed by it.
			evilKey := filepath.Join(t.TempDir(), "evil.key")
			writeKey(t, evilKey, evil.privPEM)
			hostile := tree(t, testtree.File{Path: "lib/modules/6.1.0-test/vmlinuz", Data: "kernel 2", Mode: 0o644},
				testtree.File{Path: "lib/txboot/trusted.d/evil.pem", Data: string(evil.pem), Mode: 0o644})
			code, out, errs := run(t, "--root", root, "commit", hostile, "--sign", evilKey, "--esp", esp, "--root-arg", "PARTUUID=1",
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
			for _, k := range []cliKey{vendor, site, rotated, evil} {
				want := slices.Contains(c.want, k.id)
				if got := initrdHolds(t, root, 2, k.id); got != want {
					t.Errorf("tx 2's initrd holds key %s: %v, want %v", k.id, got, want)
				}
			}
		})
	}
}

// setState sets tx id's state in the store, as boots and marks do.
func setState(t *testing.T, root string, id uint64, st txstore.State) {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Update(id, txstore.Event{}, func(x *txstore.Tx) error { x.State = st; return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestStatusSigned: status says per tx whether it is signed, by which key,
// and whether that signature verifies against the system's trust store:
// ROOT/etc/txboot/trusted.d and STORE/trust/keys, less STORE/trust/revoked,
// never the keys a tx ships itself (this root is offline, so no tx booted).
func TestStatusSigned(t *testing.T) {
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	site, vendor, other, rotated, old := genKey(t), genKey(t), genKey(t), genKey(t), genKey(t)
	root := t.TempDir()
	writeKey(t, filepath.Join(root, "etc/txboot/trusted.d/site.pem"), site.pem)
	writeKey(t, filepath.Join(root, "etc/txboot/trusted.d/old.pem"), old.pem)
	for i := 1; i <= 7; i++ {
		extra := []testtree.File{{Path: "lib/v", Data: strings.Repeat("v", i), Mode: 0o644}}
		if i == 3 {
			extra = append(extra, testtree.File{Path: "lib/txboot/trusted.d/vendor.pem", Data: string(vendor.pem), Mode: 0o644})
		}
		mustRun(t, "--root", root, "commit", tree(t, extra...))
	}
	writeKey(t, filepath.Join(root, txstore.DirName, "trust/keys", rotated.id+".pem"), rotated.pem)
	writeKey(t, filepath.Join(root, txstore.DirName, "trust/revoked", old.id), nil)
	signRecords(t, root, map[uint64]cliKey{2: site, 3: vendor, 4: other, 5: site, 6: rotated, 7: old}, 5)
	efi := t.TempDir()
	if err := os.WriteFile(bootInfoPath, []byte(`{"booted":2,"requested":5,"signed_by":"`+site.id+`","failures":[{"tx":5,"reason":"signature does not verify","kind":"bad-signature"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "--root", root, "status", "--efivars", efi)
	if !strings.Contains(out, "Booted:   tx 2 (fell back from tx 5) (signature checked at boot: key "+site.id+")") ||
		!strings.Contains(out, "tx 5 failed this boot: signature does not verify") {
		t.Errorf("boot info not shown:\n%s", out)
	}
	want := map[string]string{"1": "-", "2": site.id, "3": "untrusted:" + vendor.id, "4": "untrusted:" + other.id, "5": "BAD:" + site.id,
		"6": rotated.id, "7": "untrusted:" + old.id}
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
	wantJS := map[uint64][2]string{1: {"unsigned", ""}, 2: {"valid", site.id}, 3: {"untrusted", vendor.id}, 4: {"untrusted", other.id}, 5: {"bad", site.id},
		6: {"valid", rotated.id}, 7: {"untrusted", old.id}}
	if len(js.Transactions) != len(wantJS) {
		t.Fatalf("json: %+v", js)
	}
	for _, x := range js.Transactions {
		if w := wantJS[x.ID]; x.Signature != w[0] || x.SignedBy != w[1] {
			t.Errorf("json tx %d: %q %q, want %q", x.ID, x.Signature, x.SignedBy, w)
		}
	}
}
