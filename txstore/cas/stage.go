package cas

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/txboot/txboot/txstore/internal/xattr"
	"golang.org/x/sys/unix"
)

// lent is a source file descriptor a scanner lends to Stage (see LendFD).
type lent struct {
	mu     sync.RWMutex
	fd     int
	path   string
	closed bool
}

// lentFDs maps the *unix.Stat_t a scanner handed to its OnFile callback to
// the descriptor it still holds open for that file.
var lentFDs sync.Map

// LendFD lets Stage read src from fd instead of opening it again, while the
// returned release func has not been called: a scanner that has just
// hashed src from fd (with want = its fstat, a pointer used for this one
// file only) lends it for the duration of its callback. Stage then saves an
// open and close of a deep path per new object. release blocks until no
// Stage is using fd any more; the caller closes fd afterwards.
func LendFD(want *unix.Stat_t, src string, fd int) (release func()) {
	l := &lent{fd: fd, path: src}
	lentFDs.Store(want, l)
	return func() {
		lentFDs.Delete(want)
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
	}
}

// borrow returns the lent descriptor for (want, src) and a func to give it
// back, or ok=false.
func borrow(want *unix.Stat_t, src string) (fd int, giveBack func(), ok bool) {
	if want == nil {
		return -1, nil, false
	}
	v, found := lentFDs.Load(want)
	if !found {
		return -1, nil, false
	}
	l := v.(*lent)
	l.mu.RLock()
	if l.closed || l.path != src {
		l.mu.RUnlock()
		return -1, nil, false
	}
	return l.fd, l.mu.RUnlock, true
}

// Stage copies src into a new temp file under TmpDir with the key's mode and
// owner, and returns the temp path. It does not fsync: the caller makes a batch
// durable with one syncfs(2) and only then publishes with Publish, so nothing
// is visible under objects/ before its data is on disk.
// want is the stat HashFile returned; if src changed since, Stage fails.
func (s *Store) Stage(src string, k Key, want *unix.Stat_t) (string, error) {
	in, giveBack, borrowed := borrow(want, src)
	if borrowed {
		defer giveBack()
	} else {
		var err error
		if in, err = OpenFileAt(unix.AT_FDCWD, src); err != nil {
			return "", fmt.Errorf("open %s: %w", src, err)
		}
		defer unix.Close(in)
	}
	d, tfd, err := s.tmpFan(k)
	if err != nil {
		return "", err
	}
	mode, chmod := CreateMode(k.Mode)
	// A file with fewer blocks than its size has holes: copied by data
	// segment, it keeps them (a 512 MiB image with 4 KiB of data must not
	// become a 512 MiB object). Buffered: direct I/O would gain nothing.
	sparse := want != nil && want.Size > 0 && want.Blocks*512 < want.Size
	out, name, direct, err := createObjectTemp(tfd, d.tmp, mode, !sparse && want != nil && want.Size >= directMin)
	if err != nil {
		return "", err
	}
	tmp := d.tmp + "/" + fanName(k.Hash[0]) + "/" + name
	fail := func(err error) (string, error) {
		unix.Close(out)
		unix.Unlinkat(tfd, name, 0)
		return "", err
	}
	limit := int64(-1)
	if want != nil {
		limit = want.Size
	}
	var off int64
	if sparse {
		off, err = copySparse(in, out, limit)
	} else if direct {
		off, err = copyDirect(in, out, limit)
		if err == errNoDirect {
			directOK.Store(false)
			if err = clearDirect(out); err == nil {
				off, err = copyRange(in, out, limit)
			}
		}
	} else {
		off, err = copyRange(in, out, limit)
	}
	if err != nil {
		return fail(fmt.Errorf("copy %s: %w", src, err))
	}
	if want != nil {
		var st unix.Stat_t
		if err := unix.Fstat(in, &st); err != nil {
			return fail(fmt.Errorf("fstat %s: %w", src, err))
		}
		if off != want.Size || st.Size != want.Size || st.Mtim != want.Mtim || st.Ctim != want.Ctim || st.Ino != want.Ino {
			return fail(fmt.Errorf("%s changed while it was being committed", src))
		}
	}
	if !direct {
		d.wroteBuffered(tfd, off)
	}
	if err := finishAttrs(out, k, chmod, d.tmpGID); err != nil {
		return fail(fmt.Errorf("object %s: %w", k.RelPath(), err))
	}
	if err := unix.Close(out); err != nil {
		unix.Unlinkat(tfd, name, 0)
		return "", fmt.Errorf("close temp object: %w", err)
	}
	return tmp, nil
}

// earlyFlush is how many bytes staged through the page cache start a
// background syncfs. Small objects are written buffered; left dirty until
// the caller's syncfs they would be written only then, after the scan,
// while the disk sat idle. Flushing early overlaps that writeback with the
// rest of the staging. It only makes data durable sooner: publishing still
// waits for the caller's own syncfs.
const earlyFlush = 64 << 20

func (d *dirs) wroteBuffered(fd int, n int64) {
	if d.buffered.Add(n) < earlyFlush || !d.flushing.CompareAndSwap(false, true) {
		return
	}
	d.buffered.Store(0)
	dfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		d.flushing.Store(false)
		return
	}
	go func() {
		unix.Syncfs(dfd)
		unix.Close(dfd)
		d.flushing.Store(false)
	}()
}

// copyRange copies in (from offset 0, explicit offsets: a lent fd's
// position is not ours) to out with copy_file_range, falling back to
// read/write; limit < 0 copies to EOF. It returns the bytes copied.
func copyRange(in, out int, limit int64) (int64, error) {
	var off int64
	for limit < 0 || off < limit {
		chunk := 1 << 30
		if limit >= 0 && limit-off < int64(chunk) {
			chunk = int(limit - off)
		}
		c, err := unix.CopyFileRange(in, &off, out, nil, chunk, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil { // EXDEV on old kernels, EINVAL/EOPNOTSUPP on odd filesystems
			return copyRW(in, out, limit)
		}
		if c == 0 {
			break
		}
	}
	return off, nil
}

// copySparse copies the data segments of in's first limit bytes
// (SEEK_DATA/SEEK_HOLE) to the same offsets of the empty file out and then
// sets out's size to limit, so holes stay holes. It returns limit once done
// (the caller's fstat comparison catches a file that changed meanwhile).
// Without SEEK_DATA it copies everything. It moves in's file position,
// which the scanner that lent in no longer uses (it has hashed the file).
func copySparse(in, out int, limit int64) (int64, error) {
	for off := int64(0); off < limit; {
		data, err := unix.Seek(in, off, unix.SEEK_DATA)
		if err == unix.ENXIO { // only a hole up to EOF
			break
		}
		if err == unix.EINVAL && off == 0 { // no SEEK_DATA here
			return copyRange(in, out, limit)
		}
		if err != nil {
			return off, err
		}
		if data >= limit {
			break
		}
		hole, err := unix.Seek(in, data, unix.SEEK_HOLE)
		if err != nil {
			return off, err
		}
		if hole > limit {
			hole = limit
		}
		if err := copySegment(in, out, data, hole); err != nil {
			return off, err
		}
		off = hole
	}
	if err := unix.Ftruncate(out, limit); err != nil {
		return 0, err
	}
	return limit, nil
}

// copySegment copies bytes [start, end) of in to the same offsets of out:
// copy_file_range, falling back to pread/pwrite.
func copySegment(in, out int, start, end int64) error {
	offIn, offOut := start, start
	for offIn < end {
		n := end - offIn
		if n > 1<<30 {
			n = 1 << 30
		}
		c, err := unix.CopyFileRange(in, &offIn, out, &offOut, int(n), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			break
		}
		if c == 0 {
			return nil // shrank: the caller's fstat comparison says so
		}
	}
	if offIn >= end {
		return nil
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for offIn < end {
		b := *bp
		if end-offIn < int64(len(b)) {
			b = b[:end-offIn]
		}
		n, err := unix.Pread(in, b, offIn)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		for w := 0; w < n; {
			m, err := unix.Pwrite(out, b[w:n], offIn+int64(w))
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			w += m
		}
		offIn += int64(n)
	}
	return nil
}

// finishAttrs gives a staged object its final owner and mode, with as few
// syscalls as the case allows: root-owned objects created under the usual
// umask need none. tmpGID is the gid new files get in TmpDir (-1: egid).
func finishAttrs(fd int, k Key, chmod bool, tmpGID int) error {
	gid := egid
	if tmpGID >= 0 {
		gid = tmpGID
	}
	if euid == 0 && (int(k.UID) != euid || int(k.GID) != gid) {
		if err := unix.Fchown(fd, int(k.UID), int(k.GID)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		chmod = chmod || k.Mode&06000 != 0 // chown cleared setuid/setgid
	}
	if chmod {
		if err := unix.Fchmod(fd, k.Mode); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	return setXattrs(fd, k)
}

// setXattrs gives a new object file (not yet visible under objects/)
// exactly its key's xattrs, after chown and chmod (chown drops
// security.capability): also none that the kernel added on creation (an
// SELinux label, a default ACL's copy), since Has and verify hold objects
// to their key. Without any that costs one flistxattr.
func setXattrs(fd int, k Key) error {
	changed, err := xattr.FSet(fd, k.Xattrs)
	if err != nil {
		return storeXattrErr(err)
	}
	if changed {
		// An access ACL sets the group bits from its mask: restore ours.
		if err := unix.Fchmod(fd, k.Mode); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	return nil
}

// storeXattrErr says where an xattr could not be set: "store filesystem
// does not support xattr user.x: operation not supported".
func storeXattrErr(err error) error {
	var se *xattr.SetError
	if errors.As(err, &se) && se.NotSupported() {
		return fmt.Errorf("store %w", err)
	}
	return err
}

// copyRW copies in (from offset 0, with pread: a lent fd's position is not
// ours) to out, up to limit bytes (limit < 0: to EOF).
func copyRW(in, out int, limit int64) (int64, error) {
	if _, err := unix.Seek(out, 0, 0); err != nil {
		return 0, err
	}
	if err := unix.Ftruncate(out, 0); err != nil {
		return 0, err
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	var total int64
	for limit < 0 || total < limit {
		b := *bp
		if limit >= 0 && limit-total < int64(len(b)) {
			b = b[:limit-total]
		}
		n, err := unix.Pread(in, b, total)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil
		}
		for w := 0; w < n; {
			m, err := unix.Write(out, b[w:n])
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return total, err
			}
			w += m
		}
		total += int64(n)
	}
	return total, nil
}

var tmpSeq atomic.Uint64

var pidPrefix = "obj-" + strconv.Itoa(os.Getpid()) + "-"

// createTemp creates a temp file in dirfd already carrying mode (an open
// with O_CREAT returns a writable fd even for a read-only mode, so the
// object needs no chmod afterwards in the common case).
func createTemp(dirfd int, dir string, mode uint32, flags int) (int, string, error) {
	var buf [48]byte
	for {
		name := string(strconv.AppendUint(append(buf[:0], pidPrefix...), tmpSeq.Add(1), 10))
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|flags, mode)
		if err == unix.EEXIST || err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, "", fmt.Errorf("create temp object in %s: %w", dir, err)
		}
		return fd, name, nil
	}
}

// createObjectTemp is createTemp with O_DIRECT when direct is asked for
// and the filesystem takes it; it reports whether the file is direct.
func createObjectTemp(dirfd int, dir string, mode uint32, direct bool) (int, string, bool, error) {
	if direct && directOK.Load() {
		fd, name, err := createTemp(dirfd, dir, mode, unix.O_DIRECT)
		if err == nil {
			return fd, name, true, nil
		}
		directOK.Store(false) // the filesystem refuses O_DIRECT
	}
	fd, name, err := createTemp(dirfd, dir, mode, 0)
	return fd, name, false, err
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
	if err == nil {
		err = setXattrs(int(out.Fd()), k)
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

// Publish renames a staged temp file to its object name, first turning
// fs-verity on for it where the filesystem can (see enableVerity). The fan-out
// directory is created if needed; callers fsync the touched fan-out
// directories (or syncfs) afterwards. An object that already exists wins:
// its content is the same by construction, and replacing it would break
// the hardlink identity of every tree linked to it, so the temp file is
// removed instead (renameat2 RENAME_NOREPLACE).
func (s *Store) Publish(tmp string, k Key) error {
	s.enableVerity(tmp, k) // before the fan-out lock: it reads the whole file
	d, f, fanfd, err := s.fanOf(&k, true)
	if err != nil {
		return fmt.Errorf("create fan-out dir for %s: %w", k.RelPath(), err)
	}
	defer f.mu.Unlock()
	srcfd, srcname := unix.AT_FDCWD, tmp
	if dir, base := filepath.Split(tmp); strings.HasPrefix(dir, d.tmp) {
		switch sub := dir[len(d.tmp):]; {
		case sub == "/":
			if tfd, err := d.tmpDir(); err == nil {
				srcfd, srcname = tfd, base
			}
		case len(sub) == 4 && sub[0] == '/' && sub[1:3] == fanName(k.Hash[0]) && f.tmpfd >= 0:
			srcfd, srcname = f.tmpfd, base
		}
	}
	var buf [128]byte
	name := string(k.AppendName(buf[:0]))
	for {
		err = unix.Renameat2(srcfd, srcname, fanfd, name, unix.RENAME_NOREPLACE)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.EEXIST:
		if err := unix.Unlinkat(srcfd, srcname, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("publish object %s: remove duplicate: %w", k.RelPath(), err)
		}
	case err == unix.EINVAL || err == unix.ENOSYS: // no RENAME_NOREPLACE here
		if err := unix.Renameat(srcfd, srcname, fanfd, name); err != nil {
			return fmt.Errorf("publish object %s: %w", k.RelPath(), err)
		}
	case err != nil:
		return fmt.Errorf("publish object %s: %w", k.RelPath(), err)
	}
	if f.listed {
		f.names[name] = struct{}{}
	}
	return nil
}

// ErrNoLink means StageLink cannot take the source file by hardlink (another
// filesystem, link limit, the file has other links, or another process has
// it open); copy it instead.
var ErrNoLink = errors.New("source cannot be taken into the store by hardlink")

// StageLink stages src by hardlinking it into TmpDir instead of copying:
// the commit --consume path, where the caller gives up src. The inode
// becomes the object, so it gets the key's mode and owner (src sees the
// same, being the same inode). Only a file with no other links is taken
// (an inode shared with a live tree, say one made by cp -al from /usr, must
// not become an object), only when no other process has it open (one that
// is writing it could change the object later), and only when it is still
// the file want describes. Durability is the caller's syncfs, as for Stage.
//
// "No other process has it open" is a write lease (F_SETLEASE F_WRLCK),
// which the kernel grants only while the caller's descriptor is the file's
// only open one (a running executable counts as open for writing), and
// which makes any other open wait until it is released, after the link and
// chmod. The file is never opened again while the lease is held: that would
// break the lease. Without leases (not the owner and no CAP_LEASE, leases
// disabled, a filesystem without them) the file is copied.
func (s *Store) StageLink(src string, k Key, want *unix.Stat_t) (string, error) {
	if want == nil || want.Nlink != 1 {
		return "", ErrNoLink
	}
	fd, giveBack, borrowed := borrow(want, src)
	if borrowed {
		defer giveBack()
	} else {
		var err error
		if fd, err = OpenFileAt(unix.AT_FDCWD, src); err != nil {
			return "", fmt.Errorf("open %s: %w", src, err)
		}
		defer unix.Close(fd)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		return "", ErrNoLink // EAGAIN: open elsewhere; EACCES, EINVAL: no lease here
	}
	defer unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", fmt.Errorf("fstat %s: %w", src, err)
	}
	if st.Ino != want.Ino || st.Dev != want.Dev || st.Size != want.Size || st.Mtim != want.Mtim || st.Nlink != 1 {
		return "", fmt.Errorf("%s changed while it was being committed", src)
	}
	d, tfd, err := s.tmpFan(k)
	if err != nil {
		return "", err
	}
	var buf [48]byte
	name := string(strconv.AppendUint(append(buf[:0], pidPrefix...), tmpSeq.Add(1), 10))
	if err := unix.Linkat(unix.AT_FDCWD, src, tfd, name, 0); err != nil {
		if err == unix.EXDEV || err == unix.EMLINK || err == unix.EPERM {
			return "", ErrNoLink
		}
		return "", fmt.Errorf("link %s into the store: %w", src, err)
	}
	fail := func(err error) (string, error) {
		unix.Unlinkat(tfd, name, 0)
		return "", err
	}
	// The path was linked, not the descriptor: it must have been the same
	// inode, and still the only other link.
	var lst unix.Stat_t
	if err := unix.Fstatat(tfd, name, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail(fmt.Errorf("fstat %s: %w", src, err))
	}
	if lst.Ino != st.Ino || lst.Dev != st.Dev || lst.Nlink != 2 {
		return fail(fmt.Errorf("%s changed while it was being committed", src))
	}
	if euid == 0 && (st.Uid != k.UID || st.Gid != k.GID) {
		if err := unix.Fchown(fd, int(k.UID), int(k.GID)); err != nil {
			return fail(fmt.Errorf("object %s: chown: %w", k.RelPath(), err))
		}
	}
	if st.Mode&07777 != k.Mode || k.Mode&06000 != 0 {
		if err := unix.Fchmod(fd, k.Mode); err != nil {
			return fail(fmt.Errorf("object %s: chmod: %w", k.RelPath(), err))
		}
	}
	// src's inode becomes the object: exactly k's xattrs (src's own were
	// scanned into k; any other, or a later change, must go).
	changed, err := xattr.FSet(fd, k.Xattrs)
	if err != nil {
		return fail(fmt.Errorf("object %s: %w", k.RelPath(), storeXattrErr(err)))
	}
	if changed { // an access ACL set or removed changes the group bits
		if err := unix.Fchmod(fd, k.Mode); err != nil {
			return fail(fmt.Errorf("object %s: chmod: %w", k.RelPath(), err))
		}
	}
	return d.tmp + "/" + fanName(k.Hash[0]) + "/" + name, nil
}

// tmpFan returns the store's state and the open staging fan-out directory
// for k.
func (s *Store) tmpFan(k Key) (*dirs, int, error) {
	d := s.state()
	f := &d.fans[k.Hash[0]]
	f.mu.Lock()
	defer f.mu.Unlock()
	tfd, err := d.tmpFanFD(f, k.Hash[0])
	return d, tfd, err
}
