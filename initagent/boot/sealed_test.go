package boot

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// sealedTx is a good tx whose record names image sum and says sealed.
func sealedTx(id uint64, sum verity.Sum, sealed bool) txstore.Tx {
	t := good(id)
	t.Digest = fmt.Sprintf("sha256:%064d", id)
	t.Image, t.Sealed = sum.String(), sealed
	t.Kernels = []string{"6.12.57+deb13-amd64"}
	return t
}

func sumOf(b byte) verity.Sum {
	var s verity.Sum
	for i := range s {
		s[i] = b
	}
	return s
}

// TestChooseSealed: one row per branch of the sealed boot. The sealed path
// measures the image and mounts it (no Verify call, no tree); everything
// that goes wrong there falls back in the same boot and marks the tx bad;
// a pin the record does not match is the request's fault; a tx not sealed
// yet, or without a trusted image signature, boots from its tree.
func TestChooseSealed(t *testing.T) {
	img, other := sumOf(0xab), sumOf(0xcd)
	key, stranger := newKey(t), newKey(t)
	imgSig := func(k testKey) []sign.Signature {
		return []sign.Signature{sign.SignImage(k.priv, fmt.Sprintf("sha256:%064d", 2), img.String())}
	}
	trusted := Trust{Keys: []sign.PublicKey{key.pub}}
	pinned := func(pin string) Request {
		return Request{Tx: 2, Image: pin, Verify: txstore.VerifyFast, LoaderTriesLeft: -1}
	}
	withTrust := func(r Request) Request { r.Trust = trusted; return r }
	const image2 = "/fake/trees/2/image.erofs"
	cases := []struct {
		name    string
		tx2     txstore.Tx
		setup   func(a *memAssembler)
		req     Request
		want    uint64
		sealed  bool
		cause   error  // tx 2's failure matches it (nil: no failure)
		markBad bool   // tx 2 is marked bad
		reason  string // substring of tx 2's failure, or of UnsealedWhy
		logs    string // substring of the log
	}{
		{name: "sealed ok", tx2: sealedTx(2, img, true), req: pinned(img.String()),
			setup: func(a *memAssembler) { a.sums[image2] = img }, want: 2, sealed: true},
		{name: "sealed, image damaged: fallback", tx2: sealedTx(2, img, true), req: pinned(img.String()),
			setup: func(a *memAssembler) { a.sums[image2] = other }, want: 1, cause: ErrImage, markBad: true,
			reason: "tx 2's image " + image2 + ": fs-verity digest " + other.String() + " does not match the pinned " + img.String() + "; damaged or replaced: `bootctl seal 2` rebuilds it"},
		{name: "sealed, image missing: fallback", tx2: sealedTx(2, img, true), req: pinned(img.String()),
			want: 1, cause: ErrImage, markBad: true, reason: "tx 2's image " + image2 + " is missing; `bootctl seal 2` rebuilds it"},
		{name: "sealed, image without verity: fallback", tx2: sealedTx(2, img, true), req: pinned(img.String()),
			setup: func(a *memAssembler) { a.measureErr[image2] = fmt.Errorf("measure: %w", verity.ErrNotEnabled) },
			want:  1, cause: ErrImage, markBad: true, reason: "has no fs-verity"},
		{name: "sealed, mount fails: fallback", tx2: sealedTx(2, img, true), req: pinned(img.String()),
			setup: func(a *memAssembler) { a.sums[image2] = img; a.mountErr[image2] = true },
			want:  1, cause: unix.EINVAL, markBad: true, reason: "tx 2's sealed /usr cannot be mounted"},
		{name: "sealed, no init: fallback", tx2: sealedTx(2, img, true), req: pinned(img.String()),
			setup: func(a *memAssembler) { a.sums[image2] = img; a.noInit[image2] = true },
			want:  1, cause: ErrNoInit, markBad: true},
		// bootctl pins an image only once its tx is sealed: the pin decides,
		// so a record edited to say "not sealed" cannot turn the check off.
		{name: "pinned, record says not sealed: still sealed", tx2: sealedTx(2, img, false), req: pinned(img.String()),
			setup: func(a *memAssembler) { a.sums[image2] = img }, want: 2, sealed: true},
		{name: "pinned, record not sealed, image without verity: fallback", tx2: sealedTx(2, img, false), req: pinned(img.String()),
			setup: func(a *memAssembler) { a.measureErr[image2] = fmt.Errorf("measure: %w", verity.ErrNotEnabled) },
			want:  1, cause: ErrImage, markBad: true, reason: "has no fs-verity"},
		{name: "not sealed yet, no pin: unsealed", tx2: sealedTx(2, img, false), req: pinned(""),
			want: 2, reason: "not sealed yet", logs: "tx 2 boots unsealed (not sealed yet (bootctl seal)): verifying its tree (fast)"},
		{name: "not sealed, with a note", tx2: func() txstore.Tx { x := sealedTx(2, img, false); x.SealNote = "no fs-verity here"; return x }(),
			req: pinned(""), want: 2, reason: "not sealed yet: no fs-verity here"},
		{name: "no pin: unsealed", tx2: sealedTx(2, img, true), req: pinned(""), want: 2,
			reason: "the boot entry pins no image (txboot.image=)"},
		{name: "pin mismatch is the request's", tx2: sealedTx(2, img, true), req: pinned(other.String()),
			want: 1, cause: ErrDigestPin, reason: "image mismatch: the boot entry pins image " + other.String()},
		{name: "pin but no image recorded", tx2: good(2), req: pinned(img.String()),
			want: 1, cause: ErrDigestPin, reason: "the store records none for tx 2"},
		{name: "malformed pin", tx2: sealedTx(2, img, true), req: Request{Tx: 2, ImageInvalid: true, Verify: txstore.VerifyFast, LoaderTriesLeft: -1},
			want: 1, cause: ErrDigestPin, reason: "txboot.image= on the command line is malformed"},
		{name: "trust without image signature: unsealed", tx2: sealedTx(2, img, true), req: withTrust(pinned(img.String())),
			setup: func(a *memAssembler) { a.sums[image2] = img }, want: 2, reason: "image not signed by a trusted key",
			logs: "its image cannot boot sealed"},
		{name: "trust, image signed by another key: unsealed", tx2: func() txstore.Tx { x := sealedTx(2, img, true); x.ImageSignatures = imgSig(stranger); return x }(),
			req: withTrust(pinned(img.String())), want: 2, reason: "image not signed by a trusted key"},
		{name: "trust with image signature: sealed", tx2: func() txstore.Tx { x := sealedTx(2, img, true); x.ImageSignatures = imgSig(key); return x }(),
			req: withTrust(pinned(img.String())), setup: func(a *memAssembler) { a.sums[image2] = img }, want: 2, sealed: true,
			logs: "image " + img.String() + " signed by trusted key " + key.pub.ID},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tx1 := good(1)
			tx1.Signatures = []sign.Signature{sign.SignTx(key.priv, fmt.Sprintf("sha256:%064d", 1))}
			tx2 := c.tx2
			tx2.Signatures = []sign.Signature{sign.SignTx(key.priv, tx2.Digest)}
			f := newMem(2, tx1, tx2)
			a := newMemAssembler()
			if c.setup != nil {
				c.setup(a)
			}
			var log strings.Builder
			logf := func(_ int, format string, args ...any) { fmt.Fprintf(&log, format+"\n", args...) }
			res, err := Choose(f, c.req, a, logf)
			if err != nil || res.Tx == nil || res.Tx.ID != c.want {
				t.Fatalf("Choose = %+v, %v; want tx %d", res, err, c.want)
			}
			wantMount := f.TreeDir(c.want)
			if c.sealed {
				wantMount = f.ImagePath(c.want)
			}
			if res.Sealed != c.sealed || a.mounted != wantMount {
				t.Errorf("sealed %v, mounted %q; want %v, %q", res.Sealed, a.mounted, c.sealed, wantMount)
			}
			if res.Sealed == (res.UnsealedWhy != "") {
				t.Errorf("sealed %v with unsealed_why %q", res.Sealed, res.UnsealedWhy)
			}
			checkSealedFailure(t, res, c.cause, c.reason)
			if c.cause == nil && !strings.Contains(res.UnsealedWhy, c.reason) {
				t.Errorf("unsealed_why %q, want %q in it", res.UnsealedWhy, c.reason)
			}
			// Only an unsealed boot of tx 2 walks its tree: the sealed path
			// (booted, or failed in it) and a refused pin never do.
			if walked, want := slices.Contains(f.verified, 2), c.want == 2 && !c.sealed; walked != want {
				t.Errorf("tx 2's tree verified: %v, want %v", walked, want)
			}
			if isBad := f.txs[2].State == bootstate.Bad; isBad != c.markBad {
				t.Errorf("tx 2 bad: %v, want %v (%s)", isBad, c.markBad, f.txs[2].LastFailure)
			}
			if !strings.Contains(log.String(), c.logs) {
				t.Errorf("log lacks %q:\n%s", c.logs, log.String())
			}
		})
	}
}

// checkSealedFailure: tx 2 failed with cause and reason, or not at all.
func checkSealedFailure(t *testing.T, res *Result, cause error, reason string) {
	t.Helper()
	if cause == nil {
		if len(res.Failures) != 0 {
			t.Errorf("failures %+v, want none", res.Failures)
		}
		return
	}
	if len(res.Failures) != 1 || res.Failures[0].Tx != 2 || !errors.Is(res.Failures[0].Err, cause) {
		t.Fatalf("failures %+v, want tx 2 matching %v", res.Failures, cause)
	}
	if !strings.Contains(res.Failures[0].Reason, reason) {
		t.Errorf("reason %q, want %q in it", res.Failures[0].Reason, reason)
	}
}

// TestFallbackSealed: a fallback candidate has no pin on the command line;
// it boots sealed from its record's image when the record says sealed and
// the running kernel can mount it, else from its tree, saying why.
func TestFallbackSealed(t *testing.T) {
	img1, img2 := sumOf(0x11), sumOf(0x22)
	const image1 = "/fake/trees/1/image.erofs"
	cases := []struct {
		name   string
		kernel string
		sealed bool
		sum    verity.Sum // what tx 1's image measures
		why    string
	}{
		{"6.12 boots the fallback sealed", "6.12.57+deb13-amd64", true, img1, ""},
		{"6.1 cannot mount it", "6.1.0-40-amd64", false, img1, `the running kernel "6.1.0-40-amd64" cannot mount a sealed /usr`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newMem(2, sealedTx(1, img1, true), sealedTx(2, img2, true))
			a := newMemAssembler()
			a.sums[image1] = c.sum // tx 2's image is missing: it fails
			req := Request{Tx: 2, Image: img2.String(), Verify: txstore.VerifyFast, LoaderTriesLeft: -1, Kernel: c.kernel}
			res, err := Choose(f, req, a, func(int, string, ...any) {})
			if err != nil || res.Tx == nil || res.Tx.ID != 1 {
				t.Fatalf("Choose = %+v, %v; want the fallback to tx 1", res, err)
			}
			if res.Sealed != c.sealed || !strings.Contains(res.UnsealedWhy, c.why) {
				t.Errorf("sealed %v (%q), want %v (%q)", res.Sealed, res.UnsealedWhy, c.sealed, c.why)
			}
			if walked := slices.Contains(f.verified, 1); walked == c.sealed {
				t.Errorf("tx 1's tree verified: %v with sealed %v", walked, c.sealed)
			}
		})
	}
}
