// Package trust is the system's trust store: the ed25519 keys bootctl
// checks a repository's index.sig and a tx's signatures with, and the keys
// every initrd it builds carries. Trust anchors never come from what they
// judge: a tx's own keys count only once that tx has booted and been
// proven good, and the caller, not the tx, decides that.
package trust

import (
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore/sign"
)

// Where keys live.
const (
	// EtcDir, under the system root: the administrator's keys.
	EtcDir = "etc/txboot/trusted.d"
	// KeysDir, under the store: keys accepted through signed rotation.
	KeysDir = "trust/keys"
	// RevokedDir, under the store: a file named by a key ID revokes it.
	RevokedDir = "trust/revoked"
	// TreeDir, inside a tx's /usr: its vendor's keys, trusted only from
	// the booted tx once it is good.
	TreeDir = "lib/txboot/trusted.d"
)

// ErrTrustFile is a key file or directory that cannot be used: a
// symlink, not a regular file or directory, or not an ed25519 public key.
// Nothing is skipped silently: a typo in a trust store must not turn
// checking off.
var ErrTrustFile = errors.New("trusted key file cannot be used")

// Set is the system's trust store: the keys a pull checks index.sig with
// and the keys every initrd carries.
type Set struct {
	Keys  []sign.PublicKey // in source order (Load's), one per key ID
	Files []string         // the file each key was read from, sorted: mkinitramfs --trust
}

// IDs are the key IDs of the set, in Keys' order.
func (s *Set) IDs() []string {
	ids := make([]string, len(s.Keys))
	for i, k := range s.Keys {
		ids[i] = k.ID
	}
	return ids
}

// Load reads the trust store of the system at root whose store is
// storeDir (ROOT/.txboot). bootedGoodTree is the /usr tree of the booted
// tx when the store records it as good, else "" (offline, not booted, on
// trial, bad): the caller decides. Sources, in order, deduplicated by key
// ID: root/EtcDir/*.pem, storeDir/KeysDir/*.pem, bootedGoodTree/TreeDir/*.pem.
// A key whose ID has a file in storeDir/RevokedDir is left out of every
// source. Missing directories hold no keys; any file that cannot be used
// is an error naming it (ErrTrustFile or sign.ErrKey).
func Load(root, storeDir, bootedGoodTree string) (*Set, error) {
	return load(root, storeDir, bootedGoodTree, nil)
}

// LoadLenient is Load for what only shows keys (status): a source that
// cannot be used is passed to warn and the rest is still read. If the
// revocations cannot be read, no key is trusted.
func LoadLenient(root, storeDir, bootedGoodTree string, warn func(error)) *Set {
	s, _ := load(root, storeDir, bootedGoodTree, warn)
	return s
}

func load(root, storeDir, bootedGoodTree string, warn func(error)) (*Set, error) {
	revoked, err := Revoked(storeDir)
	if err != nil {
		if warn != nil {
			warn(err)
			return &Set{}, err
		}
		return nil, err
	}
	type source struct{ base, rel string }
	srcs := []source{{root, EtcDir}, {storeDir, KeysDir}}
	if bootedGoodTree != "" {
		srcs = append(srcs, source{bootedGoodTree, TreeDir})
	}
	set := &Set{}
	seen := map[string]bool{}
	for _, src := range srcs {
		keys, err := readDir(src.base, src.rel, warn)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if seen[k.ID] || revoked[k.ID] || (src.rel == KeysDir && expired(k.Source, time.Now())) {
				continue
			}
			seen[k.ID] = true
			set.Keys = append(set.Keys, k)
			set.Files = append(set.Files, k.Source)
		}
	}
	sort.Strings(set.Files)
	return set, nil
}

// Revoked is the set of key IDs revoked on this system: the names in
// storeDir/RevokedDir (a missing directory revokes nothing).
func Revoked(storeDir string) (map[string]bool, error) {
	dir, err := openDir(storeDir, RevokedDir)
	if err != nil || dir == "" {
		return map[string]bool{}, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("revoked keys: %w", err)
	}
	out := make(map[string]bool, len(ents))
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out, nil
}

// Files lists base/rel/*.pem, sorted, without following a symlink
// anywhere beneath base, each checked to be an ed25519 public key. A
// missing directory holds no keys; a symlink, a non-regular *.pem or one
// that is not an ed25519 public key is an error naming the path.
func Files(base, rel string) ([]string, error) {
	keys, err := readDir(base, rel, nil)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		out = append(out, k.Source)
	}
	return out, nil
}

// openDir walks base/rel one component at a time with lstat: a tx's tree
// is resolved against the host's root by the kernel, so a link there would
// read a host file as the tx's key. "" when a component is missing.
func openDir(base, rel string) (string, error) {
	p := base
	for _, c := range strings.Split(rel, "/") {
		p = filepath.Join(p, c)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("trusted keys: %w", err)
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("trusted keys: %s: %w: not a directory (symlinks are not followed)", p, ErrTrustFile)
		}
	}
	return p, nil
}

// readDir reads the keys of base/rel/*.pem in name order. With warn, a
// file that cannot be used is warned about and left out; without, it is
// the error.
func readDir(base, rel string, warn func(error)) ([]sign.PublicKey, error) {
	fail := func(err error) ([]sign.PublicKey, error) {
		if warn != nil {
			warn(err)
			return nil, nil
		}
		return nil, err
	}
	dir, err := openDir(base, rel)
	if err != nil || dir == "" {
		if err != nil {
			return fail(err)
		}
		return nil, nil
	}
	ents, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return fail(fmt.Errorf("trusted keys: %w", err))
	}
	var out []sign.PublicKey
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".pem") {
			continue // the convention sign.LoadTrustDirs follows
		}
		f := filepath.Join(dir, e.Name())
		if !e.Type().IsRegular() {
			if _, err := fail(fmt.Errorf("trusted keys: %s: %w: not a regular file (symlinks are not followed)", f, ErrTrustFile)); err != nil {
				return nil, err
			}
			continue
		}
		k, err := sign.LoadPublicKey(f)
		if err != nil {
			if _, err := fail(fmt.Errorf("trusted keys: %w", err)); err != nil {
				return nil, err
			}
			continue
		}
		out = append(out, k)
	}
	return out, nil
}

// expired reports whether a certified key file's Expires header (written
// by the pull that accepted its key statement) has passed: an online key
// is trusted only until then, even before the next pull removes its file.
func expired(file string, now time.Time) bool {
	data, err := os.ReadFile(file)
	if err != nil {
		return true
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Headers["Expires"] == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339, b.Headers["Expires"])
	return err != nil || !now.Before(t)
}
