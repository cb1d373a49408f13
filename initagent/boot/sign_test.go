package boot

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/mkinitramfs/initramfs"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

type testKey struct {
	priv ed25519.PrivateKey
	pub  sign.PublicKey
	pem  []byte
}

func newKey(t *testing.T) testKey {
	t.Helper()
	privPEM, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := sign.ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := sign.ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{priv: priv, pub: sign.PublicKey{Key: pub, ID: sign.KeyID(pub), Source: "test"}, pem: pubPEM}
}

// setSigs replaces tx id's record signatures.
func setSigs(t *testing.T, s *txstore.Store, id uint64, sigs ...sign.Signature) {
	t.Helper()
	if _, err := s.Update(id, txstore.Event{}, func(x *txstore.Tx) error { x.Signatures = sigs; return nil }); err != nil {
		t.Fatal(err)
	}
}

func sigOf(t *testing.T, s *txstore.Store, k testKey, id uint64) sign.Signature {
	t.Helper()
	x, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return sign.SignTx(k.priv, x.Digest)
}

// TestChooseSigned: with trusted keys, only a tx whose record carries a
// valid signature of its digest by one of them boots; the others are
// refused with a typed reason, in the same boot, in the usual fallback
// order, without being marked bad or spending a try. Without keys nothing
// changes.
func TestChooseSigned(t *testing.T) {
	vendor, other := newKey(t), newKey(t)
	trusted := Trust{Keys: []sign.PublicKey{vendor.pub}}
	signAll := func(t *testing.T, s *txstore.Store) {
		for id := uint64(1); id <= 3; id++ {
			setSigs(t, s, id, sigOf(t, s, vendor, id))
		}
	}
	withTrust := func(r Request, tr Trust) Request { r.Trust = tr; return r }
	cases := []struct {
		name     string
		prepare  func(t *testing.T, s *txstore.Store)
		req      Request
		want     uint64        // 0: nothing bootable
		kinds    []FailureKind // kinds of the failures, in order
		signedBy string
		reblit   bool
	}{
		{name: "no keys: unsigned boots", req: req(3), want: 3},
		{name: "no keys: a bad signature is not looked at", prepare: func(t *testing.T, s *txstore.Store) {
			setSigs(t, s, 3, sign.Signature{KeyID: vendor.pub.ID, Sig: make([]byte, 64)})
		}, req: req(3), want: 3},
		{name: "signed boots", prepare: signAll, req: withTrust(req(3), trusted), want: 3, signedBy: vendor.pub.ID},
		{name: "one of several signatures is enough", prepare: func(t *testing.T, s *txstore.Store) {
			setSigs(t, s, 3, sigOf(t, s, other, 3), sigOf(t, s, vendor, 3))
		}, req: withTrust(req(3), trusted), want: 3, signedBy: vendor.pub.ID},
		{name: "any of several trusted keys", prepare: func(t *testing.T, s *txstore.Store) {
			setSigs(t, s, 3, sigOf(t, s, other, 3))
		}, req: withTrust(req(3), Trust{Keys: []sign.PublicKey{vendor.pub, other.pub}}), want: 3, signedBy: other.pub.ID},
		{name: "unsigned falls back to signed", prepare: func(t *testing.T, s *txstore.Store) {
			signAll(t, s)
			setSigs(t, s, 3)
		}, req: withTrust(req(3), trusted), want: 2, kinds: []FailureKind{FailUnsigned}, signedBy: vendor.pub.ID},
		{name: "signed by another key falls back", prepare: func(t *testing.T, s *txstore.Store) {
			signAll(t, s)
			setSigs(t, s, 3, sigOf(t, s, other, 3))
		}, req: withTrust(req(3), trusted), want: 2, kinds: []FailureKind{FailUnsigned}, signedBy: vendor.pub.ID},
		{name: "flipped signature falls back", prepare: func(t *testing.T, s *txstore.Store) {
			signAll(t, s)
			sig := sigOf(t, s, vendor, 3)
			sig.Sig[7] ^= 0x01
			setSigs(t, s, 3, sig)
		}, req: withTrust(req(3), trusted), want: 2, kinds: []FailureKind{FailBadSignature}, signedBy: vendor.pub.ID},
		{name: "truncated signature falls back", prepare: func(t *testing.T, s *txstore.Store) {
			signAll(t, s)
			sig := sigOf(t, s, vendor, 3)
			sig.Sig = sig.Sig[:10]
			setSigs(t, s, 3, sig)
		}, req: withTrust(req(3), trusted), want: 2, kinds: []FailureKind{FailBadSignature}, signedBy: vendor.pub.ID},
		// The record of tx 3 edited to name tx 1's (signed) digest while
		// keeping tx 3's signature: the signature no longer verifies.
		{name: "record edited to another digest", prepare: func(t *testing.T, s *txstore.Store) {
			signAll(t, s)
			one, _ := s.Get(1)
			if _, err := s.Update(3, txstore.Event{}, func(x *txstore.Tx) error {
				x.Digest, x.Manifest = one.Digest, one.Manifest
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}, req: withTrust(req(3), trusted), want: 2, kinds: []FailureKind{FailBadSignature}, signedBy: vendor.pub.ID},
		{name: "every candidate refused, in fallback order", prepare: func(t *testing.T, s *txstore.Store) {
			setSigs(t, s, 2, sigOf(t, s, other, 2))
		}, req: withTrust(req(3), trusted), want: 0, kinds: []FailureKind{FailUnsigned, FailUnsigned, FailUnsigned}},
		{name: "force does not override the signature check", prepare: func(t *testing.T, s *txstore.Store) {
			signAll(t, s)
			setSigs(t, s, 3)
		}, req: withTrust(Request{Tx: 3, Force: true, Verify: txstore.VerifyFast, LoaderTriesLeft: -1}, trusted), want: 2, kinds: []FailureKind{FailUnsigned}, signedBy: vendor.pub.ID},
		{name: "broken trust store fails closed", prepare: signAll,
			req: withTrust(req(3), Trust{Err: fmt.Errorf("%w: x.pem: garbage", ErrTrustStore)}), want: 0, kinds: []FailureKind{FailTrustStore}},
		// verify=off would check nothing the signature pins: with keys it
		// is raised to fast, so a replaced tree file is found and re-blitted.
		{name: "verify off is raised to fast", prepare: func(t *testing.T, s *txstore.Store) {
			signAll(t, s)
			p := filepath.Join(s.TreeDir(3), "share", "marker")
			os.Chmod(filepath.Dir(p), 0o755)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("evil"), 0o444); err != nil {
				t.Fatal(err)
			}
		}, req: withTrust(Request{Tx: 3, Verify: txstore.VerifyOff, LoaderTriesLeft: -1}, trusted), want: 3, signedBy: vendor.pub.ID, reblit: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := store3(t, false)
			if c.prepare != nil {
				c.prepare(t, s)
			}
			before, err := s.List()
			if err != nil {
				t.Fatal(err)
			}
			var logs []string
			logf := func(level int, format string, args ...any) {
				logs = append(logs, fmt.Sprintf(format, args...))
			}
			res, err := Choose(s, c.req, &dirAssembler{}, logf)
			if c.want == 0 {
				if !errors.Is(err, ErrNothingBootable) {
					t.Fatalf("want ErrNothingBootable, got %v (booted %+v)", err, res.Tx)
				}
			} else {
				if err != nil {
					t.Fatalf("Choose: %v (failures %+v)", err, res.Failures)
				}
				if res.Tx.ID != c.want {
					t.Fatalf("booted %d, want %d (failures %+v)", res.Tx.ID, c.want, res.Failures)
				}
			}
			var kinds []FailureKind
			for _, f := range res.Failures {
				kinds = append(kinds, f.Kind)
				if f.Kind != "" && !strings.Contains(strings.Join(logs, "\n"), f.Reason) {
					t.Errorf("failure %q not logged:\n%s", f.Reason, strings.Join(logs, "\n"))
				}
			}
			if fmt.Sprint(kinds) != fmt.Sprint(c.kinds) {
				t.Fatalf("failure kinds %v, want %v (failures %+v)", kinds, c.kinds, res.Failures)
			}
			if res.SignedBy != c.signedBy {
				t.Fatalf("signed by %q, want %q", res.SignedBy, c.signedBy)
			}
			if res.Reblitted != c.reblit {
				t.Fatalf("reblitted %v, want %v", res.Reblitted, c.reblit)
			}
			// A refused tx is not broken: not marked bad, no try spent, but
			// the refusal is in the event log.
			for _, b := range before {
				if b.ID == c.want {
					continue
				}
				now, _ := s.Get(b.ID)
				if now.State != b.State || now.TriesLeft != b.TriesLeft {
					t.Errorf("tx %d changed from %s/%d to %s/%d", b.ID, b.State, b.TriesLeft, now.State, now.TriesLeft)
				}
			}
			if len(c.kinds) > 0 && c.kinds[0] != FailTrustStore {
				evs, _ := s.Events(20)
				found := false
				for _, e := range evs {
					if e.Kind == "boot-failed" && e.TxID == res.Failures[0].Tx && e.Detail == res.Failures[0].Reason {
						found = true
					}
				}
				if !found {
					t.Errorf("refusal of tx %d not in the event log: %+v", res.Failures[0].Tx, evs)
				}
			}
		})
	}
}

// TestChooseWithoutDatabaseSigned: the signatures are in store.db's
// records, so with keys carried and no readable database nothing can be
// shown to be signed, and nothing boots — even a correctly pinned tx.
func TestChooseWithoutDatabaseSigned(t *testing.T) {
	vendor := newKey(t)
	s := store3(t, false)
	x, err := s.Get(2)
	if err != nil {
		t.Fatal(err)
	}
	setSigs(t, s, 2, sign.SignTx(vendor.priv, x.Digest))
	if err := testtree.DamageDB(filepath.Join(s.Dir, "store.db"), testtree.DamageGarbage); err != nil {
		t.Fatal(err)
	}
	for _, tr := range []Trust{{Keys: []sign.PublicKey{vendor.pub}}, {Err: ErrTrustStore}} {
		asm := &dirAssembler{}
		r := Request{Tx: 2, Digest: x.Digest, Verify: txstore.VerifyFast, LoaderTriesLeft: -1, Trust: tr}
		res, err := Choose(s, r, asm, noLog)
		if !errors.Is(err, ErrNothingBootable) || res.Tx != nil || asm.tree != "" {
			t.Fatalf("trust %+v: booted %+v, err %v", tr, res.Tx, err)
		}
		if len(res.Failures) != 1 || (res.Failures[0].Kind != FailNoSignatures && res.Failures[0].Kind != FailTrustStore) {
			t.Fatalf("failures %+v", res.Failures)
		}
	}
	// Without keys the pinned tx still boots (nothing changes).
	res, err := Choose(s, Request{Tx: 2, Digest: x.Digest, Verify: txstore.VerifyFast, LoaderTriesLeft: -1}, &dirAssembler{}, noLog)
	if err != nil || res.Tx.ID != 2 {
		t.Fatalf("without keys: %+v %v", res, err)
	}
}

func TestLoadTrust(t *testing.T) {
	a, b := newKey(t), newKey(t)
	cases := []struct {
		name  string
		files map[string][]byte // nil: no directory
		keys  []string
		err   string
	}{
		{name: "no directory: no keys", files: nil},
		{name: "two keys", files: map[string][]byte{a.pub.ID + ".pem": a.pem, b.pub.ID + ".pem": b.pem}, keys: []string{a.pub.ID, b.pub.ID}},
		{name: "a key that does not parse", files: map[string][]byte{a.pub.ID + ".pem": a.pem, "x.pem": []byte("garbage")}, err: "not an ed25519 key"},
		{name: "a private key", files: map[string][]byte{"x.pem": bytes.Replace(a.pem, []byte("PUBLIC"), []byte("PRIVATE"), -1)}, err: "not an ed25519 key"},
		{name: "a file that is not .pem", files: map[string][]byte{a.pub.ID + ".pem": a.pem, "notes.txt": []byte("x")}, err: "not a key file"},
		{name: "an empty directory", files: map[string][]byte{}, err: "holds no key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "trusted.d")
			if c.files != nil {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				for n, d := range c.files {
					if err := os.WriteFile(filepath.Join(dir, n), d, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			tr := LoadTrust(dir)
			if c.err != "" {
				if !errors.Is(tr.Err, ErrTrustStore) || !strings.Contains(tr.Err.Error(), c.err) || !tr.On() {
					t.Fatalf("want a fail-closed %q, got %+v", c.err, tr)
				}
				return
			}
			if tr.Err != nil {
				t.Fatal(tr.Err)
			}
			var got []string
			for _, k := range tr.Keys {
				got = append(got, k.ID)
			}
			want := append([]string(nil), c.keys...)
			if len(want) == 2 && want[0] > want[1] {
				want[0], want[1] = want[1], want[0]
			}
			if fmt.Sprint(got) != fmt.Sprint(want) || tr.On() != (len(want) > 0) {
				t.Fatalf("keys %v (on %v), want %v", got, tr.On(), want)
			}
		})
	}
	if TrustDir != initramfs.TrustDir {
		t.Fatalf("initagent reads %s, mkinitramfs writes %s", TrustDir, initramfs.TrustDir)
	}
}
