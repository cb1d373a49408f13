package cli

import (
	"errors"
	"fmt"

	"github.com/txboot/txboot/bootctl/initrd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// Signature states in status.
const (
	sigUnsigned  = "unsigned"  // no signature
	sigValid     = "valid"     // verifies with a known key
	sigUntrusted = "untrusted" // signed only by keys neither the system nor any tx carries
	sigBad       = "bad"       // a known key's signature that does not verify
)

// knownKeys is every key an initrd built now could carry: the system's and
// each tx's own. Files that cannot be used are warnings here (status must
// still show the rest), never silently skipped.
func knownKeys(e *env, s *txstore.Store, txs []*txstore.Tx) []sign.PublicKey {
	var files []string
	add := func(base, rel string) {
		fs, err := initrd.TrustFiles(base, rel)
		if err != nil {
			fmt.Fprintf(e.stderr, "bootctl: warning: %v\n", err)
		}
		files = append(files, fs...)
	}
	add(s.Root, initrd.EtcTrustDir)
	for _, t := range txs {
		add(s.TreeDir(t.ID), initrd.TreeTrustDir)
	}
	var keys []sign.PublicKey
	seen := map[string]bool{}
	for _, f := range files {
		if k, err := sign.LoadPublicKey(f); err == nil && !seen[k.ID] {
			seen[k.ID] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// signatureState says whether t is signed and by which key.
func signatureState(keys []sign.PublicKey, t *txstore.Tx) (state, keyID string) {
	if len(t.Signatures) == 0 {
		return sigUnsigned, ""
	}
	k, err := sign.VerifyTx(keys, t.Digest, t.Signatures)
	switch {
	case err == nil:
		return sigValid, k.ID
	case errors.Is(err, sign.ErrBadSignature):
		for _, sg := range t.Signatures {
			for _, k := range keys {
				if k.ID == sg.KeyID {
					return sigBad, k.ID
				}
			}
		}
		return sigBad, ""
	}
	return sigUntrusted, t.Signatures[0].KeyID
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
