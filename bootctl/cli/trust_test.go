package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

// signRecords signs tx id's digest with k in its record; forge flips a
// bit of the signature (a record edited by someone without the key).
func signRecords(t *testing.T, root string, sigs map[uint64]cliKey, forge ...uint64) {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	forged := map[uint64]bool{}
	for _, id := range forge {
		forged[id] = true
	}
	for id, k := range sigs {
		if _, err := s.Update(id, txstore.Event{}, func(x *txstore.Tx) error {
			sig := sign.SignTx(k.priv, x.Digest)
			if forged[id] {
				sig.Sig[0] ^= 1
			}
			x.Signatures = []sign.Signature{sig}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVerifySignatures: verify checks each signed tx's signatures against
// the system's trust store. A trusted key's signature that does not verify
// is a problem (exit 3, as for a damaged tree); a tx signed only by keys
// the system does not trust is not, and its line says so.
func TestVerifySignatures(t *testing.T) {
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	bootInfoPath = filepath.Join(t.TempDir(), "no-boot.json")
	site, other := genKey(t), genKey(t)
	root := t.TempDir()
	writeKey(t, filepath.Join(root, "etc/txboot/trusted.d/site.pem"), site.pem)
	for i := 1; i <= 4; i++ {
		mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/v", Data: strings.Repeat("v", i), Mode: 0o644}))
	}
	// 1 unsigned, 2 by site, 3 by site but forged, 4 by an untrusted key.
	signRecords(t, root, map[uint64]cliKey{2: site, 3: site, 4: other}, 3)

	cases := []struct {
		args     []string
		code     int
		want     []string // in stdout
		wantJSON map[uint64]string
	}{
		{args: []string{"verify"}, code: ExitProblems,
			want: []string{"tx 1: ok", "tx 2: ok", "tx 3: 1 problem(s)", "signature does not verify", site.id, "tx 4: ok", "untrusted"}},
		{args: []string{"verify", "3"}, code: ExitProblems, want: []string{"tx 3: 1 problem(s)", "signature does not verify"}},
		{args: []string{"verify", "3", "--full"}, code: ExitProblems, want: []string{"signature does not verify"}},
		{args: []string{"verify", "2"}, code: 0, want: []string{"tx 2: ok", "signed by " + site.id}},
		{args: []string{"verify", "4"}, code: 0, want: []string{"tx 4: ok", "untrusted:" + other.id}},
		{args: []string{"--json", "verify"}, code: ExitProblems,
			wantJSON: map[uint64]string{1: "unsigned", 2: "valid", 3: "bad", 4: "untrusted"}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, out, errs := run(t, append([]string{"--root", root}, c.args...)...)
			if code != c.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, c.code, out, errs)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if c.wantJSON == nil {
				return
			}
			var res []struct {
				ID        uint64            `json:"id"`
				OK        bool              `json:"ok"`
				Signature string            `json:"signature"`
				Problems  []txstore.Problem `json:"problems"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
			for _, r := range res {
				if r.Signature != c.wantJSON[r.ID] || r.OK != (r.Signature != "bad") {
					t.Errorf("tx %d: signature %q ok %v, want %q (%+v)", r.ID, r.Signature, r.OK, c.wantJSON[r.ID], r.Problems)
				}
			}
		})
	}
}

// TestSystemTrust: the booted tx's own vendor keys join the trust store
// only in the running system, once the store records that tx as good; the
// system's keys are there in every case.
func TestSystemTrust(t *testing.T) {
	oldInfo, oldLive, oldCmd := bootInfoPath, liveRoot, procCmdline
	t.Cleanup(func() { bootInfoPath, liveRoot, procCmdline = oldInfo, oldLive, oldCmd })
	procCmdline = filepath.Join(t.TempDir(), "cmdline") // none: boot.json alone says what booted
	site, vendor := genKey(t), genKey(t)
	cases := []struct {
		name       string
		live       bool   // --root is the running system's root
		bootInfo   string // boot.json; "" none
		state      txstore.State
		wantVendor bool
	}{
		{name: "offline --root: no tx booted there", bootInfo: `{"booted":1}`, state: txstore.StateGood},
		{name: "not booted by txboot", live: true, state: txstore.StateGood},
		{name: "booted and good", live: true, bootInfo: `{"booted":1}`, state: txstore.StateGood, wantVendor: true},
		{name: "booted, on trial", live: true, bootInfo: `{"booted":1,"on_trial":true}`, state: txstore.StateTrying},
		{name: "booted, never marked", live: true, bootInfo: `{"booted":1}`, state: txstore.StatePending},
		{name: "booted, bad", live: true, bootInfo: `{"booted":1}`, state: txstore.StateBad},
		{name: "booted tx not in the store", live: true, bootInfo: `{"booted":7}`, state: txstore.StateGood},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			writeKey(t, filepath.Join(root, "etc/txboot/trusted.d/site.pem"), site.pem)
			mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/txboot/trusted.d/vendor.pem", Data: string(vendor.pem), Mode: 0o644}))
			setState(t, root, 1, c.state)
			bootInfoPath, liveRoot = filepath.Join(t.TempDir(), "boot.json"), oldLive
			if c.bootInfo != "" {
				writeKey(t, bootInfoPath, []byte(c.bootInfo))
			}
			if c.live {
				liveRoot = root
			}
			s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var stderr strings.Builder
			e := &env{root: root, stderr: &stderr}
			ts, err := systemTrust(e, s)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{site.id}
			if c.wantVendor {
				want = append(want, vendor.id)
			}
			if got := ts.IDs(); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("trusted %q, want %q", got, want)
			}
			if got := knownKeys(e, s); len(got) != len(want) {
				t.Errorf("status trusts %d keys, want %d", len(got), len(want))
			}
		})
	}
}
