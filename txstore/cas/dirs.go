package cas

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A Store keeps directory descriptors open between calls: the objects
// directory, its 256 fan-out directories (opened on first use) and TmpDir.
// Every object operation is then one syscall relative to a directory fd
// with a one-component name, instead of a lookup of a long path. It also
// keeps, per fan-out directory, the set of object names (one getdents pass
// the first time Has asks about that directory), so a commit's dedup check
// costs no syscall per file.
//
// The descriptors are closed by Close, or when the Store becomes
// unreachable. They are O_CLOEXEC.
type dirs struct {
	dir, tmp string // the Dir and TmpDir they were opened for

	mu     sync.Mutex // guards objfd, tmpfd, tmpGID
	objfd  int
	tmpfd  int
	tmpGID int // gid a new file in TmpDir gets (setgid TmpDir); -1 = ours

	fans [256]fan
	fds  *fdTable // every fd above, for the cleanup

	buffered atomic.Int64 // bytes staged through the page cache since the last early flush
	flushing atomic.Bool  // an early flush is running
}

// fan is one fan-out directory objects/xx.
type fan struct {
	mu     sync.Mutex
	fd     int                 // -1 until opened
	tmpfd  int                 // TmpDir/xx, where objects for this fan-out are staged; -1 until made
	listed bool                // names holds a listing (plus our publishes)
	names  map[string]struct{} // object names present
}

// fdTable is what the cleanup closes; it must not point back to dirs.
type fdTable struct {
	mu  sync.Mutex
	fds []int
}

func (t *fdTable) add(fd int) {
	t.mu.Lock()
	t.fds = append(t.fds, fd)
	t.mu.Unlock()
}

func (t *fdTable) closeAll() {
	t.mu.Lock()
	for _, fd := range t.fds {
		unix.Close(fd)
	}
	t.fds = nil
	t.mu.Unlock()
}

// state returns the Store's descriptor cache, creating it on first use (or
// anew if Dir or TmpDir were changed since).
func (s *Store) state() *dirs {
	d := s.d.Load()
	if d != nil && d.dir == s.Dir && d.tmp == s.TmpDir {
		return d
	}
	nd := &dirs{dir: s.Dir, tmp: s.TmpDir, objfd: -1, tmpfd: -1, tmpGID: -1, fds: &fdTable{}}
	for i := range nd.fans {
		nd.fans[i].fd = -1
		nd.fans[i].tmpfd = -1
	}
	if !s.d.CompareAndSwap(d, nd) {
		return s.state()
	}
	runtime.AddCleanup(nd, func(t *fdTable) { t.closeAll() }, nd.fds)
	return nd
}

// Close releases the directory descriptors the Store holds. The Store stays
// usable: later calls open what they need again.
func (s *Store) Close() error {
	if d := s.d.Swap(nil); d != nil {
		d.fds.closeAll()
	}
	return nil
}

// objDir returns the fd of the objects directory.
func (d *dirs) objDir() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.objfd >= 0 {
		return d.objfd, nil
	}
	fd, err := openDir(unix.AT_FDCWD, d.dir)
	if err != nil {
		return -1, fmt.Errorf("open objects dir %s: %w", d.dir, err)
	}
	d.fds.add(fd)
	d.objfd = fd
	return fd, nil
}

// tmpDir returns the fd of TmpDir.
func (d *dirs) tmpDir() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tmpfd >= 0 {
		return d.tmpfd, nil
	}
	fd, err := openDir(unix.AT_FDCWD, d.tmp)
	if err != nil {
		return -1, fmt.Errorf("open temp dir %s: %w", d.tmp, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("stat temp dir %s: %w", d.tmp, err)
	}
	if st.Mode&unix.S_ISGID != 0 {
		d.tmpGID = int(st.Gid)
	}
	d.fds.add(fd)
	d.tmpfd = fd
	return fd, nil
}

// tmpFanFD returns the fd of TmpDir/xx (made on first use): staging in 256
// directories instead of one lets workers create temp files in parallel,
// where one directory's lock would serialise every create. f.mu must be held.
func (d *dirs) tmpFanFD(f *fan, b byte) (int, error) {
	if f.tmpfd >= 0 {
		return f.tmpfd, nil
	}
	tfd, err := d.tmpDir()
	if err != nil {
		return -1, err
	}
	name := fanName(b)
	if err := unix.Mkdirat(tfd, name, 0o700); err != nil && err != unix.EEXIST {
		return -1, fmt.Errorf("create temp dir %s/%s: %w", d.tmp, name, err)
	}
	fd, err := openDir(tfd, name)
	if err != nil {
		return -1, fmt.Errorf("open temp dir %s/%s: %w", d.tmp, name, err)
	}
	d.fds.add(fd)
	f.tmpfd = fd
	return fd, nil
}

// fanName is the fan-out directory name of a hash: its first byte in hex.
func fanName(b byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[b>>4], digits[b&15]})
}

// fanFD returns the fd of fan-out directory b, opening it if needed.
// With create, a missing directory is made (mode 0700). A missing
// directory without create is (-1, nil). f.mu must be held.
func (d *dirs) fanFD(f *fan, b byte, create bool) (int, error) {
	if f.fd >= 0 {
		return f.fd, nil
	}
	ofd, err := d.objDir()
	if err != nil {
		return -1, err
	}
	name := fanName(b)
	fd, err := openDir(ofd, name)
	if err == unix.ENOENT && create {
		if err := unix.Mkdirat(ofd, name, 0o700); err != nil && err != unix.EEXIST {
			return -1, fmt.Errorf("create fan-out dir %s/%s: %w", d.dir, name, err)
		}
		fd, err = openDir(ofd, name)
	}
	if err == unix.ENOENT {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("open fan-out dir %s/%s: %w", d.dir, name, err)
	}
	d.fds.add(fd)
	f.fd = fd
	return fd, nil
}

// fanOf locks and returns the fan-out directory of k and its fd (-1 when it
// does not exist and create is false). The caller unlocks f.mu.
func (s *Store) fanOf(k *Key, create bool) (*dirs, *fan, int, error) {
	d := s.state()
	f := &d.fans[k.Hash[0]]
	f.mu.Lock()
	fd, err := d.fanFD(f, k.Hash[0], create)
	if err != nil {
		f.mu.Unlock()
		return nil, nil, -1, err
	}
	return d, f, fd, nil
}

// list reads the fan-out directory's names into f.names. f.mu must be held.
func (f *fan) list(fd int) error {
	f.names = make(map[string]struct{})
	f.listed = true
	if fd < 0 {
		return nil
	}
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return err
	}
	return readDirNames(fd, func(name string, _ uint64, _ uint8) { f.names[name] = struct{}{} })
}

// openDir opens a directory of the store; a symlink in its place (say
// objects/ab or staging/ab pointing elsewhere) is refused, never followed.
func openDir(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// dirBufPool holds getdents buffers.
var dirBufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// readDirNames calls fn for every entry of the open directory fd except
// "." and "..", with its inode number and d_type (DT_UNKNOWN if the
// filesystem does not say). It reads from the fd's current offset.
func readDirNames(fd int, fn func(name string, ino uint64, typ uint8)) error {
	bp := dirBufPool.Get().(*[]byte)
	defer dirBufPool.Put(bp)
	buf := *bp
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		parseDirents(buf[:n], fn)
	}
}

// ReadDir lists an open directory (from its current offset) with one
// getdents64 call per 64 KiB of entries, calling fn with each name, inode
// number and d_type (unix.DT_*; DT_UNKNOWN when the filesystem does not
// report types). "." and ".." are skipped.
func ReadDir(fd int, fn func(name string, ino uint64, typ uint8)) error {
	return readDirNames(fd, fn)
}

// parseDirents decodes linux_dirent64 records: ino u64, off s64,
// reclen u16, type u8, name NUL-terminated.
func parseDirents(buf []byte, fn func(name string, ino uint64, typ uint8)) {
	for len(buf) >= 19 {
		reclen := int(nativeU16(buf[16:18]))
		if reclen < 19 || reclen > len(buf) {
			return
		}
		rec := buf[:reclen]
		buf = buf[reclen:]
		ino := nativeU64(rec[0:8])
		typ := rec[18]
		nb := rec[19:]
		n := 0
		for n < len(nb) && nb[n] != 0 {
			n++
		}
		nb = nb[:n]
		if len(nb) == 0 || (nb[0] == '.' && (len(nb) == 1 || (len(nb) == 2 && nb[1] == '.'))) {
			continue
		}
		fn(string(nb), ino, typ)
	}
}

// umask is the process umask, read once from /proc/self/status (-1 if
// unknown: then every created file is chmod'ed explicitly).
var umask = sync.OnceValue(func() int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return -1
			}
			return int(m)
		}
	}
	return -1
})

// CreateMode returns the mode to pass to open/mkdir so a new file or
// directory gets perm (07777 bits) without a later chmod, and whether a
// chmod is still needed afterwards: setuid/setgid/sticky bits are not
// reliably set by creation, and the umask may strip wanted bits.
// The umask is read once per process.
func CreateMode(perm uint32) (mode uint32, chmod bool) {
	u := umask()
	if u < 0 {
		return perm & 0o777, true
	}
	return perm & 0o777, perm&07000 != 0 || perm&0o777&uint32(u) != 0
}

func nativeU16(b []byte) uint16 { return binary.NativeEndian.Uint16(b) }
func nativeU64(b []byte) uint64 { return binary.NativeEndian.Uint64(b) }
