package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// Where trusted keys live: a tx ships its vendor's keys in its own /usr,
// the system adds its own in /etc. Both go into every initrd bootctl
// builds (mkinitramfs --trust).
const (
	treeTrustDir = "lib/txboot/trusted.d" // inside a tx's /usr
	etcTrustDir  = "etc/txboot/trusted.d" // under --root
)

// ErrTrustFile is a trusted-key file that cannot be used.
var ErrTrustFile = errors.New("trusted key file cannot be used")

// trustFiles lists base/rel/*.pem without following a symlink anywhere
// beneath base: a tx's tree is resolved against the host's root by the
// kernel, so a link there would read a host file as the tx's key. A
// missing directory holds no keys; a symlink, a non-regular *.pem or one
// that is not an ed25519 public key is an error naming the path.
func trustFiles(base, rel string) ([]string, error) {
	p := base
	for _, c := range strings.Split(rel, "/") {
		p = filepath.Join(p, c)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("trusted keys: %s: %w: not a directory (symlinks are not followed)", p, ErrTrustFile)
		}
	}
	ents, err := os.ReadDir(p)
	if err != nil {
		return nil, fmt.Errorf("trusted keys: %w", err)
	}
	var out []string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".pem") {
			continue // the convention sign.LoadTrustDirs follows
		}
		f := filepath.Join(p, e.Name())
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("trusted keys: %s: %w: not a regular file (symlinks are not followed)", f, ErrTrustFile)
		}
		if _, err := sign.LoadPublicKey(f); err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		out = append(out, f)
	}
	sort.Strings(out)
	return out, nil
}

// initrdTrust is the --trust arguments for tx t's initrd.
func initrdTrust(s *txstore.Store, t *txstore.Tx) ([]string, error) {
	own, err := trustFiles(s.TreeDir(t.ID), treeTrustDir)
	if err != nil {
		return nil, fmt.Errorf("tx %d: %w", t.ID, err)
	}
	sys, err := trustFiles(s.Root, etcTrustDir)
	if err != nil {
		return nil, err
	}
	var args []string
	for _, f := range append(own, sys...) {
		args = append(args, "--trust", f)
	}
	return args, nil
}

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
		fs, err := trustFiles(base, rel)
		if err != nil {
			fmt.Fprintf(e.stderr, "bootctl: warning: %v\n", err)
		}
		files = append(files, fs...)
	}
	add(s.Root, etcTrustDir)
	for _, t := range txs {
		add(s.TreeDir(t.ID), treeTrustDir)
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
