// Package sign is txboot's chain of trust: ed25519 keys in the PEM files
// `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write,
// signatures over a transaction's digest (which names its manifest, which
// names every object by SHA-256), and signatures over a repository index.
// Both sides use it: bootctl signs and checks pulls, initagent checks what
// it boots. Messages are domain-separated so that a signature made for one
// purpose never verifies for another.
package sign

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Sentinel errors, for errors.Is.
var (
	// ErrKey is a key file that is not an ed25519 key in PEM.
	ErrKey = errors.New("not an ed25519 key")
	// ErrUnsigned: no signature at all, or none by a trusted key.
	ErrUnsigned = errors.New("no signature by a trusted key")
	// ErrBadSignature: a signature by a trusted key that does not verify.
	ErrBadSignature = errors.New("signature does not verify")
)

// Domains of the signed messages.
const (
	txDomain    = "txboot tx v1\n"
	indexDomain = "txboot index v1\n"
	keysDomain  = "txboot keys v1\n"
	imageDomain = "txboot image v1\n"
)

// maxKeyFile bounds what is read as a key file (a PEM key is < 200 bytes).
const maxKeyFile = 64 << 10

// PublicKey is a trusted key and where it came from.
type PublicKey struct {
	Key    ed25519.PublicKey
	ID     string // KeyID(Key)
	Source string // file it was read from, for messages
}

// Signature is one signature and the key that made it.
type Signature struct {
	KeyID string `json:"key_id"`
	Sig   []byte `json:"sig"` // 64 bytes; base64 in JSON
}

// KeyID names a public key: hex SHA-256 of its PKIX DER encoding (what
// `openssl pkey -pubout -outform DER | sha256sum` prints), first 16 bytes.
func KeyID(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		// Cannot happen for a 32-byte ed25519 key; keep an ID anyway.
		der = pub
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:16])
}

func pemBlock(data []byte, want string) (*pem.Block, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrKey)
	}
	if b.Type != want {
		return nil, fmt.Errorf("%w: PEM block %q, want %q", ErrKey, b.Type, want)
	}
	return b, nil
}

// ParsePrivateKey reads a PKCS#8 "PRIVATE KEY" PEM block holding an
// ed25519 key.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	b, err := pemBlock(data, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: a %T", ErrKey, k)
	}
	return priv, nil
}

// ParsePublicKey reads a PKIX "PUBLIC KEY" PEM block holding an ed25519
// key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	b, err := pemBlock(data, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: a %T", ErrKey, k)
	}
	return pub, nil
}

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxKeyFile {
		return nil, fmt.Errorf("%s: %w: not a regular file of at most %d bytes", path, ErrKey, maxKeyFile)
	}
	buf := make([]byte, fi.Size())
	if _, err := f.ReadAt(buf, 0); err != nil && fi.Size() > 0 {
		return nil, err
	}
	return buf, nil
}

// LoadPrivateKey reads a private key file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := readSmall(path)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKey reads a public key file.
func LoadPublicKey(path string) (PublicKey, error) {
	data, err := readSmall(path)
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key %s: %w", path, err)
	}
	k, err := ParsePublicKey(data)
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key %s: %w", path, err)
	}
	return PublicKey{Key: k, ID: KeyID(k), Source: path}, nil
}

// LoadTrustDirs reads every *.pem in the directories (missing directories
// are skipped: no keys there). A file that is not a public key is an
// error, never silently dropped: a typo in a trust store must not turn
// checking off. Duplicates (same key ID) are kept once.
func LoadTrustDirs(dirs ...string) ([]PublicKey, error) {
	var keys []PublicKey
	seen := map[string]bool{}
	for _, d := range dirs {
		names, err := filepath.Glob(filepath.Join(d, "*.pem"))
		if err != nil {
			return nil, fmt.Errorf("trusted keys in %s: %w", d, err)
		}
		sort.Strings(names)
		for _, n := range names {
			k, err := LoadPublicKey(n)
			if err != nil {
				return nil, err
			}
			if !seen[k.ID] {
				seen[k.ID] = true
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// GenerateKey makes a new key pair as PEM (PKCS#8 private, PKIX public),
// the same files openssl makes.
func GenerateKey() (privPEM, pubPEM []byte, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	p8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	pk, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pk}), nil
}

func txMessage(digest string) []byte { return []byte(txDomain + digest) }

func indexMessage(data []byte) []byte { return domainMessage(indexDomain, data) }

func domainMessage(domain string, data []byte) []byte {
	m := make([]byte, 0, len(domain)+len(data))
	return append(append(m, domain...), data...)
}

func signWith(priv ed25519.PrivateKey, msg []byte) Signature {
	return Signature{KeyID: KeyID(priv.Public().(ed25519.PublicKey)), Sig: ed25519.Sign(priv, msg)}
}

// SignTx signs a transaction digest ("sha256:<64 hex>").
func SignTx(priv ed25519.PrivateKey, digest string) Signature {
	return signWith(priv, txMessage(digest))
}

// imageMessage binds a tx's sealed image to the tx: the image's
// fs-verity digest is a function of the manifest, but only a rebuild could
// show that, and PID 1 does not rebuild.
func imageMessage(digest, image string) []byte {
	return []byte(imageDomain + digest + "\n" + image)
}

// SignImage signs the pair (tx digest, its image's fs-verity digest).
func SignImage(priv ed25519.PrivateKey, digest, image string) Signature {
	return signWith(priv, imageMessage(digest, image))
}

// VerifyImage is VerifyTx for the pair SignImage signs.
func VerifyImage(keys []PublicKey, digest, image string, sigs []Signature) (PublicKey, error) {
	return verify(keys, imageMessage(digest, image), sigs, "image "+image+" of tx "+digest)
}

// SignIndex signs a repository index's exact bytes.
func SignIndex(priv ed25519.PrivateKey, index []byte) Signature {
	return signWith(priv, indexMessage(index))
}

// VerifyTx checks that one of sigs is a valid signature of digest by one
// of keys, and returns that key. A signature by a trusted key that does
// not verify is ErrBadSignature (tampering, said as such); no signature by
// any trusted key is ErrUnsigned.
func VerifyTx(keys []PublicKey, digest string, sigs []Signature) (PublicKey, error) {
	return verify(keys, txMessage(digest), sigs, "tx "+digest)
}

// SignKeys signs a repository key statement's exact bytes (keys.json):
// its own domain, so no index or tx signature can pass for one.
func SignKeys(priv ed25519.PrivateKey, statement []byte) Signature {
	return signWith(priv, domainMessage(keysDomain, statement))
}

// VerifyKeys is VerifyTx for a key statement.
func VerifyKeys(keys []PublicKey, statement []byte, sigs []Signature) (PublicKey, error) {
	return verify(keys, domainMessage(keysDomain, statement), sigs, "key statement")
}

// VerifyIndex is VerifyTx for a repository index.
func VerifyIndex(keys []PublicKey, index []byte, sigs []Signature) (PublicKey, error) {
	return verify(keys, indexMessage(index), sigs, "index")
}

func verify(keys []PublicKey, msg []byte, sigs []Signature, what string) (PublicKey, error) {
	var bad []string
	for _, s := range sigs {
		for _, k := range keys {
			if k.ID != s.KeyID {
				continue
			}
			if len(s.Sig) == ed25519.SignatureSize && ed25519.Verify(k.Key, msg, s.Sig) {
				return k, nil
			}
			bad = append(bad, k.ID+" ("+k.Source+")")
		}
	}
	if len(bad) > 0 {
		return PublicKey{}, fmt.Errorf("%s: %w: key %s", what, ErrBadSignature, strings.Join(bad, ", "))
	}
	ids := make([]string, len(sigs))
	for i, s := range sigs {
		ids[i] = s.KeyID
	}
	if len(sigs) == 0 {
		return PublicKey{}, fmt.Errorf("%s: %w: not signed", what, ErrUnsigned)
	}
	return PublicKey{}, fmt.Errorf("%s: %w: signed by %s, trusted: %d key(s)", what, ErrUnsigned, strings.Join(ids, ", "), len(keys))
}
