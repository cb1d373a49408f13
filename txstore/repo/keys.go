package repo

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/txboot/txboot/txstore/sign"
)

// Key statements (keys.json + keys.sig): how a repository's keys change
// without touching a device. A statement is signed by a root key — one
// in the device's /etc/txboot/trusted.d, or one an earlier statement
// certified as a root — and says which keys are trusted from now on:
//
//   - "online" keys sign indexes and txs, each until its expiry: the
//     signing key of a build server, certified by a root key kept
//     offline (TUF's offline/online split);
//   - "root" keys may sign later statements (root rotation);
//   - revoked key IDs are never trusted again on a device that saw the
//     revocation, from any source.
//
// Statements carry a version that grows; a device applies only a newer
// one and keeps its revocations for good.
const (
	KeysPath    = "keys.json"
	KeysSigPath = "keys.sig"

	// KeysFormat is KeyStatement.Format.
	KeysFormat = 1
	// MaxKeysSize bounds keys.json and keys.sig as read by a puller.
	MaxKeysSize = 1 << 20
	// MaxKeys and MaxRevoked bound a statement's lists.
	MaxKeys    = 64
	MaxRevoked = 1024

	RoleOnline = "online"
	RoleRoot   = "root"
)

// ErrBadKeys: keys.json or keys.sig is malformed, or signed by no root key.
var ErrBadKeys = errors.New("bad repository key statement")

// KeyStatement is keys.json.
type KeyStatement struct {
	Format  int            `json:"format"`
	Version uint64         `json:"version"`
	Issued  time.Time      `json:"issued"`
	Keys    []CertifiedKey `json:"keys"`
	Revoked []string       `json:"revoked,omitempty"` // key IDs, sorted
}

// CertifiedKey is one key a statement trusts.
type CertifiedKey struct {
	ID      string    `json:"key_id"`
	Public  string    `json:"public"` // PEM
	Role    string    `json:"role"`
	Expires time.Time `json:"expires,omitzero"` // required for online keys
}

// PublicKey parses k (checked by ParseKeys: the ID matches).
func (k *CertifiedKey) PublicKey() (sign.PublicKey, error) {
	pub, err := sign.ParsePublicKey([]byte(k.Public))
	if err != nil {
		return sign.PublicKey{}, err
	}
	return sign.PublicKey{Key: pub, ID: sign.KeyID(pub), Source: KeysPath}, nil
}

// Valid reports whether k may be used at now.
func (k *CertifiedKey) Valid(now time.Time) bool { return k.Expires.IsZero() || now.Before(k.Expires) }

func checkStatement(ks *KeyStatement) error {
	if ks.Format != KeysFormat {
		return fmt.Errorf("format %d, want %d", ks.Format, KeysFormat)
	}
	if ks.Version < 1 || ks.Version > MaxSize || !utcOnly(ks.Issued) {
		return fmt.Errorf("version %d or issued time out of range", ks.Version)
	}
	if len(ks.Keys) > MaxKeys || len(ks.Revoked) > MaxRevoked {
		return fmt.Errorf("%d keys, %d revoked: at most %d and %d", len(ks.Keys), len(ks.Revoked), MaxKeys, MaxRevoked)
	}
	revoked := map[string]bool{}
	for i, id := range ks.Revoked {
		if len(id) != 32 || !lowerHex(id) || (i > 0 && ks.Revoked[i-1] >= id) {
			return fmt.Errorf("revoked %q: not 32 lowercase hex, sorted, once", clip(id))
		}
		revoked[id] = true
	}
	seen := map[string]bool{}
	for i := range ks.Keys {
		k := &ks.Keys[i]
		pub, err := k.PublicKey()
		if err != nil {
			return fmt.Errorf("key %d: %w", i, err)
		}
		switch {
		case pub.ID != k.ID:
			return fmt.Errorf("key %d: key_id %q is not its key's (%s)", i, clip(k.ID), pub.ID)
		case seen[k.ID] || revoked[k.ID]:
			return fmt.Errorf("key %s listed twice or both listed and revoked", k.ID)
		case k.Role != RoleOnline && k.Role != RoleRoot:
			return fmt.Errorf("key %s: role %q, want online or root", k.ID, clip(k.Role))
		case k.Role == RoleOnline && !utcOnly(k.Expires):
			return fmt.Errorf("key %s: an online key needs a UTC expiry", k.ID)
		case !k.Expires.IsZero() && !utcOnly(k.Expires):
			return fmt.Errorf("key %s: expiry not UTC", k.ID)
		}
		seen[k.ID] = true
	}
	return nil
}

// ParseKeys decodes and checks keys.json.
func ParseKeys(data []byte) (*KeyStatement, error) {
	if len(data) > MaxKeysSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadKeys, len(data), MaxKeysSize)
	}
	var ks KeyStatement
	if err := decodeStrict(data, &ks); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeys, err)
	}
	if err := checkStatement(&ks); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeys, err)
	}
	return &ks, nil
}

// EncodeKeys sorts the statement's lists and returns keys.json's bytes.
func EncodeKeys(ks *KeyStatement) ([]byte, error) {
	sort.Slice(ks.Keys, func(i, j int) bool { return ks.Keys[i].ID < ks.Keys[j].ID })
	sort.Strings(ks.Revoked)
	ks.Issued = ks.Issued.UTC()
	for i := range ks.Keys {
		ks.Keys[i].Expires = ks.Keys[i].Expires.UTC()
	}
	if err := checkStatement(ks); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeys, err)
	}
	return encodeJSON(ks)
}

// PublicPEM is the PEM text of an ed25519 public key.
func PublicPEM(pub ed25519.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// encodeJSON is 2-space indented JSON with a final newline.
func encodeJSON(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
