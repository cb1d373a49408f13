// Package cas is txboot's content-addressed object store: raw file contents
// named by SHA-256, stored with their write bits stripped so trees can
// hardlink them without ever being able to write through.
//
// Hardlinks share one inode, so an object is keyed by content *and* the
// inode attributes a tree needs (permission bits without write bits, uid,
// gid, extended attributes): objects/<h0h1>/<hex>.<mode>[.<uid>.<gid>][.x<xid>],
// xid being the first 16 hex digits of sha256 of the canonical xattr list
// (only when there is one, so objects without xattrs keep their names).
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

	"github.com/txboot/txboot/txstore/internal/xattr"
	"golang.org/x/sys/unix"
)

// Hash is a SHA-256 content hash.
type Hash [32]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash parses 64 lowercase hex digits.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 64 {
		return h, fmt.Errorf("%w: %q", ErrBadHash, s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'F' {
			return h, fmt.Errorf("%w: %q", ErrBadHash, s)
		}
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
	// Xattrs is the canonical encoded xattr list (see manifest.Entry.Xattrs),
	// "" for none. A Key from ParseName of a name with an xattr suffix has
	// only XattrID: its list is not in the name.
	Xattrs string
	// XattrID, set only by ParseName, is the name's xattr suffix digits
	// ("" for none). Keys for writing objects leave it empty.
	XattrID string
}

// xattrID is the object-name suffix digits for k's xattrs ("" for none).
func (k *Key) xattrID() string {
	if k.XattrID != "" {
		return k.XattrID
	}
	if k.Xattrs == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(k.Xattrs))
	return hex.EncodeToString(sum[:8])
}

// Ident is k reduced to what its object name says (Xattrs replaced by
// XattrID): keys that name the same object file have the same Ident, so
// GC can match listed names against manifests.
func (k Key) Ident() Key {
	k.XattrID = k.xattrID()
	k.Xattrs = ""
	return k
}

// NewKey strips write bits from mode so an object can never be written through.
func NewKey(h Hash, mode, uid, gid uint32) Key {
	return Key{Hash: h, Mode: mode & 07777 &^ 0222, UID: uid, GID: gid}
}

// AppendName appends the object's file name (see Name) to b.
func (k Key) AppendName(b []byte) []byte {
	b = hex.AppendEncode(b, k.Hash[:])
	if k.Mode > 07777 { // not a NewKey key; keep the %04o spelling
		b = append(b, '.')
		b = append(b, fmt.Sprintf("%04o", k.Mode)...)
	} else {
		m := k.Mode
		b = append(b, '.', '0'+byte(m>>9&7), '0'+byte(m>>6&7), '0'+byte(m>>3&7), '0'+byte(m&7))
	}
	if k.UID != 0 || k.GID != 0 {
		b = append(b, '.')
		b = strconv.AppendUint(b, uint64(k.UID), 10)
		b = append(b, '.')
		b = strconv.AppendUint(b, uint64(k.GID), 10)
	}
	if x := k.xattrID(); x != "" {
		b = append(b, ".x"...)
		b = append(b, x...)
	}
	return b
}

// Name is the object's file name inside its fan-out directory.
func (k Key) Name() string {
	var buf [128]byte
	return string(k.AppendName(buf[:0]))
}

// RelPath is the object's path relative to the objects directory.
func (k Key) RelPath() string {
	var buf [136]byte
	b := append(buf[:0], fanName(k.Hash[0])...)
	b = append(b, '/')
	return string(k.AppendName(b))
}

// ParseName parses an object file name back into a Key (used by GC and fsck).
func ParseName(name string) (Key, error) {
	var xid string
	if i := strings.LastIndex(name, ".x"); i >= 0 {
		xid = name[i+2:]
		if _, err := hex.DecodeString(xid); err != nil || len(xid) != 16 || strings.ToLower(xid) != xid {
			return Key{}, fmt.Errorf("%w: object xattr suffix in %q", ErrBadHash, name)
		}
		name = name[:i]
	}
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
	k.XattrID = xid
	return k, nil
}

// Store is a CAS rooted at Dir (…/.txboot/objects). Temp files are created
// in TmpDir, which must be on the same filesystem.
//
// A Store caches directory descriptors and, for Has, the names in each
// fan-out directory (see dirs.go): Has reports what was present when it
// first looked at a fan-out directory plus what this Store published since.
// Objects are only ever removed by GC under the writer lock, and Commit uses
// a fresh Store per commit, so the answer is never stale there; a caller
// that removes objects through other means and then asks the same Store
// again should Close it first (which drops the cache). A Store must not be
// copied after first use.
type Store struct {
	Dir    string
	TmpDir string

	d atomic.Pointer[dirs]
	v verityState // fs-verity as objects enter (verity.go)
}

// Path is the absolute path of an object.
func (s *Store) Path(k Key) string { return filepath.Join(s.Dir, k.RelPath()) }

// Has reports whether the object exists. The first call for a fan-out
// directory reads that directory's names (one getdents pass); later calls
// are map lookups.
func (s *Store) Has(k Key) (bool, error) {
	d := s.state()
	f := &d.fans[k.Hash[0]]
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.listed {
		fd, err := d.fanFD(f, k.Hash[0], false)
		if err != nil {
			return false, fmt.Errorf("stat object %s: %w", k.RelPath(), err)
		}
		if err := f.list(fd); err != nil {
			f.listed = false
			return false, fmt.Errorf("list objects for %s: %w", k.RelPath(), err)
		}
	}
	var buf [128]byte
	name := string(k.AppendName(buf[:0]))
	if _, ok := f.names[name]; !ok {
		return false, nil
	}
	// Present by name is not enough to reuse it: an object replaced by a
	// symlink or re-moded would be linked into the new tree as it is.
	ok, err := s.statObject(d, f, k, name)
	if !ok && err == nil {
		delete(f.names, name) // removed by hand since the listing
	}
	return ok, err
}

// Check reports whether object k exists, like Has, by one fstatat and
// without reading its fan-out directory: for a caller that asks about a
// few objects (Find found their names). Something else in k's place (a
// symlink, another mode) is ErrDamaged.
func (s *Store) Check(k Key) (bool, error) {
	d := s.state()
	f := &d.fans[k.Hash[0]]
	f.mu.Lock()
	defer f.mu.Unlock()
	var buf [128]byte
	return s.statObject(d, f, k, string(k.AppendName(buf[:0])))
}

// statObject stats object k (named name) in its fan-out directory; f.mu is
// held.
func (s *Store) statObject(d *dirs, f *fan, k Key, name string) (bool, error) {
	fd, err := d.fanFD(f, k.Hash[0], false)
	if err != nil {
		return false, fmt.Errorf("stat object %s: %w", k.RelPath(), err)
	}
	if fd < 0 {
		return false, nil
	}
	var st unix.Stat_t
	if err := fstatat(fd, name, &st); err != nil {
		if err == unix.ENOENT {
			return false, nil
		}
		return false, fmt.Errorf("stat object %s: %w", k.RelPath(), err)
	}
	if err := checkObject(k, -1, &st); err != nil {
		return false, err
	}
	if err := s.checkXattrs(k, fd, name); err != nil {
		return false, err
	}
	return true, nil
}

// Xattrs reads object k's xattrs (canonical encoding), relative to its
// fan-out directory where the kernel allows (Linux 6.13), else by path.
func (s *Store) Xattrs(k Key) (string, error) {
	var buf [128]byte
	fd, name, err := s.objectAt(k, buf[:])
	if err != nil {
		return "", err
	}
	return s.readXattrs(k, fd, name)
}

func (s *Store) readXattrs(k Key, fanfd int, name string) (string, error) {
	x, err := xattr.ReadAt(fanfd, name)
	if err == xattr.ErrNoAt {
		x, err = xattr.LRead(filepath.Join(s.Dir, fanName(k.Hash[0]), name))
	}
	return x, err
}

// checkXattrs reports ErrDamaged unless object k, name in fan-out
// directory fanfd (checked a regular file already), has exactly k's
// xattrs: they are in the inode every tree linking it shares, so an added
// capability is damage too.
func (s *Store) checkXattrs(k Key, fanfd int, name string) error {
	got, err := s.readXattrs(k, fanfd, name)
	if err != nil {
		return fmt.Errorf("%w: object objects/%s: %w", ErrDamaged, k.RelPath(), err)
	}
	if k.Xattrs == "" && k.XattrID != "" { // from ParseName: only the digest is known
		if got != "" && (&Key{Xattrs: got}).xattrID() == k.XattrID {
			return nil
		}
	} else if got == k.Xattrs {
		return nil
	}
	why := strings.Join(xattr.Diff(k.Xattrs, got), ", ")
	if k.Xattrs == "" && k.XattrID != "" {
		why = "xattrs do not match its name"
	}
	return fmt.Errorf("%w: object objects/%s %s: not reused (run bootctl verify; remove the object to let a commit store it again)", ErrDamaged, k.RelPath(), why)
}

// Find returns, for each content of hs the store holds, every object with
// that content (under any mode and owner), reading each fan-out directory
// that one of hs falls in once and keeping none of its other names: a
// puller planning a thousand contents spread over every fan-out pays one
// getdents pass per directory and no map of all its names. Only canonical
// names count; the files themselves are not looked at (Check them before
// reuse).
func (s *Store) Find(hs []Hash) (map[Hash][]Key, error) {
	var want [256]map[Hash]bool
	for _, h := range hs {
		if want[h[0]] == nil {
			want[h[0]] = map[Hash]bool{}
		}
		want[h[0]][h] = true
	}
	out := map[Hash][]Key{}
	d := s.state()
	for b := range want {
		if want[b] == nil {
			continue
		}
		if err := s.findIn(d, byte(b), want[b], out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *Store) findIn(d *dirs, b byte, want map[Hash]bool, out map[Hash][]Key) error {
	f := &d.fans[b]
	f.mu.Lock()
	defer f.mu.Unlock()
	fd, err := d.fanFD(f, b, false)
	if err != nil {
		return fmt.Errorf("list objects/%s: %w", fanName(b), err)
	}
	if fd < 0 {
		return nil
	}
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return fmt.Errorf("list objects/%s: %w", fanName(b), err)
	}
	var h Hash
	var hx [2 * len(h)]byte
	err = readDirNames(fd, func(name string, _ uint64, _ uint8) {
		if len(name) < len(hx) {
			return
		}
		copy(hx[:], name)
		if _, err := hex.Decode(h[:], hx[:]); err != nil || !want[h] {
			return
		}
		if k, err := ParseName(name); err == nil {
			out[h] = append(out[h], k)
		}
	})
	if err != nil {
		return fmt.Errorf("list objects/%s: %w", fanName(b), err)
	}
	return nil
}

// checkObject reports ErrDamaged unless st is a regular file with k's mode,
// owner (only checked when we are root: an unprivileged commit keeps its
// own uid) and, when size >= 0, that size.
func checkObject(k Key, size int64, st *unix.Stat_t) error {
	why := ""
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		why = "is a symlink, not a regular file"
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		why = "is not a regular file"
	case st.Mode&07777 != k.Mode:
		why = fmt.Sprintf("has mode %04o, want %04o", st.Mode&07777, k.Mode)
	case euid == 0 && (st.Uid != k.UID || st.Gid != k.GID):
		why = fmt.Sprintf("has owner %d:%d, want %d:%d", st.Uid, st.Gid, k.UID, k.GID)
	case size >= 0 && st.Size != size:
		why = fmt.Sprintf("has size %d, want %d", st.Size, size)
	default:
		return nil
	}
	return fmt.Errorf("%w: object objects/%s %s: not reused (run bootctl verify; remove the object to let a commit store it again)", ErrDamaged, k.RelPath(), why)
}

// objectAt returns the open fan-out directory fd holding object k, and
// k's name in it (ENOENT when the fan-out directory does not exist).
func (s *Store) objectAt(k Key, buf []byte) (int, string, error) {
	_, f, fd, err := s.fanOf(&k, false)
	if err != nil {
		return -1, "", err
	}
	f.mu.Unlock()
	if fd < 0 {
		return -1, "", unix.ENOENT
	}
	return fd, string(k.AppendName(buf[:0])), nil
}

// Stat lstats an object relative to its fan-out directory's fd.
func (s *Store) Stat(k Key, st *unix.Stat_t) error {
	var buf [128]byte
	fd, name, err := s.objectAt(k, buf[:])
	if err != nil {
		return err
	}
	return fstatat(fd, name, st)
}

// Open opens an object read-only (O_NOFOLLOW, O_CLOEXEC, and O_NOATIME when
// allowed); the caller closes the returned fd.
func (s *Store) Open(k Key) (int, error) {
	var buf [128]byte
	fd, name, err := s.objectAt(k, buf[:])
	if err != nil {
		return -1, err
	}
	return OpenFileAt(fd, name)
}

// Link makes name in directory dirfd a hardlink of object k (linkat(2)
// relative to the fan-out directory's fd). Errors are the bare errno, so
// callers can test for EMLINK, EXDEV and ENOENT, or ErrDamaged (see
// LinkObject).
func (s *Store) Link(k Key, dirfd int, name string) error {
	return s.LinkObject(k, -1, dirfd, name)
}

// LinkObject is Link checking what was linked: unless the new name is a
// regular file with k's mode and owner and, when size >= 0, that size, it
// is removed again and the error wraps ErrDamaged (an object replaced by a
// symlink must not turn into a symlink in a new tree). The check is on the
// new link itself, so an object swapped after a check cannot slip through.
func (s *Store) LinkObject(k Key, size int64, dirfd int, name string) error {
	var buf [128]byte
	fd, oname, err := s.objectAt(k, buf[:])
	if err != nil {
		return err
	}
	for {
		err = unix.Linkat(fd, oname, dirfd, name, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err = fstatat(dirfd, name, &st); err == nil {
		err = checkObject(k, size, &st)
	}
	if err == nil {
		err = s.checkXattrs(k, fd, oname)
	}
	if err != nil {
		unix.Unlinkat(dirfd, name, 0)
		return err
	}
	return nil
}

func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
}

// noatime is O_NOATIME when the process may use it on any file (root):
// reading a tree must not dirty every inode's atime.
var noatime = func() int {
	if os.Geteuid() == 0 {
		return unix.O_NOATIME
	}
	return 0
}()

// OpenFileAt opens name in dirfd for reading without following a final
// symlink and without blocking on FIFOs (O_NONBLOCK), with O_NOATIME when
// running as root. Callers check the type with fstat.
func OpenFileAt(dirfd int, name string) (int, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK | noatime
	for {
		fd, err := unix.Openat(dirfd, name, flags, 0)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EPERM && flags&unix.O_NOATIME != 0 {
			flags &^= unix.O_NOATIME
			continue
		}
		return fd, err
	}
}

// bufSize is the read size for hashing: large enough that a big file costs
// few read(2) calls, small enough to stay in L2 while it is hashed.
const bufSize = 256 << 10

// HashFile hashes a regular file without following symlinks and returns the
// hash and the stat taken *before* reading, so callers can detect a file that
// changed under them. It uses raw syscalls: on a 100k-file tree the per-file
// syscall count, not hashing, is what costs.
func HashFile(path string) (Hash, unix.Stat_t, error) {
	var h Hash
	var st unix.Stat_t
	fd, err := OpenFileAt(unix.AT_FDCWD, path)
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
	h, err = HashFD(fd, st.Size)
	if err != nil {
		return h, st, fmt.Errorf("read %s: %w", path, err)
	}
	return h, st, nil
}

// HashFD hashes size bytes of fd from its current offset. It stops at size
// instead of reading to EOF (one syscall less per file); a file that shrank
// is an error, one that grew is caught by the stat comparison in Stage or by
// verify.
func HashFD(fd int, size int64) (Hash, error) { return HashFDTee(fd, size, nil) }

// HashFDTee is HashFD that also writes every byte it hashes to tee (when
// not nil; its Write must not fail), so another digest of the same content
// (fs-verity's) costs no second read.
func HashFDTee(fd int, size int64, tee io.Writer) (Hash, error) {
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
		if tee != nil {
			tee.Write(want[:n])
		}
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

// hashToEOF hashes fd from its current offset to EOF.
func hashToEOF(fd int) (Hash, error) {
	var h Hash
	d := sha256.New()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return h, err
		}
		if n == 0 {
			break
		}
		d.Write(buf[:n])
	}
	d.Sum(h[:0])
	return h, nil
}

// HashObject re-hashes an open file to EOF (for verify: objects are read
// whole, whatever their size claims).
func HashObject(fd int) (Hash, error) { return hashToEOF(fd) }

// Verify re-hashes an object and compares it with its name.
func (s *Store) Verify(k Key) error {
	fd, err := s.Open(k)
	if err != nil {
		return fmt.Errorf("open %s: %w", s.Path(k), err)
	}
	defer unix.Close(fd)
	h, err := hashToEOF(fd)
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
	fd, err := s.Open(k)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.Path(k), err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat object %s: %w", k.RelPath(), err)
	}
	if st.Size > limit {
		return nil, fmt.Errorf("object %s: larger than %d bytes", k.RelPath(), limit)
	}
	// One read for the whole object, one more to see EOF; loop for the rest.
	data := make([]byte, 0, st.Size+1)
	for int64(len(data)) <= limit {
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
		n, err := unix.Read(fd, data[len(data):cap(data)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read object %s: %w", k.RelPath(), err)
		}
		if n == 0 {
			break
		}
		data = data[:len(data)+n]
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("object %s: larger than %d bytes", k.RelPath(), limit)
	}
	if sha256.Sum256(data) != k.Hash {
		return nil, fmt.Errorf("object %s: content does not match its name", k.RelPath())
	}
	return data, nil
}

// euid/egid are read once: Geteuid is a syscall, and SetAttrs runs per file.
var (
	euid = os.Geteuid()
	egid = os.Getegid()
)

// IsRoot reports whether this process may chown.
func IsRoot() bool { return euid == 0 }

// NeedChown reports whether a file this process creates (owned by its
// euid/egid) must be chowned to get uid:gid. Only root chowns: an
// unprivileged commit keeps its own uid.
func NeedChown(uid, gid uint32) bool {
	return euid == 0 && (int(uid) != euid || int(gid) != egid)
}

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
