package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/verity"
)

// ErrImage: a sealed tx's image is missing, has no fs-verity, or is not
// the one the boot entry pins.
var ErrImage = errors.New("sealed image unusable")

// bootMode decides whether t boots sealed and from which image digest (pin
// "" = from its tree, with why). The requested tx boots sealed when the
// entry pins its image (txboot.image=, matched to the record by
// checkPins): bootctl writes the pin only once the tx is sealed, so the
// pin, not the record, decides, and a record or image edited on the root
// filesystem cannot turn the check off (a failure falls back). A fallback
// candidate has no pin on the command line: it boots sealed from its
// record's image when the record says sealed and the running kernel can
// mount it. With keys in the initramfs, only with an image signature by
// one of them.
func bootMode(t *txstore.Tx, requested bool, req Request, logf Logf) (pin, why string) {
	pin = req.Image
	switch {
	case !requested && (!t.Sealed || t.Image == "" || !txstore.KernelCanSeal(req.Kernel)):
		return "", unsealedFallback(t, req.Kernel)
	case !requested:
		pin = t.Image
	case req.Image == "":
		why := unsealedNoPin(t)
		logf(5, "tx %d boots unsealed (%s): %s", t.ID, why, treeCheck(req.Verify))
		return "", why
	}
	if !req.Trust.On() {
		return pin, ""
	}
	k, err := sign.VerifyImage(req.Trust.Keys, t.Digest, t.Image, t.ImageSignatures)
	if err != nil {
		level := 5
		if errors.Is(err, sign.ErrBadSignature) {
			level = 4 // tampering with the image's signature is worth a warning
		}
		logf(level, "tx %d: its image cannot boot sealed: %v; %s", t.ID, err, treeCheck(req.Verify))
		return "", "image not signed by a trusted key"
	}
	logf(6, "tx %d: image %s signed by trusted key %s", t.ID, t.Image, k.ID)
	return pin, ""
}

// unsealedNoPin is why a requested tx without txboot.image= boots unsealed.
func unsealedNoPin(t *txstore.Tx) string {
	if mode, why := txstore.BootMode(t); mode != "sealed" {
		return why
	}
	return "the boot entry pins no image (txboot.image=)"
}

// unsealedFallback is why a fallback candidate boots from its tree.
func unsealedFallback(t *txstore.Tx, kernel string) string {
	if mode, why := txstore.BootMode(t); mode != "sealed" {
		return why
	}
	return fmt.Sprintf("the running kernel %q cannot mount a sealed /usr (%s or newer)", kernel, txstore.SealedKernel)
}

// treeCheck says what the unsealed boot does to the tree.
func treeCheck(m txstore.VerifyMode) string {
	switch m {
	case txstore.VerifyOff:
		return "booting its tree unverified (txboot.verify=off)"
	case txstore.VerifyFull:
		return "verifying its tree (full)"
	}
	return "verifying its tree (fast)"
}

// bootSealed checks the image against the pin (the verify phase: one
// FS_IOC_MEASURE_VERITY, no tree walk) and mounts it as /usr (the
// assemble phase). Every failure here belongs to the tx: the image or the
// objects are missing or damaged, so the caller falls back.
func bootSealed(s Store, t *txstore.Tx, pin string, req Request, asm Assembler, res *Result, logf Logf) (string, error) {
	image, objects := s.ImagePath(t.ID), s.ObjectsDir()
	vstart := time.Now()
	err := checkImage(asm, t.ID, image, pin)
	res.Verify += time.Since(vstart)
	if err != nil {
		return "", err
	}
	astart := time.Now()
	defer func() { res.Assemble += time.Since(astart) }()
	if err := asm.MountSealed(image, objects); err != nil {
		return "", fail(fmt.Sprintf("tx %d's sealed /usr cannot be mounted: %v; `bootctl seal %d` rebuilds its image", t.ID, err, t.ID), ErrAssemble, ErrImage, err)
	}
	logf(6, "tx %d: sealed image %s mounted; the kernel checks every file of /usr against it", t.ID, pin)
	return findInit(asm, req)
}

// checkImage compares the image's fs-verity digest with the pin, with a
// reason naming the file and the fix.
func checkImage(asm Assembler, id uint64, image, pin string) error {
	sum, err := asm.MeasureImage(image)
	var why string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		why = fmt.Sprintf("tx %d's image %s is missing; `bootctl seal %d` rebuilds it", id, image, id)
	case errors.Is(err, verity.ErrNotEnabled):
		why = fmt.Sprintf("tx %d's image %s has no fs-verity, so nothing vouches for it; `bootctl seal %d` seals it", id, image, id)
	case err != nil:
		why = fmt.Sprintf("tx %d's image %s: %v; `bootctl seal %d` rebuilds it", id, image, err, id)
	case sum.String() != pin:
		why = fmt.Sprintf("tx %d's image %s: fs-verity digest %s does not match the pinned %s; damaged or replaced: `bootctl seal %d` rebuilds it", id, image, sum, pin, id)
	default:
		return nil
	}
	return fail(why, ErrImage, err)
}
