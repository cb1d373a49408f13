// Package boot is initagent's boot flow. choose.go picks, verifies and
// assembles a transaction with fallback; flow.go does the PID 1 work around
// it (mounts, modules, root device, switch_root, rescue).
package boot

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/verity"
)

// Request is what the command line (and the bootloader) asked for.
type Request struct {
	Tx            uint64 // 0: the store's default
	Digest        string // "" or sha256:HEX that the requested tx must have
	DigestInvalid bool   // a txboot.digest= was given but malformed
	// Image pins the requested tx's sealed image (its fs-verity digest,
	// txboot.image=): it must be the one the record names, and a tx the
	// record says is sealed then boots from it.
	Image        string
	ImageInvalid bool // a txboot.image= was given but malformed
	// Kernel is the running kernel's release: a fallback candidate boots
	// sealed only if it can mount the image (txstore.KernelCanSeal).
	Kernel string
	Verify txstore.VerifyMode
	Force  bool
	Init   string // init= or ""
	// LoaderTriesLeft is systemd-boot's remaining-tries counter for the
	// entry it booted (from LoaderBootCountPath), or -1 when unknown.
	LoaderTriesLeft int
	LoaderTx        uint64 // the tx that entry names (0: unknown)
	// Trust: the keys the initramfs carries; when on, only a tx whose
	// digest one of them signed is booted (txboot.force= does not
	// override it).
	Trust Trust
}

// Assembler puts a tree in place as the new root's /usr. The real one bind
// mounts under /sysroot; tests use a temp dir.
type Assembler interface {
	Mount(tree string) error
	// MeasureImage is image's fs-verity digest, from the kernel in constant
	// time (verity.MeasurePath): verity.ErrNotEnabled when it has none.
	MeasureImage(image string) (verity.Sum, error)
	// MountSealed mounts the erofs image and, over it, overlayfs with
	// objects as a data-only lower layer and verity=require, read-only on
	// the new root's /usr: the kernel checks every file against the
	// digest the image records for it.
	MountSealed(image, objects string) error
	// Unmount undoes Mount or MountSealed.
	Unmount() error
	// FindInit returns the first usable init inside the new root.
	FindInit(candidates []string) (string, error)
}

// Failure is one tx that could not be booted, and why: Reason for people,
// Err for errors.Is (ErrNotInStore, ErrDamaged, bootstate.ErrBad, …; its
// message is Reason), Kind for the signature refusals boot.json reports.
type Failure struct {
	Tx     uint64      `json:"tx"`
	Reason string      `json:"reason"`
	Kind   FailureKind `json:"kind,omitempty"`
	Err    error       `json:"-"`
}

// Result is the outcome of Choose.
type Result struct {
	Tx        *txstore.Tx   `json:"tx"`
	Requested uint64        `json:"requested"`
	Init      string        `json:"init"`
	Failures  []Failure     `json:"failures,omitempty"`
	Reblitted bool          `json:"reblitted,omitempty"`
	OnTrial   bool          `json:"on_trial"`
	Verify    time.Duration `json:"verify_ns"`
	Assemble  time.Duration `json:"assemble_ns"`
	// NoDatabase: store.db could not be read or written, so the tx was
	// booted without recording a try (boot counting off); why.
	NoDatabase string `json:"no_database,omitempty"`
	// SignedBy: the trusted key whose signature of the tx's digest was
	// checked ("" when the initramfs carries no keys).
	SignedBy string `json:"signed_by,omitempty"`
	// Sealed: /usr is the tx's sealed image (erofs + overlayfs with
	// verity=require), checked by its pinned fs-verity digest; else
	// UnsealedWhy says why it is the verified tree.
	Sealed      bool   `json:"sealed"`
	UnsealedWhy string `json:"unsealed_why,omitempty"`
}

// Logf logs one line at a syslog level (3 error, 4 warning, 5 notice, 6 info, 7 debug).
type Logf func(level int, format string, args ...any)

// ErrNothingBootable means every candidate failed.
var ErrNothingBootable = errors.New("no transaction could be booted")

// InitCandidates is the order in which inits are tried.
func InitCandidates(requested string) []string {
	c := []string{"/sbin/init", "/usr/lib/systemd/systemd"}
	if requested != "" {
		c = append([]string{requested}, c...)
	}
	return c
}

// Choose picks the tx to boot: the requested one if it is sound, else the
// fallback order of bootstate.FallbackOrder. Each failure is logged and
// recorded in the store; the winner's try is recorded durably before
// Choose returns, so a crash after this point still counts the try.
func Choose(s Store, req Request, asm Assembler, logf Logf) (*Result, error) {
	res := &Result{Requested: req.Tx}
	if req.Trust.Err != nil {
		// Fail closed before touching anything: which tx would be refused
		// does not matter when no signature can be checked.
		reason := req.Trust.Err.Error() + "; no tx is booted unchecked"
		res.addFailure(req.Tx, fail(reason, ErrTrustStore, req.Trust.Err), FailTrustStore)
		logf(2, "%s", reason)
		return res, nothingBootable(res, reason)
	}
	if req.Trust.On() {
		logf(5, "only txs signed by %s are booted", keyIDs(req.Trust.Keys))
		if req.Verify == txstore.VerifyOff {
			// The signature pins the manifest, which only a verify checks
			// the tree against.
			logf(4, "txboot.verify=off is raised to fast: the initramfs carries trusted keys")
			req.Verify = txstore.VerifyFast
		}
	}
	if res.Requested == 0 {
		def, err := s.Default()
		if errors.Is(err, txstore.ErrCorrupt) {
			return chooseWithoutDB(s, req, asm, logf, err)
		}
		if err != nil {
			return res, fmt.Errorf("read default tx: %w", err)
		}
		res.Requested = def
	}
	all, err := s.List()
	if errors.Is(err, txstore.ErrCorrupt) {
		return chooseWithoutDB(s, req, asm, logf, err)
	}
	if err != nil {
		return res, fmt.Errorf("list transactions: %w", err)
	}
	if len(all) == 0 {
		return res, nothingBootable(res, "the store holds no transactions")
	}
	if res.Requested == 0 { // no default recorded: newest
		res.Requested = all[len(all)-1].ID
	}
	byID := map[uint64]*txstore.Tx{}
	for _, t := range all {
		byID[t.ID] = t
	}
	order := bootstate.FallbackOrder(res.Requested, txstore.Candidates(all))
	if byID[res.Requested] == nil {
		res.addFailure(res.Requested, fail(fmt.Sprintf("tx %d is not in the store", res.Requested), ErrNotInStore), "")
		logf(3, "requested tx %d is not in the store", res.Requested)
	}
	for _, id := range order {
		t := byID[id]
		requested := id == res.Requested
		// Unsigned is a refusal, not damage: the tx is not marked bad and
		// spends no try, so signing it later makes it bootable.
		kind, keyID, ferr := checkSigned(req.Trust, t)
		intrinsic := false
		if ferr == nil {
			intrinsic, ferr = tryOne(s, t, requested, req, asm, res, logf)
		}
		if ferr == nil {
			res.SignedBy = keyID
			if keyID != "" {
				logf(5, "tx %d: %s signed by trusted key %s", id, t.Digest, keyID)
			}
			settleOthers(s, all, res.Tx, logf)
			return res, nil
		}
		reason := ferr.Error()
		res.addFailure(id, ferr, kind)
		logf(3, "tx %d cannot be booted: %s", id, reason)
		ev := txstore.Event{Kind: "boot-failed", Detail: reason}
		_, err := s.Update(id, ev, func(t *txstore.Tx) error {
			if intrinsic && t.State != txstore.StateBad {
				t.MarkBad(reason)
			} else if intrinsic {
				t.LastFailure = reason
			}
			return nil
		})
		if err != nil {
			logf(4, "could not record the failure of tx %d: %v", id, err)
		}
	}
	return res, nothingBootable(res, fmt.Sprintf("tried %d", len(order)))
}

// tryOne returns a nil error on success, else why (see Failure.Err) and
// whether the failure is the tx's own (so it is marked bad) rather than the
// request's. A tx boots sealed (sealed.go) or from its tree, verified.
func tryOne(s Store, t *txstore.Tx, requested bool, req Request, asm Assembler, res *Result, logf Logf) (intrinsic bool, why error) {
	if requested {
		if err := checkPins(t, req); err != nil {
			return false, err
		}
	}
	if intrinsic, err := probeTry(t, requested, req, logf); err != nil {
		return intrinsic, err
	}
	pin, unsealedWhy := bootMode(t, requested, req, logf)
	sealed := pin != ""
	var init string
	var err error
	if sealed {
		init, err = bootSealed(s, t, pin, req, asm, res, logf)
		intrinsic = err != nil // everything on the sealed path is the tx's own
	} else {
		init, intrinsic, err = bootTree(s, t, req, asm, res, logf)
	}
	if err != nil {
		return intrinsic, err
	}
	res.Sealed, res.UnsealedWhy = sealed, unsealedWhy
	return false, recordTry(s, t, requested, init, req, asm, res, logf)
}

// checkPins applies the requested tx's content pins: txboot.digest= and
// txboot.image=. A mismatch or a garbled pin is the request's fault, not
// the tx's.
func checkPins(t *txstore.Tx, req Request) error {
	switch {
	case req.DigestInvalid:
		return fail("txboot.digest= on the command line is malformed, so the content pin cannot be checked", ErrDigestPin)
	case req.Digest != "" && req.Digest != t.Digest:
		return fail(fmt.Sprintf("digest mismatch: the boot entry pins %s, the store has %s", req.Digest, t.Digest), ErrDigestPin)
	case req.ImageInvalid:
		return fail("txboot.image= on the command line is malformed, so the image pin cannot be checked", ErrDigestPin)
	case req.Image != "" && req.Image != t.Image:
		return fail(fmt.Sprintf("image mismatch: the boot entry pins image %s, the store records %s for tx %d", req.Image, orNone(t.Image), t.ID), ErrDigestPin)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// probeTry decides on a copy whether a try is allowed (it is recorded only
// on success, by recordTry).
func probeTry(t *txstore.Tx, requested bool, req Request, logf Logf) (intrinsic bool, why error) {
	force := requested && req.Force
	probe := t.Boot
	if requested && adoptLoaderCounter(&probe, t.ID, req) {
		logf(6, "tx %d: adopting systemd-boot's counter: %d tries left after this boot (store had %d before it)", t.ID, req.LoaderTriesLeft, t.TriesLeft)
	}
	if err := probe.Attempt(force); err != nil {
		return t.State != txstore.StateBad, fail(err.Error(), err)
	}
	if force && t.State == txstore.StateBad {
		logf(4, "tx %d is marked bad (%s); booting it anyway because txboot.force=1", t.ID, t.LastFailure)
	}
	return false, nil
}

// bootTree is the unsealed boot: verify the tree (re-blitting it if
// damaged), then bind it on /usr.
func bootTree(s Store, t *txstore.Tx, req Request, asm Assembler, res *Result, logf Logf) (init string, intrinsic bool, why error) {
	vstart := time.Now()
	intrinsic, why = verifyTree(s, t, req, res, logf)
	res.Verify += time.Since(vstart)
	if why != nil {
		return "", intrinsic, why
	}
	astart := time.Now()
	defer func() { res.Assemble += time.Since(astart) }()
	if err := asm.Mount(s.TreeDir(t.ID)); err != nil {
		return "", false, fail("assemble /usr: "+err.Error(), ErrAssemble, err)
	}
	init, err := findInit(asm, req)
	return init, err != nil, err
}

// findInit finds the init in the assembled root; without one, /usr is
// unmounted again.
func findInit(asm Assembler, req Request) (string, error) {
	init, err := asm.FindInit(InitCandidates(req.Init))
	if err != nil {
		asm.Unmount()
		return "", fail("no init: "+err.Error(), ErrNoInit, err)
	}
	return init, nil
}

// verifyTree checks the tree at req.Verify; damage it can repair is
// re-blitted from the CAS and verified again. With verify=off a missing
// tree is still re-blitted.
func verifyTree(s Store, t *txstore.Tx, req Request, res *Result, logf Logf) (intrinsic bool, why error) {
	if req.Verify == txstore.VerifyOff {
		if _, err := os.Lstat(s.TreeDir(t.ID)); err == nil {
			return false, nil
		}
		logf(4, "tx %d: tree missing; re-blitting (verification is off)", t.ID)
		if _, err := s.Reblit(t.ID); err != nil {
			return true, fail(fmt.Sprintf("tree missing and re-blit failed: %v", err), ErrDamaged, err)
		}
		res.Reblitted = true
		return false, nil
	}
	probs, err := s.Verify(t.ID, req.Verify)
	switch {
	case err != nil:
		return false, fail("verify: "+err.Error(), ErrVerify, err)
	case len(probs) == 0:
		return false, nil
	case inStore(probs):
		// A new tree would link the same damaged objects: skip the
		// re-blit and its second verify, and fall back at once.
		return true, fail(describe(probs)+" (damage in the store's objects: a re-blit cannot repair it)", ErrDamaged)
	}
	logf(4, "tx %d: %s; re-blitting its tree from the store", t.ID, describe(probs))
	if _, err := s.Reblit(t.ID); err != nil {
		return true, fail(fmt.Sprintf("%s; re-blit failed: %v", describe(probs), err), ErrDamaged, err)
	}
	res.Reblitted = true
	if probs, err = s.Verify(t.ID, req.Verify); err != nil {
		return false, fail("verify after re-blit: "+err.Error(), ErrVerify, err)
	} else if len(probs) > 0 {
		return true, fail("after re-blit: "+describe(probs), ErrDamaged)
	}
	logf(5, "tx %d: tree re-blitted and verified", t.ID)
	return false, nil
}

// recordTry spends the try durably before pivoting (gokrazy's habit): if
// this boot hangs or dies, the next one already knows.
func recordTry(s Store, t *txstore.Tx, requested bool, init string, req Request, asm Assembler, res *Result, logf Logf) error {
	force := requested && req.Force
	var onTrial bool
	kind := "boot"
	if !requested {
		kind = "fallback"
	}
	detail := fmt.Sprintf("requested %d", res.Requested)
	if len(res.Failures) > 0 {
		detail += "; " + res.Failures[0].Reason
	}
	updated, err := s.Update(t.ID, txstore.Event{Kind: kind, Detail: detail}, func(x *txstore.Tx) error {
		if requested {
			adoptLoaderCounter(&x.Boot, x.ID, req)
		}
		if err := x.Attempt(force); err != nil {
			return err
		}
		onTrial = x.State != txstore.StateGood
		return nil
	})
	if errors.Is(err, txstore.ErrCorrupt) {
		// The database reads but cannot be written: boot what was just
		// verified, uncounted, rather than nothing at all.
		logf(2, "tx %d: the boot attempt cannot be recorded: %v; %s", t.ID, err, noCounting)
		res.NoDatabase = err.Error()
		res.Tx, res.Init, res.OnTrial = t, init, false
		return nil
	}
	if err != nil {
		asm.Unmount()
		res.Sealed, res.UnsealedWhy = false, ""
		return fail("could not record the boot attempt: "+err.Error(), ErrNotRecorded, err)
	}
	res.Tx, res.Init, res.OnTrial = updated, init, onTrial
	return nil
}

// adoptLoaderCounter applies bootstate's rule for systemd-boot's counter
// when the loader's counted entry is this tx; it reports whether the
// store's count went down.
func adoptLoaderCounter(b *bootstate.Boot, id uint64, req Request) bool {
	return req.LoaderTx == id && b.AdoptLoaderCounter(req.LoaderTriesLeft)
}

// settleOthers runs once a tx was chosen: a tx whose trial is over
// (bootstate.TrialOver) was not booted now (systemd-boot skips such entries
// by itself), so it failed its trial: mark it bad, with the reason. Once a
// good tx booted, a bad default moves by bootstate.HealDefault (to the
// winner). A winner on trial proves nothing about which good tx works, so
// then the default stays.
func settleOthers(s Store, all []*txstore.Tx, winner *txstore.Tx, logf Logf) {
	for _, o := range all {
		if o.ID == winner.ID || !o.TrialOver() {
			continue
		}
		why := fmt.Sprintf("not marked good after %d tries", o.Tries)
		logf(4, "tx %d: %s; it is marked bad", o.ID, why)
		if _, err := s.Update(o.ID, txstore.Event{Kind: "out-of-tries", Detail: why + fmt.Sprintf("; booted tx %d", winner.ID)}, func(x *txstore.Tx) error {
			x.FailTrial()
			return nil
		}); err != nil {
			logf(4, "could not record tx %d as bad: %v", o.ID, err)
		}
	}
	if winner.State != txstore.StateGood {
		return
	}
	def, err := s.Default()
	if err != nil || def == 0 || def == winner.ID {
		return
	}
	// Fresh records: this boot may have marked the default bad.
	now, err := s.List()
	if err != nil {
		return
	}
	if nd := bootstate.HealDefault(def, txstore.Candidates(now), winner.ID); nd != 0 {
		if err := s.SetDefault(nd); err == nil {
			logf(5, "default tx %d is bad; tx %d is the default now", def, nd)
		}
	}
}

func describe(probs []txstore.Problem) string {
	s := fmt.Sprintf("verification found %d problem(s): %s", len(probs), probs[0])
	if len(probs) > 1 {
		s += fmt.Sprintf(" (+%d more)", len(probs)-1)
	}
	return strings.TrimSpace(s)
}

// inStore reports whether any problem is damage to a store object.
func inStore(probs []txstore.Problem) bool {
	for _, p := range probs {
		if p.InStore {
			return true
		}
	}
	return false
}
