package boot

import (
	"fmt"
	"os"
	"time"

	"github.com/txboot/txboot/txstore"
)

// noCounting is said on the console whenever a tx boots without its try
// being recorded.
const noCounting = "BOOT COUNTING IS OFF for this boot (no try recorded, no watchdog); run 'bootctl fsck --repair'"

// chooseWithoutDB boots when store.db cannot be read. The database is an
// index: the bootloader entry pins the tx's digest (txboot.tx=ID
// txboot.digest=sha256:…), its manifest is a CAS object, and trees/<id> can
// be verified against it, so the named tx is still trustworthy. Nothing else
// is: without a pin there is no content to check against, and without
// records there is no fallback order, so any failure ends in the normal
// nothing-bootable path. No try is recorded and nothing is written.
func chooseWithoutDB(s Store, req Request, asm Assembler, logf Logf, dbErr error) (*Result, error) {
	// Unsealed: whether a tx is sealed is in its record.
	res := &Result{Requested: req.Tx, NoDatabase: dbErr.Error(), UnsealedWhy: "the store's database cannot be read"}
	logf(2, "the store's database cannot be read: %v", dbErr)
	failed := func(reason string, causes ...error) (*Result, error) {
		res.addFailure(req.Tx, fail(reason, causes...), "")
		logf(3, "tx %d cannot be booted without the database: %s", req.Tx, reason)
		return res, nothingBootable(res, "store.db is damaged and "+reason)
	}
	if req.Trust.On() {
		// The signatures are in the records: with keys carried, nothing
		// can be shown to be signed without the database.
		res.addFailure(req.Tx, fail("the initramfs carries trusted keys, and a tx's signatures are in store.db's records, so nothing can be verified as signed; run 'bootctl fsck --repair' (then re-sign or pull the txs whose signatures it could not keep)", ErrNoSignatures, dbErr), FailNoSignatures)
		logf(3, "tx %d cannot be booted without the database: %s", req.Tx, res.Failures[0].Reason)
		return res, nothingBootable(res, "store.db is damaged and only signed txs may boot")
	}
	switch {
	case req.Tx == 0:
		return failed("the command line names no tx (txboot.tx=), so there is nothing to boot without the database", ErrDigestPin)
	case req.DigestInvalid:
		return failed("txboot.digest= on the command line is malformed, so the tx's content cannot be checked", ErrDigestPin)
	case req.Digest == "":
		return failed("no txboot.digest= pins the tx's content, so it cannot be trusted without the database", ErrDigestPin)
	}
	logf(2, "booting tx %d by its pinned digest %s without the database; %s", req.Tx, req.Digest, noCounting)

	vstart := time.Now()
	m, key, err := s.FindManifest(req.Digest, req.Tx)
	if err != nil {
		res.Verify = time.Since(vstart)
		return failed(err.Error(), ErrNotInStore, err)
	}
	tree := s.TreeDir(req.Tx)
	if req.Verify != txstore.VerifyOff {
		probs, err := s.VerifyManifest(req.Tx, m, req.Verify)
		res.Verify = time.Since(vstart)
		if err != nil {
			return failed("verify: "+err.Error(), ErrVerify, err)
		}
		if len(probs) > 0 { // no re-blit: that would write to the store on a guess
			return failed(describe(probs), ErrDamaged)
		}
	} else if _, err := os.Lstat(tree); err != nil {
		return failed(fmt.Sprintf("tree missing (%v), and no re-blit without the database", err), ErrDamaged, err)
	}
	res.Verify = time.Since(vstart)

	astart := time.Now()
	if err := asm.Mount(tree); err != nil {
		res.Assemble = time.Since(astart)
		return failed("assemble /usr: "+err.Error(), ErrAssemble, err)
	}
	init, err := asm.FindInit(InitCandidates(req.Init))
	res.Assemble = time.Since(astart)
	if err != nil {
		asm.Unmount()
		return failed("no init: "+err.Error(), ErrNoInit, err)
	}
	entries, size := m.Stats()
	res.Tx = &txstore.Tx{ID: req.Tx, Digest: req.Digest, Manifest: key.Hash.String(), Kernels: m.Kernels(), Entries: entries, Bytes: size}
	res.Init = init
	return res, nil
}
