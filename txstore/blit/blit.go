// Package blit turns a manifest into a tree of hardlinks into the CAS, and
// verifies such a tree against its manifest.
//
// Both walk the manifest as per-directory jobs on a few workers: a job opens
// its directory once and does everything in it with syscalls relative to
// that fd (linkat from the CAS's open fan-out directory, symlinkat,
// mkdirat; fstatat, readlinkat for verify). Huge directories are split into
// chunks of entries sharing one fd.
package blit

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/walk"
	"github.com/txboot/txboot/txstore/internal/xattr"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// Stats describe one blit.
type Stats struct {
	Dirs, Links, Symlinks, Empty, Copies int
}

func (s *Stats) add(o *Stats) {
	s.Dirs += o.Dirs
	s.Links += o.Links
	s.Symlinks += o.Symlinks
	s.Empty += o.Empty
	s.Copies += o.Copies
}

// Blit builds dst (which must not exist) from m, hardlinking file entries to
// their objects. Empty files are created fresh (thousands of links to one
// empty inode hit ext4's link limit); EMLINK and EXDEV fall back to a copy.
// Directories are created with their final mode when that leaves them
// writable to us and the umask allows it; the others (read-only, setgid,
// sticky, foreign owner) are created writable and fixed up last, deepest
// first, so a 0555 directory can still be filled.
//
// For a v2 manifest every directory, symlink and new file gets exactly its
// recorded xattrs, set right after it is created (minus whatever the kernel
// gave it: a copy of the parent's default ACL, a label); linked files have
// theirs in the object. A v1 manifest records none and none are touched.
func Blit(m *manifest.Manifest, objs *cas.Store, dst string, workers int) (Stats, error) {
	var st Stats
	ix, err := newIndex(m)
	if err != nil {
		return st, fmt.Errorf("blit %s: %w", dst, err)
	}
	if workers <= 0 {
		workers = 2 * runtime.GOMAXPROCS(0)
	}
	if err := unix.Mkdir(dst, 0o700); err != nil {
		return st, fmt.Errorf("blit: mkdir %s: %w", dst, err)
	}
	rootfd, err := walk.OpenDirAt(unix.AT_FDCWD, dst)
	if err != nil {
		return st, fmt.Errorf("blit: open %s: %w", dst, err)
	}
	root := walk.NewDir(rootfd)
	defer root.Unref()
	var rst unix.Stat_t
	if err := unix.Fstat(rootfd, &rst); err != nil {
		return st, fmt.Errorf("blit: stat %s: %w", dst, err)
	}
	if rst.Mode&unix.S_ISGID != 0 { // inherited: keep it from spreading into the tree
		if err := unix.Fchmod(rootfd, 0o700); err != nil {
			return st, fmt.Errorf("blit chmod %s: %w", dst, err)
		}
	}
	// A v1 manifest says nothing about xattrs: none are set or removed.
	withX := m.Version != 1
	if withX {
		if _, err := setXattrs(rootfd, &m.Entries[0]); err != nil {
			return st, fmt.Errorf("blit %s: %w", dst, err)
		}
	}

	b := &blitter{ix: ix, objs: objs, dst: dst, xattrs: withX, sched: walk.NewSched[job](), per: make([]blitWorker, workers)}
	b.sched.Push(job{dir: 0, d: root.Ref(), kids: ix.children(0)})
	err = b.sched.Run(workers, b.run)
	runtime.KeepAlive(objs)
	for i := range b.per {
		st.add(&b.per[i].st)
	}
	st.Dirs = len(ix.dirs)
	if err != nil {
		return st, err
	}

	// Directory fixups, deepest (latest in manifest order) first; the root last.
	var fix []int32
	for i := range b.per {
		fix = append(fix, b.per[i].fix...)
	}
	slices.Sort(fix)
	for i := len(fix) - 1; i >= 0; i-- {
		e := &m.Entries[fix[i]]
		if err := fixDir(rootfd, e.Path, e); err != nil {
			return st, fmt.Errorf("blit %s/%s: %w", dst, e.Path, err)
		}
	}
	re := &m.Entries[0]
	if cas.IsRoot() && (rst.Uid != re.UID || rst.Gid != re.GID) {
		if err := unix.Fchown(rootfd, int(re.UID), int(re.GID)); err != nil {
			return st, fmt.Errorf("blit chown %s: %w", dst, err)
		}
	}
	if err := unix.Fchmod(rootfd, re.Mode); err != nil {
		return st, fmt.Errorf("blit chmod %s: %w", dst, err)
	}
	return st, nil
}

// fixDir gives a directory its final owner, then mode (chown clears setgid).
func fixDir(rootfd int, rel string, e *manifest.Entry) error {
	if cas.NeedChown(e.UID, e.GID) {
		if err := unix.Fchownat(rootfd, rel, int(e.UID), int(e.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := unix.Fchmodat(rootfd, rel, e.Mode, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// dirMode is the mode to create a directory with, and whether it needs a
// fixup afterwards.
func dirMode(e *manifest.Entry) (uint32, bool) {
	mode, chmod := cas.CreateMode(e.Mode)
	if mode&0o700 != 0o700 { // we must be able to fill it, even without CAP_DAC_OVERRIDE
		mode |= 0o700
		chmod = true
	}
	return mode, chmod || cas.NeedChown(e.UID, e.GID)
}

type blitter struct {
	ix     *index
	objs   *cas.Store
	dst    string
	xattrs bool // set exactly the recorded xattrs (v2 manifests)
	sched  *walk.Sched[job]
	per    []blitWorker
}

// setXattrs gives open file fd exactly e's xattrs: the recorded ones, and
// none the kernel added on creation (a copy of the parent's default ACL, an
// SELinux label). It reports whether anything changed, after which the
// mode needs setting again (an ACL carries the group bits).
func setXattrs(fd int, e *manifest.Entry) (bool, error) {
	changed, err := xattr.FSet(fd, e.Xattrs)
	if err != nil {
		return changed, fmt.Errorf("xattrs: %w", err)
	}
	return changed, nil
}

type blitWorker struct {
	st  Stats
	fix []int32 // directory entries that need a final chown/chmod
	_   [64]byte
}

func (b *blitter) path(e *manifest.Entry) string { return b.dst + "/" + e.Path }

func (b *blitter) run(w int, j job) error {
	d := j.d
	if d == nil { // open job: make the directory, then fill it
		e := &b.ix.m.Entries[b.ix.dirs[j.dir]]
		mode, fix := dirMode(e)
		nm := name(e.Path)
		err := unix.Mkdirat(j.parent.FD, nm, mode)
		if err != nil {
			j.parent.Unref()
			return fmt.Errorf("blit mkdir %s: %w", b.path(e), err)
		}
		fd, err := walk.OpenDirAt(j.parent.FD, nm)
		j.parent.Unref()
		if err != nil {
			return fmt.Errorf("blit open %s: %w", b.path(e), err)
		}
		if b.xattrs {
			changed, err := setXattrs(fd, e)
			if err != nil {
				unix.Close(fd)
				return fmt.Errorf("blit %s: %w", b.path(e), err)
			}
			fix = fix || changed // mode again: created under an inherited ACL, or given one
		}
		if fix {
			b.per[w].fix = append(b.per[w].fix, b.ix.dirs[j.dir])
		}
		d = walk.NewDir(fd)
		j.kids = b.ix.children(j.dir)
	}
	defer d.Unref()
	for len(j.kids) > blitChunk {
		b.sched.Push(job{dir: j.dir, d: d.Ref(), kids: j.kids[len(j.kids)-blitChunk:]})
		j.kids = j.kids[:len(j.kids)-blitChunk]
	}
	st := &b.per[w].st
	for _, i := range j.kids {
		if b.sched.Failed() {
			return nil
		}
		e := &b.ix.m.Entries[i]
		if err := b.place(d, i, e, st); err != nil {
			return err
		}
	}
	return nil
}

func (b *blitter) place(d *walk.Dir, i int32, e *manifest.Entry, st *Stats) error {
	nm := name(e.Path)
	switch e.Type {
	case manifest.Dir:
		b.sched.Push(job{dir: b.ix.sub[i], parent: d.Ref()})
	case manifest.Symlink:
		if err := unix.Symlinkat(e.Target, d.FD, nm); err != nil {
			return fmt.Errorf("blit symlink %s: %w", b.path(e), err)
		}
		if cas.NeedChown(e.UID, e.GID) {
			if err := unix.Fchownat(d.FD, nm, int(e.UID), int(e.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("blit chown %s: %w", b.path(e), err)
			}
		}
		if b.xattrs { // a symlink has no descriptor: by path, not followed
			if _, err := xattr.LSet(b.path(e), e.Xattrs); err != nil {
				return fmt.Errorf("blit %s: xattrs: %w", b.path(e), err)
			}
		}
		st.Symlinks++
	case manifest.File:
		k := e.Key()
		if e.Size == 0 {
			if err := createEmpty(d.FD, nm, k, b.xattrs); err != nil {
				return fmt.Errorf("blit %s: %w", b.path(e), err)
			}
			st.Empty++
			return nil
		}
		err := b.objs.LinkObject(k, e.Size, d.FD, nm)
		if err == nil {
			st.Links++
			return nil
		}
		if !errors.Is(err, unix.EMLINK) && !errors.Is(err, unix.EXDEV) {
			return fmt.Errorf("blit link %s → object %s: %w", b.path(e), k.RelPath(), err)
		}
		if err := copyObject(b.objs, k, d.FD, nm, b.xattrs); err != nil {
			return fmt.Errorf("blit copy %s: %w", b.path(e), err)
		}
		st.Copies++
	default:
		return fmt.Errorf("blit %s: %w: type %q", b.path(e), manifest.ErrBad, e.Type)
	}
	return nil
}

// createEmpty makes an empty file with k's mode and owner, and when
// withX exactly k's xattrs.
func createEmpty(dirfd int, nm string, k cas.Key, withX bool) error {
	mode, chmod := cas.CreateMode(k.Mode)
	fd, err := unix.Openat(dirfd, nm, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, mode)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	if chmod || cas.NeedChown(k.UID, k.GID) {
		err = cas.SetAttrs(fd, k.Mode, k.UID, k.GID)
	}
	if err == nil && withX {
		err = exactXattrs(fd, k)
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = cerr
	}
	return err
}

// exactXattrs gives a new file exactly k's xattrs, after its owner (chown
// drops security.capability), and its mode again if that changed anything
// (an inherited or recorded access ACL carries the group bits).
func exactXattrs(fd int, k cas.Key) error {
	changed, err := xattr.FSet(fd, k.Xattrs)
	if err != nil {
		return fmt.Errorf("xattrs: %w", err)
	}
	if changed {
		return unix.Fchmod(fd, k.Mode)
	}
	return nil
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

// copyObject copies object k to a new file nm in dirfd (when a hardlink is
// impossible: EMLINK, EXDEV).
func copyObject(objs *cas.Store, k cas.Key, dirfd int, nm string, withX bool) error {
	in, err := objs.Open(k)
	if err != nil {
		return fmt.Errorf("open object %s: %w", k.RelPath(), err)
	}
	defer unix.Close(in)
	out, err := unix.Openat(dirfd, nm, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	err = copyFD(in, out)
	if err == nil {
		err = cas.SetAttrs(out, k.Mode, k.UID, k.GID)
	}
	if err == nil && withX {
		err = exactXattrs(out, k)
	}
	if cerr := unix.Close(out); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		unix.Unlinkat(dirfd, nm, 0)
	}
	return err
}

func copyFD(in, out int) error {
	for {
		n, err := unix.CopyFileRange(in, nil, out, nil, 1<<30, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			break // fall back to read/write from wherever we got to
		}
		if n == 0 {
			return nil
		}
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	for {
		n, err := unix.Read(in, *bp)
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
			m, err := unix.Write(out, (*bp)[w:n])
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			w += m
		}
	}
}
