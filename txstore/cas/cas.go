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
	"sync"
	"sync/atomic"

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

const bufSize = 128 << 10

// HashFile hashes a regular file without following symlinks and returns the
// hash and the stat taken *before* reading, so callers can detect a file that
// changed under them. It uses raw syscalls: on a 100k-file tree the per-file
// syscall count, not hashing, is what costs.
func HashFile(path string) (Hash, unix.Stat_t, error) {
	var h Hash
	var st unix.Stat_t
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return h, st, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return h, st, fmt.Errorf("fstat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return h, st, fmt.Errorf("%s: not a regular file", path)
	}
	h, err = hashFD(fd, st.Size)
	if err != nil {
		return h, st, fmt.Errorf("read %s: %w", path, err)
	}
	return h, st, nil
}

// hashFD hashes size bytes from fd. It stops at size instead of reading to
// EOF (one syscall less per file); a file that shrank is an error, one that
// grew is caught by the stat comparison in Stage or by verify.
func hashFD(fd int, size int64) (Hash, error) {
	var h Hash
	d := sha256.New()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for left := size; left > 0; {
		want := buf
		if int64(len(want)) > left {
			want = want[:left]
		}
		n, err := unix.Read(fd, want)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return h, err
		}
		if n == 0 {
			return h, fmt.Errorf("file shrank while being read")
		}
		d.Write(want[:n])
		left -= int64(n)
	}
	d.Sum(h[:0])
	return h, nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// HashReader hashes everything r yields. It reads with a pooled buffer
// itself: io.Copy would hand *os.File's WriteTo a fresh buffer per file,
// and per-file garbage dominates when hashing 100k small files.
func HashReader(r io.Reader) (Hash, error) {
	var h Hash
	d := sha256.New()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := r.Read(buf)
		d.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return h, err
		}
	}
	d.Sum(h[:0])
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
	in, err := unix.Open(src, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", src, err)
	}
	defer unix.Close(in)
	out, tmp, err := s.createTemp(k.Mode)
	if err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		unix.Close(out)
		unix.Unlink(tmp)
		return "", err
	}
	var n int64
	for {
		c, err := unix.CopyFileRange(in, nil, out, nil, 1<<30, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil { // EXDEV on old kernels, EINVAL on odd filesystems
			if n, err = copyRW(in, out); err != nil {
				return fail(fmt.Errorf("copy %s: %w", src, err))
			}
			break
		}
		if c == 0 {
			break
		}
		n += int64(c)
	}
	if want != nil {
		var st unix.Stat_t
		if err := unix.Fstat(in, &st); err != nil {
			return fail(fmt.Errorf("fstat %s: %w", src, err))
		}
		if n != want.Size || st.Size != want.Size || st.Mtim != want.Mtim || st.Ctim != want.Ctim || st.Ino != want.Ino {
			return fail(fmt.Errorf("%s changed while it was being committed", src))
		}
	}
	if err := s.finishAttrs(out, k); err != nil {
		return fail(fmt.Errorf("object %s: %w", k.RelPath(), err))
	}
	if err := unix.Close(out); err != nil {
		unix.Unlink(tmp)
		return "", fmt.Errorf("close temp object: %w", err)
	}
	return tmp, nil
}

func copyRW(in, out int) (int64, error) {
	if _, err := unix.Seek(in, 0, 0); err != nil {
		return 0, err
	}
	if _, err := unix.Seek(out, 0, 0); err != nil {
		return 0, err
	}
	if err := unix.Ftruncate(out, 0); err != nil {
		return 0, err
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	var total int64
	for {
		n, err := unix.Read(in, *bp)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil
		}
		if _, err := unix.Write(out, (*bp)[:n]); err != nil {
			return total, err
		}
		total += int64(n)
	}
}

var tmpSeq atomic.Uint64

// createTemp creates a temp file already carrying the object's mode (the
// umask is bypassed by fchmod only when it got in the way), saving the
// separate chmod and chown syscalls for the common root-owned case.
func (s *Store) createTemp(mode uint32) (int, string, error) {
	for {
		name := filepath.Join(s.TmpDir, fmt.Sprintf("obj-%d-%d", os.Getpid(), tmpSeq.Add(1)))
		fd, err := unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, mode&0o777|0o200)
		if err == unix.EEXIST {
			continue
		}
		if err != nil {
			return -1, "", fmt.Errorf("create temp object in %s: %w", s.TmpDir, err)
		}
		return fd, name, nil
	}
}

// finishAttrs gives a staged object its final owner and mode.
func (s *Store) finishAttrs(fd int, k Key) error {
	return SetAttrs(fd, k.Mode, k.UID, k.GID)
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

// euid/egid are read once: Geteuid is a syscall, and SetAttrs runs per file.
var (
	euid = os.Geteuid()
	egid = os.Getegid()
)

// IsRoot reports whether this process may chown.
func IsRoot() bool { return euid == 0 }

// SetAttrs sets owner (only when we are root: an unprivileged commit keeps
// its own uid; a new file already has ours) and then mode, in that order
// because chown clears setuid bits.
func SetAttrs(fd int, mode, uid, gid uint32) error {
	if euid == 0 && (uid != 0 || int(gid) != egid) {
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
