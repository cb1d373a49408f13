package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/fsx"
	"golang.org/x/sys/unix"
)

// Freshness errors, for errors.Is.
var (
	// ErrRollback: the index is older than one this device already
	// accepted from the same repository (a lower sequence number, or the
	// same number with other bytes).
	ErrRollback = errors.New("repository index rollback refused")
	// ErrExpired: the index's expiry has passed (a frozen mirror, or a
	// repository nobody refreshes).
	ErrExpired = errors.New("repository index has expired")
	// ErrOldFormat: an index of format 1 (no sequence, expiry or pinned
	// metadata), which pull no longer accepts.
	ErrOldFormat = errors.New("repository index has the old format 1")
	// ErrDowngrade: the selected tx is older than the default and the
	// pull would make it the default.
	ErrDowngrade = errors.New("tx is older than the current default")
)

// RemotesDir is where a store keeps what it accepted from each repository:
// STORE/remotes/<repository id>.json.
const RemotesDir = "remotes"

// maxRemoteFile bounds one remote state file as read back.
const maxRemoteFile = 64 << 10

// Remote is what a device last accepted from one repository: the floor
// for the next index (rollback) and when it last saw a fresh one
// (freeze). Keyed by the repository's identity, not its URL, so another
// mirror of the same repository is held to the same floor.
type Remote struct {
	Repository  string    `json:"repository"`
	Origin      string    `json:"origin"` // the URL it was last pulled from
	Sequence    uint64    `json:"sequence"`
	IndexSHA256 string    `json:"index_sha256"`
	Updated     time.Time `json:"updated"` // the index's "updated"
	Expires     time.Time `json:"expires"` // the index's "expires"
	Checked     time.Time `json:"checked"` // when this device accepted it
	VerifiedBy  string    `json:"verified_by,omitempty"`
	// KeyID signed the index ("" unverified): when a statement revokes
	// it, the floor it set goes (a stolen key's high sequence numbers
	// must not lock the repository out: TUF's fast-forward recovery).
	KeyID string `json:"key_id,omitempty"`
}

// Fresh reports whether the index last accepted is still valid at now.
func (r *Remote) Fresh(now time.Time) bool { return now.Before(r.Expires) }

// checkFresh decides whether index ix (bytes data) may be believed at now,
// given the last one accepted from its repository (prev, or nil).
func checkFresh(ix *Index, data []byte, prev *Remote, now time.Time, url string) error {
	if ix.Format != FormatVersion {
		return fmt.Errorf("%s: %w: it has no sequence number, expiry or pinned metadata; publish to the repository again with this txboot to upgrade it", url, ErrOldFormat)
	}
	if prev != nil {
		sum := sha256.Sum256(data)
		switch {
		case ix.Sequence < prev.Sequence:
			return fmt.Errorf("%s: %w: index sequence %d is older than sequence %d, accepted %s from %s",
				url, ErrRollback, ix.Sequence, prev.Sequence, prev.Checked.Format(time.RFC3339), prev.Origin)
		case ix.Sequence == prev.Sequence && hex.EncodeToString(sum[:]) != prev.IndexSHA256:
			return fmt.Errorf("%s: %w: index sequence %d has other content than the index %d accepted %s (two indexes with one number: the repository was restored from an older copy and published, or a signing key is misused; a new publish moves past it)",
				url, ErrRollback, ix.Sequence, prev.Sequence, prev.Checked.Format(time.RFC3339))
		}
	}
	if !now.Before(ix.Expires) {
		return fmt.Errorf("%s: %w: expired %s (%s ago; sequence %d, updated %s); the repository must be published again (publish refreshes the expiry)",
			url, ErrExpired, ix.Expires.Format(time.RFC3339), now.Sub(ix.Expires).Round(time.Second), ix.Sequence, ix.Updated.Format(time.RFC3339))
	}
	return nil
}

// remoteName is the file name of a repository's state.
func remoteName(id string) (string, error) {
	if len(id) != 32 || !lowerHex(id) {
		return "", fmt.Errorf("%w: repository %q", ErrBadIndex, clip(id))
	}
	return id + ".json", nil
}

// LoadRemote reads the state kept for repository id in storeDir, nil if
// there is none.
func LoadRemote(storeDir, id string) (*Remote, error) {
	name, err := remoteName(id)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(storeDir, RemotesDir, name)
	data, err := readRegular(p, maxRemoteFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Remote
	if err := decodeStrict(data, &r); err != nil || r.Repository != id {
		return nil, fmt.Errorf("remote state %s: unreadable (%v); remove it to accept the repository's current index again", p, err)
	}
	return &r, nil
}

// LoadRemotes reads every repository state in storeDir, sorted by origin.
func LoadRemotes(storeDir string) ([]*Remote, error) {
	ents, err := os.ReadDir(filepath.Join(storeDir, RemotesDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("remote states: %w", err)
	}
	var out []*Remote
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || len(id) != 32 {
			continue // temp files, the lock
		}
		r, err := LoadRemote(storeDir, id)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Origin < out[j].Origin })
	return out, nil
}

// readRegular reads a regular file (not through a symlink) of at most max
// bytes.
func readRegular(p string, max int64) ([]byte, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > max {
		return nil, fmt.Errorf("%s: not a regular file of at most %d bytes", p, max)
	}
	buf := make([]byte, fi.Size())
	if _, err := f.ReadAt(buf, 0); err != nil && fi.Size() > 0 {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return buf, nil
}

// acceptIndex checks index ix (bytes data) against the state kept for its
// repository and, if it may be believed, records it durably as the new
// floor before anything it names is fetched. It holds the remotes lock
// across the check and the write, so two pulls cannot both move the floor.
func acceptIndex(storeDir string, ix *Index, data []byte, origin, verified string, now time.Time, url string) error {
	if ix.Format != FormatVersion {
		return checkFresh(ix, data, nil, now, url)
	}
	dir := filepath.Join(storeDir, RemotesDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("remote state: %w", err)
	}
	lfd, err := unix.Open(filepath.Join(dir, ".lock"), unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("remote state lock: %w", err)
	}
	defer unix.Close(lfd)
	if err := unix.Flock(lfd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("remote state lock: %w", err)
	}
	prev, err := LoadRemote(storeDir, ix.Repository)
	if err != nil {
		return err
	}
	if err := checkFresh(ix, data, prev, now, url); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	r := &Remote{Repository: ix.Repository, Origin: origin, Sequence: ix.Sequence, IndexSHA256: hex.EncodeToString(sum[:]),
		Updated: ix.Updated, Expires: ix.Expires, Checked: now.UTC().Truncate(time.Second), VerifiedBy: verified}
	if id, _, ok := strings.Cut(verified, " "); ok {
		r.KeyID = id
	}
	return saveRemote(dir, r)
}

// forgetRevoked removes the floors set by indexes that a now revoked key
// signed: every later index must be signed by another key anyway.
func forgetRevoked(storeDir string, revoked map[string]bool) error {
	rs, err := LoadRemotes(storeDir)
	if err != nil || len(rs) == 0 {
		return err
	}
	dir := filepath.Join(storeDir, RemotesDir)
	for _, r := range rs {
		if r.KeyID == "" || !revoked[r.KeyID] {
			continue
		}
		name, _ := remoteName(r.Repository)
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("remote state: %w", err)
		}
	}
	return fsx.SyncDir(dir)
}

// saveRemote writes r durably.
func saveRemote(dir string, r *Remote) error {
	name, err := remoteName(r.Repository)
	if err != nil {
		return err
	}
	b, err := encodeJSON(r)
	if err != nil {
		return err
	}
	return writeDurable(dir, name, b)
}

// checkDowngrade refuses to make it the default when the current default
// is a later tx of the same index: a pull only moves a device forward
// unless told otherwise. A default the index does not list (a local
// commit, a tx from elsewhere) is not judged.
func checkDowngrade(s *txstore.Store, ix *Index, it *IndexTx) error {
	def, err := s.Default()
	if err != nil || def == 0 {
		return err
	}
	d, err := s.Get(def)
	if err != nil {
		return err
	}
	cur := ix.Find(d.Digest)
	if cur == nil || cur.Digest == it.Digest || !txLess(it, cur) {
		return nil
	}
	return fmt.Errorf("%w: %s (version %s, created %s) is older than the default tx %d (version %s, created %s); pass --allow-downgrade to make it the default, or --no-default",
		ErrDowngrade, it.Digest, it.Version, it.Created.Format(time.RFC3339), d.ID, cur.Version, cur.Created.Format(time.RFC3339))
}
