package repo

import (
	"crypto/ed25519"
	"fmt"
	"slices"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// DefaultKeyExpiry is how long an online key is certified unless
// CertifyOptions.Expires says otherwise.
const DefaultKeyExpiry = 90 * 24 * time.Hour

// CertifyOptions say how the next key statement differs from the
// current one.
type CertifyOptions struct {
	// Key is the root key that signs the statement (offline: kept off
	// the build server).
	Key ed25519.PrivateKey
	// Online keys to certify (again) for Expires; Root keys to make roots
	// (they may sign later statements); Revoke: key IDs to revoke for good.
	Online, Root []sign.PublicKey
	Revoke       []string
	Expires      time.Duration
	Timeout      time.Duration
	Now          func() time.Time
}

// Certify writes the repository's next key statement: the current one's
// keys, less the revoked, plus the given ones, version + 1, signed by
// o.Key. keys.sig is written before keys.json and signs the previous
// statement too (a reader between the two renames still verifies), as
// publish does for the index.
func Certify(dir string, o CertifyOptions) (*KeyStatement, error) {
	if o.Key == nil {
		return nil, fmt.Errorf("certify: %w: no signing key", txstore.ErrInvalid)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout <= 0 {
		o.Timeout = txstore.DefaultTimeout
	}
	if o.Expires == 0 {
		o.Expires = DefaultKeyExpiry
	}
	r, err := openRepo(dir, o.Timeout)
	if err != nil {
		return nil, fmt.Errorf("certify: %w", err)
	}
	defer r.close()
	old, err := readSmall(r.root, KeysPath, MaxKeysSize)
	if err != nil {
		return nil, fmt.Errorf("certify: %w", err)
	}
	oldSig, err := readSmall(r.root, KeysSigPath, MaxKeysSize)
	if err != nil {
		return nil, fmt.Errorf("certify: %w", err)
	}
	ks := &KeyStatement{Format: KeysFormat}
	if old != nil {
		if ks, err = ParseKeys(old); err != nil {
			return nil, fmt.Errorf("certify: %s: %w", r.root.join(KeysPath), err)
		}
		if err := checkPrevious(ks, old, oldSig, o.Key); err != nil {
			return nil, fmt.Errorf("certify: %s: %w", r.root.join(KeysPath), err)
		}
	}
	now := o.Now().UTC()
	if err := ks.change(o, now); err != nil {
		return nil, fmt.Errorf("certify: %w", err)
	}
	data, err := EncodeKeys(ks)
	if err != nil {
		return nil, fmt.Errorf("certify: %w", err)
	}
	sigs := []sign.Signature{sign.SignKeys(o.Key, data)}
	if old != nil && oldSig != nil {
		if prev, err := ParseSig(oldSig); err == nil {
			for _, g := range prev {
				if _, err := sign.VerifyKeys(publicKeys(o.Key), old, []sign.Signature{g}); err == nil {
					sigs = append(sigs, g)
				}
			}
		}
	}
	sd, err := EncodeSig(sigs)
	if err != nil {
		return nil, fmt.Errorf("certify: %w", err)
	}
	if err := r.writeRoot(KeysSigPath, sd); err != nil {
		return nil, fmt.Errorf("certify: %w", err)
	}
	if err := r.writeRoot(KeysPath, data); err != nil {
		return nil, fmt.Errorf("certify: %w", err)
	}
	return ks, nil
}

// change applies o to the statement: revocations, then the keys to add
// or renew, then the next version.
func (ks *KeyStatement) change(o CertifyOptions, now time.Time) error {
	for _, id := range o.Revoke {
		if len(id) != 32 || !lowerHex(id) {
			return fmt.Errorf("%w: revoke %q: not a key ID (32 lowercase hex)", txstore.ErrInvalid, clip(id))
		}
		ks.Keys = slices.DeleteFunc(ks.Keys, func(k CertifiedKey) bool { return k.ID == id })
		if !slices.Contains(ks.Revoked, id) {
			ks.Revoked = append(ks.Revoked, id)
		}
	}
	add := func(pub sign.PublicKey, role string, exp time.Time) error {
		if slices.Contains(ks.Revoked, pub.ID) {
			return fmt.Errorf("%w: key %s was revoked; a revoked key is never trusted again", txstore.ErrInvalid, pub.ID)
		}
		ks.Keys = slices.DeleteFunc(ks.Keys, func(k CertifiedKey) bool { return k.ID == pub.ID })
		ks.Keys = append(ks.Keys, CertifiedKey{ID: pub.ID, Public: PublicPEM(pub.Key), Role: role, Expires: exp})
		return nil
	}
	for _, k := range o.Online {
		if err := add(k, RoleOnline, now.Add(o.Expires)); err != nil {
			return err
		}
	}
	for _, k := range o.Root {
		if err := add(k, RoleRoot, time.Time{}); err != nil {
			return err
		}
	}
	ks.Version++
	ks.Issued = now
	return nil
}

// checkPrevious refuses to build on a statement the signing root did not
// sign (someone wrote keys.json into the repository: its keys would be
// carried into the new statement under the root's signature), unless that
// statement names the signer as a root (the new root after a rotation).
func checkPrevious(ks *KeyStatement, data, sigData []byte, priv ed25519.PrivateKey) error {
	pub := publicKeys(priv)
	if sigData != nil {
		if sigs, err := ParseSig(sigData); err == nil {
			if _, err := sign.VerifyKeys(pub, data, sigs); err == nil {
				return nil
			}
		}
	}
	for _, k := range ks.Keys {
		if k.ID == pub[0].ID && k.Role == RoleRoot {
			return nil
		}
	}
	return fmt.Errorf("%w: the statement there is not signed by this key (%s), nor does it name it a root: remove keys.json and keys.sig if they are not yours, or sign with the root that made them", ErrBadKeys, pub[0].ID)
}
