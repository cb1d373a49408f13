package repo

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/sign"
	"golang.org/x/sys/unix"
)

// The device's side of key statements, under STORE/trust (TrustDir):
//
//	statement.json  the newest statement accepted, as served (the floor)
//	keys/<id>.pem   its keys that are valid now (read by the trust store,
//	                so they go into initrds); PEM headers say role and expiry
//	revoked/<id>    every key ID ever revoked: never trusted again
const (
	TrustDirName  = "trust"
	statementFile = "statement.json"
)

// DeviceKeys is what a device accepted through statements.
type DeviceKeys struct {
	Statement *KeyStatement   // nil: none accepted
	Raw       []byte          // its bytes
	Revoked   map[string]bool // sticky
}

// LoadDeviceKeys reads STORE/trust.
func LoadDeviceKeys(trustDir string) (*DeviceKeys, error) {
	dk := &DeviceKeys{Revoked: map[string]bool{}}
	ents, err := os.ReadDir(filepath.Join(trustDir, "revoked"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("revoked keys: %w", err)
	}
	for _, e := range ents {
		if len(e.Name()) == 32 && lowerHex(e.Name()) {
			dk.Revoked[e.Name()] = true
		}
	}
	raw, err := readRegular(filepath.Join(trustDir, statementFile), MaxKeysSize)
	if errors.Is(err, fs.ErrNotExist) {
		return dk, nil
	}
	if err != nil {
		return nil, err
	}
	if dk.Statement, err = ParseKeys(raw); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(trustDir, statementFile), err)
	}
	dk.Raw = raw
	return dk, nil
}

// roots are the keys that may sign a statement: the keys trusted outright
// (the device's own trust store, less the online keys a statement
// certified, which it also holds) and the statement's root keys, never a
// revoked one.
func (dk *DeviceKeys) roots(trusted []sign.PublicKey, now time.Time) []sign.PublicKey {
	online := map[string]bool{}
	var out []sign.PublicKey
	if dk.Statement != nil {
		for i := range dk.Statement.Keys {
			k := &dk.Statement.Keys[i]
			if k.Role == RoleOnline {
				online[k.ID] = true
			} else if pub, err := k.PublicKey(); err == nil && k.Valid(now) {
				out = append(out, pub)
			}
		}
	}
	for _, k := range trusted {
		if !online[k.ID] {
			out = append(out, k)
		}
	}
	return dk.drop(out)
}

// drop removes revoked keys.
func (dk *DeviceKeys) drop(keys []sign.PublicKey) []sign.PublicKey {
	return slices.DeleteFunc(slices.Clone(keys), func(k sign.PublicKey) bool { return dk.Revoked[k.ID] })
}

// trusted is what checks an index and a tx after statement ks: the
// caller's keys less every revoked key and every key the statement does
// not (or no longer) vouch for, plus the statement's valid keys.
func (dk *DeviceKeys) trusted(base []sign.PublicKey, now time.Time) []sign.PublicKey {
	var out []sign.PublicKey
	seen := map[string]bool{}
	certified := map[string]bool{}
	if dk.Statement != nil {
		for i := range dk.Statement.Keys {
			k := &dk.Statement.Keys[i]
			certified[k.ID] = true
			if pub, err := k.PublicKey(); err == nil && k.Valid(now) && !seen[pub.ID] {
				seen[pub.ID] = true
				out = append(out, pub)
			}
		}
	}
	for _, k := range base {
		if !seen[k.ID] && !certified[k.ID] {
			seen[k.ID] = true
			out = append(out, k)
		}
	}
	return dk.drop(out)
}

// keyStatement fetches keys.json and keys.sig (a repository without them
// has none: nothing changes), checks the statement with the device's root
// keys and its version against the floor, applies a newer one durably,
// and returns the keys an index must now be signed with.
func (p *puller) keyStatement(ctx context.Context, trustDir string) ([]sign.PublicKey, error) {
	data, sigs, err := p.fetchStatement(ctx)
	if err != nil {
		return nil, err
	}
	// Another pull may accept a statement while this one fetches: the
	// check against the floor and the write happen under one lock, on the
	// state as it is then.
	unlock, err := lockTrust(trustDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	now := p.o.Now()
	// Keys that expired since the last pull leave the trust store (and
	// the next initrds) whatever the repository serves.
	if err := SyncKeyFiles(trustDir, now); err != nil {
		return nil, err
	}
	dk, err := LoadDeviceKeys(trustDir)
	if err != nil {
		return nil, err
	}
	if data != nil {
		if err := p.acceptStatement(trustDir, dk, data, sigs, now); err != nil {
			return nil, err
		}
	}
	return dk.trusted(p.o.Trusted, now), nil
}

// fetchStatement gets the repository's key statement and its signatures;
// nil data when the repository has none.
func (p *puller) fetchStatement(ctx context.Context) (data []byte, sigs []sign.Signature, err error) {
	data, err = p.get(ctx, KeysPath, MaxKeysSize)
	if isNotFound(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	url := p.f.URL(KeysPath)
	raw, err := p.get(ctx, KeysSigPath, MaxKeysSize)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w: key statement without a signature: %w", url, ErrBadKeys, err)
	}
	if sigs, err = ParseSig(raw); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p.f.URL(KeysSigPath), err)
	}
	return data, sigs, nil
}

// acceptStatement checks a fetched statement with the device's root keys
// and its version against the floor, and applies a newer one durably
// (updating dk). The caller holds the trust lock.
func (p *puller) acceptStatement(trustDir string, dk *DeviceKeys, data []byte, sigs []sign.Signature, now time.Time) error {
	url := p.f.URL(KeysPath)
	ks, err := ParseKeys(data)
	if err != nil {
		return fmt.Errorf("%s: %w", url, err)
	}
	if _, err := sign.VerifyKeys(dk.roots(p.o.Trusted, now), data, sigs); err != nil {
		return fmt.Errorf("%s: %w: no root key of this device signed it: %w", url, ErrBadKeys, err)
	}
	if old := dk.Statement; old != nil {
		switch {
		case ks.Version < old.Version:
			return fmt.Errorf("%s: %w: key statement version %d is older than version %d, accepted before", url, ErrRollback, ks.Version, old.Version)
		case ks.Version == old.Version && !bytes.Equal(data, dk.Raw):
			return fmt.Errorf("%s: %w: key statement version %d has other content than the one accepted", url, ErrRollback, ks.Version)
		case ks.Version == old.Version:
			return nil
		}
	}
	if err := applyStatement(trustDir, ks, data, now); err != nil {
		return err
	}
	for _, id := range ks.Revoked {
		dk.Revoked[id] = true
	}
	dk.Statement, dk.Raw = ks, data
	return forgetRevoked(filepath.Dir(trustDir), dk.Revoked)
}

// lockTrust takes STORE/trust/.lock, which serializes the key statement's
// check and update between pulls.
func lockTrust(trustDir string) (func(), error) {
	if err := os.MkdirAll(trustDir, 0o700); err != nil {
		return nil, fmt.Errorf("trust state: %w", err)
	}
	path := filepath.Join(trustDir, ".lock")
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("trust state lock %s: %w", path, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("trust state lock %s: %w", path, err)
	}
	return func() { unix.Close(fd) }, nil
}

// applyStatement makes ks the device's statement: revocations first (they
// only ever remove trust), then the statement (the floor), then the key
// files the trust store reads. Each write is durable before the next; a
// crash in between is finished by SyncKeyFiles at the next pull.
func applyStatement(trustDir string, ks *KeyStatement, data []byte, now time.Time) error {
	rdir := filepath.Join(trustDir, "revoked")
	if err := os.MkdirAll(rdir, 0o700); err != nil {
		return fmt.Errorf("trust state: %w", err)
	}
	for _, id := range ks.Revoked {
		if err := writeDurable(rdir, id, nil); err != nil {
			return err
		}
	}
	if err := writeDurable(trustDir, statementFile, data); err != nil {
		return err
	}
	return SyncKeyFiles(trustDir, now)
}

// SyncKeyFiles makes STORE/trust/keys hold exactly the accepted
// statement's keys that are valid at now and not revoked: expired,
// revoked and no longer certified keys leave the trust store (and the
// next initrds).
func SyncKeyFiles(trustDir string, now time.Time) error {
	dk, err := LoadDeviceKeys(trustDir)
	if err != nil || dk.Statement == nil {
		return err
	}
	kdir := filepath.Join(trustDir, "keys")
	if err := os.MkdirAll(kdir, 0o700); err != nil {
		return fmt.Errorf("trust state: %w", err)
	}
	want := map[string][]byte{}
	for i := range dk.Statement.Keys {
		k := &dk.Statement.Keys[i]
		if !k.Valid(now) || dk.Revoked[k.ID] {
			continue
		}
		b, _ := pem.Decode([]byte(k.Public))
		hdr := map[string]string{"Role": k.Role, "Statement-Version": fmt.Sprint(dk.Statement.Version)}
		if !k.Expires.IsZero() {
			hdr["Expires"] = k.Expires.Format(time.RFC3339)
		}
		want[k.ID+".pem"] = pem.EncodeToMemory(&pem.Block{Type: b.Type, Headers: hdr, Bytes: b.Bytes})
	}
	ents, err := os.ReadDir(kdir)
	if err != nil {
		return fmt.Errorf("trust state: %w", err)
	}
	for _, e := range ents {
		if _, ok := want[e.Name()]; !ok {
			if err := os.Remove(filepath.Join(kdir, e.Name())); err != nil {
				return fmt.Errorf("trust state: %w", err)
			}
		}
	}
	for name, b := range want {
		if old, err := readRegular(filepath.Join(kdir, name), MaxKeysSize); err == nil && bytes.Equal(old, b) {
			continue
		}
		if err := writeDurable(kdir, name, b); err != nil {
			return err
		}
	}
	return fsx.SyncDir(kdir)
}

// KeyExpiry reads the Expires header SyncKeyFiles writes into a key file
// (zero: none).
func KeyExpiry(pemData []byte) time.Time {
	b, _ := pem.Decode(pemData)
	if b == nil {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339, b.Headers["Expires"])
	return t
}

// writeDurable writes dir/name durably (fsx.WriteFile), 0600: device
// state, not served.
func writeDurable(dir, name string, data []byte) error {
	return fsx.WriteFile(dir, name, data, 0o600)
}

// txSignatures keeps the tx's signatures, and its image's, that verify
// with the keys the index was checked with: a record carries only
// signatures this device could check. A trusted key's signature that does
// not verify is tampering, and fails the pull.
func (p *puller) txSignatures(it *IndexTx) (*IndexTx, error) {
	c := *it
	var err error
	c.Signatures, err = p.trustedSigs(it.Signatures, func(g []sign.Signature) (sign.PublicKey, error) {
		return sign.VerifyTx(p.o.Trusted, it.Digest, g)
	})
	if err != nil {
		return nil, err
	}
	c.ImageSignatures, err = p.trustedSigs(it.ImageSignatures, func(g []sign.Signature) (sign.PublicKey, error) {
		return sign.VerifyImage(p.o.Trusted, it.Digest, it.Image, g)
	})
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// trustedSigs is the signatures of sigs that verify (each alone) by a
// trusted key, the key that made it.
func (p *puller) trustedSigs(sigs []sign.Signature, verify func([]sign.Signature) (sign.PublicKey, error)) ([]sign.Signature, error) {
	var out []sign.Signature
	for _, g := range sigs {
		k, err := verify([]sign.Signature{g})
		if errors.Is(err, sign.ErrBadSignature) {
			return nil, fmt.Errorf("%s: %w", p.f.URL(IndexPath), err)
		}
		if err == nil && k.ID == g.KeyID {
			out = append(out, g)
		}
	}
	return out, nil
}
