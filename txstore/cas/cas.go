// Package cas is txboot's content-addressed object store: raw file contents
// named by SHA-256, stored with their write bits stripped so trees can
// hardlink them without ever being able to write through.
//
// Hardlinks share one inode, so an object is keyed by content *and* the
// inode attributes a tree needs (permission bits without write bits, uid,
// gid): objects/<h0h1>/<hex>.<mode>[.<uid>.<gid>].
package cas

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Hash is a SHA-256 content hash.
type Hash [32]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash parses 64 lowercase hex digits.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 64 || strings.ToLower(s) != s {
		return h, fmt.Errorf("%w: %q", ErrBadHash, s)
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("%w: %q", ErrBadHash, s)
	}
	return h, nil
}

// ErrBadHash reports a malformed hash string.
var ErrBadHash = errors.New("malformed sha256")

// Key identifies one object: content plus the inode attributes it carries.
type Key struct {
	Hash Hash
	Mode uint32 // permission bits (07777) with write bits stripped
	UID  uint32
	GID  uint32
}

// NewKey strips write bits from mode so an object can never be written through.
func NewKey(h Hash, mode, uid, gid uint32) Key {
	return Key{Hash: h, Mode: mode & 07777 &^ 0222, UID: uid, GID: gid}
}

// Name is the object's file name inside its fan-out directory.
func (k Key) Name() string {
	var b strings.Builder
	b.Grow(64 + 16)
	b.WriteString(k.Hash.String())
	b.WriteByte('.')
	b.WriteString(fmt.Sprintf("%04o", k.Mode))
	if k.UID != 0 || k.GID != 0 {
		b.WriteByte('.')
		b.WriteString(strconv.FormatUint(uint64(k.UID), 10))
		b.WriteByte('.')
		b.WriteString(strconv.FormatUint(uint64(k.GID), 10))
	}
	return b.String()
}

// RelPath is the object's path relative to the objects directory.
func (k Key) RelPath() string {
	h := k.Hash.String()
	return h[:2] + "/" + k.Name()
}

// ParseName parses an object file name back into a Key (used by GC and fsck).
func ParseName(name string) (Key, error) {
	parts := strings.Split(name, ".")
	if len(parts) != 2 && len(parts) != 4 {
		return Key{}, fmt.Errorf("%w: object name %q", ErrBadHash, name)
	}
	h, err := ParseHash(parts[0])
	if err != nil {
		return Key{}, err
	}
	m, err := strconv.ParseUint(parts[1], 8, 32)
	if err != nil || len(parts[1]) != 4 || m&^07555 != 0 {
		return Key{}, fmt.Errorf("%w: object mode in %q", ErrBadHash, name)
	}
	k := Key{Hash: h, Mode: uint32(m)}
	if len(parts) == 4 {
		u, err1 := strconv.ParseUint(parts[2], 10, 32)
		g, err2 := strconv.ParseUint(parts[3], 10, 32)
		if err1 != nil || err2 != nil {
			return Key{}, fmt.Errorf("%w: object owner in %q", ErrBadHash, name)
		}
		k.UID, k.GID = uint32(u), uint32(g)
	}
	if k.Name() != name { // only the canonical spelling is an object
		return Key{}, fmt.Errorf("%w: non-canonical object name %q", ErrBadHash, name)
	}
	return k, nil
}

// Store is a CAS rooted at Dir (…/.txboot/objects). Temp files are created
// in TmpDir, which must be on the same filesystem.
type Store struct {
	Dir    string
	TmpDir string
}

// Path is the absolute path of an object.
func (s *Store) Path(k Key) string { return filepath.Join(s.Dir, k.RelPath()) }

// Has reports whether the object exists.
func (s *Store) Has(k Key) (bool, error) {
	_, err := os.Lstat(s.Path(k))
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("stat object %s: %w", k.RelPath(), err)
}

// bufPool-free hashing: a 256 KiB buffer per call is cheap next to the I/O.
const bufSize = 256 << 10

// HashFile hashes a regular file without following symlinks and returns the
// hash and the stat taken *before* reading, so callers can detect a file that
// changed under them.
func HashFile(path string) (Hash, unix.Stat_t, error) {
	var h Hash
	var st unix.Stat_t
	f, err := openNoFollow(path)
	if err != nil {
		return h, st, err
	}
	defer f.Close()
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return h, st, fmt.Errorf("fstat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return h, st, fmt.Errorf("%s: not a regular file", path)
	}
	h, err = HashReader(f)
	if err != nil {
		return h, st, fmt.Errorf("read %s: %w", path, err)
	}
	return h, st, nil
}

// HashReader hashes everything r yields.
func HashReader(r io.Reader) (Hash, error) {
	var h Hash
	d := sha256.New()
	buf := make([]byte, bufSize)
	if _, err := io.CopyBuffer(d, r, buf); err != nil {
		return h, err
	}
	copy(h[:], d.Sum(nil))
	return h, nil
}

func openNoFollow(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// Stage copies src into a new temp file under TmpDir with the key's mode and
// owner, and returns the temp path. It does not fsync: the caller makes a batch
// durable with one syncfs(2) and only then publishes with Publish, so nothing
// is visible under objects/ before its data is on disk.
// want is the stat HashFile returned; if src changed since, Stage fails.
func (s *Store) Stage(src string, k Key, want *unix.Stat_t) (string, error) {
	in, err := openNoFollow(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(s.TmpDir, "obj-")
	if err != nil {
		return "", fmt.Errorf("create temp object: %w", err)
	}
	tmp := out.Name()
	fail := func(err error) (string, error) {
		out.Close()
		os.Remove(tmp)
		return "", err
	}
	n, err := io.Copy(out, in) // copy_file_range(2) where the kernel can
	if err != nil {
		return fail(fmt.Errorf("copy %s: %w", src, err))
	}
	if want != nil {
		var st unix.Stat_t
		if err := unix.Fstat(int(in.Fd()), &st); err != nil {
			return fail(fmt.Errorf("fstat %s: %w", src, err))
		}
		if n != want.Size || st.Size != want.Size || st.Mtim != want.Mtim || st.Ctim != want.Ctim || st.Ino != want.Ino {
			return fail(fmt.Errorf("%s changed while it was being committed", src))
		}
	}
	if err := SetAttrs(int(out.Fd()), k.Mode, k.UID, k.GID); err != nil {
		return fail(fmt.Errorf("object %s: %w", k.RelPath(), err))
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("close temp object: %w", err)
	}
	return tmp, nil
}

// StageBytes writes data as a temp object (used for manifests).
func (s *Store) StageBytes(data []byte, k Key) (string, error) {
	out, err := os.CreateTemp(s.TmpDir, "obj-")
	if err != nil {
		return "", fmt.Errorf("create temp object: %w", err)
	}
	tmp := out.Name()
	_, err = out.Write(data)
	if err == nil {
		err = SetAttrs(int(out.Fd()), k.Mode, k.UID, k.GID)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write temp object %s: %w", k.RelPath(), err)
	}
	return tmp, nil
}

// SetAttrs sets owner (only when we are root: an unprivileged commit keeps
// its own uid) and then mode, in that order because chown clears setuid bits.
func SetAttrs(fd int, mode, uid, gid uint32) error {
	if os.Geteuid() == 0 {
		if err := unix.Fchown(fd, int(uid), int(gid)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// Publish renames a staged temp file to its object name. The fan-out
// directory is created if needed; callers fsync the touched fan-out
// directories (or syncfs) afterwards. An object that already exists wins:
// its content is the same by construction.
func (s *Store) Publish(tmp string, k Key) error {
	dst := s.Path(k)
	if err := os.Rename(tmp, dst); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("publish object %s: %w", k.RelPath(), err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return fmt.Errorf("create fan-out dir for %s: %w", k.RelPath(), err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			return fmt.Errorf("publish object %s: %w", k.RelPath(), err)
		}
	}
	return nil
}

// Verify re-hashes an object and compares it with its name.
func (s *Store) Verify(k Key) error {
	f, err := openNoFollow(s.Path(k))
	if err != nil {
		return err
	}
	defer f.Close()
	h, err := HashReader(f)
	if err != nil {
		return fmt.Errorf("read object %s: %w", k.RelPath(), err)
	}
	if h != k.Hash {
		return fmt.Errorf("object %s: content hashes to %s", k.RelPath(), h)
	}
	return nil
}

// ReadAll reads a (small) object, checking its hash.
func (s *Store) ReadAll(k Key, limit int64) ([]byte, error) {
	f, err := openNoFollow(s.Path(k))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read object %s: %w", k.RelPath(), err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("object %s: larger than %d bytes", k.RelPath(), limit)
	}
	if sha256.Sum256(data) != k.Hash {
		return nil, fmt.Errorf("object %s: content does not match its name", k.RelPath())
	}
	return data, nil
}

// FsyncDir makes a directory's entries durable.
func FsyncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// Syncfs flushes the whole filesystem holding dir: one call instead of one
// fsync per object when a commit writes thousands of them.
func Syncfs(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}
