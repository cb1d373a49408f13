package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// TrustDir holds the trusted public keys inside the initramfs; mkinitramfs
// --trust writes them there as <key id>.pem (initramfs.TrustDir).
const TrustDir = "/etc/txboot/trusted.d"

// ErrTrustStore: the initramfs carries a trust store that cannot be used.
// Checking stays on and nothing boots: a broken trust store must never
// turn signature checking off.
var ErrTrustStore = errors.New("the initramfs's trusted keys cannot be used")

// FailureKind types a Failure for callers that act on it (bootctl status,
// tests); "" is any other failure.
type FailureKind string

const (
	// FailUnsigned: no signature by a key the initramfs trusts (none at
	// all, or only by other keys).
	FailUnsigned FailureKind = "unsigned"
	// FailBadSignature: a signature by a trusted key that does not verify
	// over the record's digest (tampering, or a record edited to name
	// another digest).
	FailBadSignature FailureKind = "bad-signature"
	// FailTrustStore: the initramfs's trust store is broken (ErrTrustStore).
	FailTrustStore FailureKind = "trust-store"
	// FailNoSignatures: keys are carried but store.db cannot be read, and
	// the signatures live in its records.
	FailNoSignatures FailureKind = "no-signatures"
)

// Trust is what the initramfs carries to check signatures with. The zero
// value is "no keys carried": every tx boots as before.
type Trust struct {
	Keys []sign.PublicKey
	// Err: a trust store is present but unusable; On() stays true.
	Err error
}

// On reports whether only signed txs may boot.
func (t Trust) On() bool { return len(t.Keys) > 0 || t.Err != nil }

// LoadTrust reads the trust store at dir (TrustDir in the initramfs). No
// directory means no keys. A directory that is there but holds anything
// other than parseable *.pem public keys — or nothing at all, which
// mkinitramfs never writes — is an Err, so checking stays on.
func LoadTrust(dir string) Trust {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return Trust{}
	}
	if err != nil {
		return Trust{Err: fmt.Errorf("%w: %w", ErrTrustStore, err)}
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".pem") || !e.Type().IsRegular() {
			return Trust{Err: fmt.Errorf("%w: %s is not a key file (want <key id>.pem)", ErrTrustStore, filepath.Join(dir, e.Name()))}
		}
	}
	keys, err := sign.LoadTrustDirs(dir)
	if err != nil {
		return Trust{Err: fmt.Errorf("%w: %w", ErrTrustStore, err)}
	}
	if len(keys) == 0 {
		return Trust{Err: fmt.Errorf("%w: %s holds no key", ErrTrustStore, dir)}
	}
	return Trust{Keys: keys}
}

// checkSigned returns nil when trust is off or t carries a valid signature
// of its digest by a trusted key (then also that key's ID); else why and
// its kind.
func checkSigned(trust Trust, t *txstore.Tx) (kind FailureKind, keyID string, why error) {
	if !trust.On() {
		return "", "", nil
	}
	if trust.Err != nil {
		return FailTrustStore, "", fail(trust.Err.Error(), ErrTrustStore, trust.Err)
	}
	k, err := sign.VerifyTx(trust.Keys, t.Digest, t.Signatures)
	switch {
	case err == nil:
		return "", k.ID, nil
	case errors.Is(err, sign.ErrBadSignature):
		return FailBadSignature, "", fail(err.Error()+" (tampered signature, or a record edited to name another digest)", ErrBadSignature, err)
	default:
		return FailUnsigned, "", fail(err.Error()+"; the initramfs trusts "+keyIDs(trust.Keys), ErrUnsigned, err)
	}
}

func keyIDs(keys []sign.PublicKey) string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	return "key " + strings.Join(ids, ", ")
}
