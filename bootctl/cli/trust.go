package cli

import (
	"errors"
	"fmt"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/trust"
)

// Signature states in status and verify.
const (
	sigUnsigned  = "unsigned"  // no signature
	sigValid     = "valid"     // verifies with a key of the system's trust store
	sigUntrusted = "untrusted" // signed only by keys the system does not trust
	sigBad       = "bad"       // a trusted key's signature that does not verify
)

// bootedGoodTree is the tree of the tx the running system booted when the
// store records it as good, else "": offline (--root is not the running
// system, whose boot record says nothing about it), not booted by txboot,
// on trial, or bad. Only a tx that booted and was proven good may vouch
// for keys; a tx on trial would otherwise vouch for itself.
func bootedGoodTree(e *env, s *txstore.Store) string {
	if !isLive(e.root) {
		return ""
	}
	id := booted()
	if id == 0 {
		return ""
	}
	t, err := s.Get(id)
	if err != nil || t.State != txstore.StateGood {
		return ""
	}
	return s.TreeDir(id)
}

// systemTrust is the system's trust store (trust.Load): the keys initrds
// carry, status and verify check signatures with, and pull checks
// index.sig with.
func systemTrust(e *env, s *txstore.Store) (*trust.Set, error) {
	return trust.Load(s.Root, s.Dir, bootedGoodTree(e, s))
}

// knownKeys is systemTrust for status: a key file that cannot be used is
// a warning (status must still show the rest), never silently skipped.
func knownKeys(e *env, s *txstore.Store) []sign.PublicKey {
	return trust.LoadLenient(s.Root, s.Dir, bootedGoodTree(e, s), func(err error) {
		fmt.Fprintf(e.stderr, "bootctl: warning: %v\n", err)
	}).Keys
}

// signatureState says whether t is signed and by which key.
func signatureState(keys []sign.PublicKey, t *txstore.Tx) (state, keyID string) {
	return sigState(keys, t.Signatures, func(k []sign.PublicKey, g []sign.Signature) (sign.PublicKey, error) {
		return sign.VerifyTx(k, t.Digest, g)
	})
}

// imageSignatureState is signatureState for t's image (sign.SignImage
// over the pair digest, image); unsigned when t has no image.
func imageSignatureState(keys []sign.PublicKey, t *txstore.Tx) (state, keyID string) {
	if t.Image == "" {
		return sigUnsigned, ""
	}
	return sigState(keys, t.ImageSignatures, func(k []sign.PublicKey, g []sign.Signature) (sign.PublicKey, error) {
		return sign.VerifyImage(k, t.Digest, t.Image, g)
	})
}

// sigState judges sigs with verify against keys: valid (by which key),
// untrusted (the first signer), bad (a trusted key's signature that does
// not verify) or unsigned.
func sigState(keys []sign.PublicKey, sigs []sign.Signature, verify func([]sign.PublicKey, []sign.Signature) (sign.PublicKey, error)) (state, keyID string) {
	if len(sigs) == 0 {
		return sigUnsigned, ""
	}
	k, err := verify(keys, sigs)
	switch {
	case err == nil:
		return sigValid, k.ID
	case errors.Is(err, sign.ErrBadSignature):
		for _, sg := range sigs {
			for _, k := range keys {
				if k.ID == sg.KeyID {
					return sigBad, k.ID
				}
			}
		}
		return sigBad, ""
	}
	return sigUntrusted, sigs[0].KeyID
}

// imageNote is what verify and show say about t's image signature
// ("" when t has no image).
func imageNote(t *txstore.Tx, state, keyID string) string {
	if t.Image == "" {
		return ""
	}
	switch state {
	case sigValid:
		return "image signed by " + keyID
	case sigUntrusted:
		return "image signed by untrusted:" + keyID + " (not in the system's trust store)"
	case sigBad:
		return "image signature by " + keyID + " does not verify"
	}
	return "image not signed"
}

// signedColumn is status's SIGNED column.
func signedColumn(state, keyID string) string {
	switch state {
	case sigValid:
		return keyID
	case sigUntrusted:
		return "untrusted:" + keyID
	case sigBad:
		return "BAD:" + keyID
	}
	return "-"
}
