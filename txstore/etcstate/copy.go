package etcstate

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"

	"github.com/txboot/txboot/txstore/internal/safefs"
	"github.com/txboot/txboot/txstore/internal/xattr"
	"golang.org/x/sys/unix"
)

// Copy makes dst an exact copy of the /etc tree src: regular files,
// directories, symlinks, device nodes, FIFOs and sockets, with their
// modes (setuid, setgid, sticky included), owners, xattrs (ACLs, file
// capabilities, SELinux labels) and times; the marker at the top is not
// copied. Nothing is followed: a symlink is copied as a symlink. Hard
// links become separate files; holes are not kept. dst must not exist
// (ErrExists); it is built in place, so callers build beside and rename.
// Everything is durable when Copy returns (one syncfs of dst's
// filesystem: at boot that is all it has dirty, and one flush is far
// cheaper than one journal commit per file). Over MaxEntries entries or a
// file over MaxFileSize is ErrTooBig, and dst is left for the caller to
// remove.
func Copy(src, dst string) error {
	sfd, err := openRoot(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer unix.Close(sfd)
	c := newCopier(src, dst)
	pfd, base, err := openParent(dst)
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := c.dir(sfd, &st, pfd, base, ""); err != nil {
		return err
	}
	return syncfs(pfd, dst)
}

// openParent opens the directory that will hold p and checks p is free.
func openParent(p string) (int, string, error) {
	p = filepath.Clean(p)
	pfd, err := openRoot(filepath.Dir(p))
	if err != nil {
		return -1, "", err
	}
	base := filepath.Base(p)
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		unix.Close(pfd)
		return -1, "", fmt.Errorf("%w: %s", ErrExists, p)
	}
	return pfd, base, nil
}

func syncfs(fd int, name string) error {
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", name, err)
	}
	return nil
}

// copier copies entries from one tree into another, counting them against
// MaxEntries.
type copier struct {
	src, dst string
	count    int
	buf      []byte
}

func newCopier(src, dst string) *copier {
	return &copier{src: src, dst: dst, buf: make([]byte, 128<<10)}
}

func (c *copier) tick() error {
	if c.count++; c.count > MaxEntries {
		return fmt.Errorf("copy %s: %w: more than %d entries", c.src, ErrTooBig, MaxEntries)
	}
	return nil
}

func (c *copier) at(rel string) string { return filepath.Join(c.dst, rel) }

// entry copies name of sfd (rel in the source tree) to dname of dfd.
func (c *copier) entry(sfd int, name string, dfd int, dname, rel string) error {
	if err := c.tick(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(sfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		fd, err := openEntry(sfd, name, unix.S_IFDIR)
		if err != nil {
			return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
		}
		defer unix.Close(fd)
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
		}
		return c.dir(fd, &st, dfd, dname, rel)
	case unix.S_IFREG:
		return c.file(sfd, name, dfd, dname, rel)
	case unix.S_IFLNK:
		return c.symlink(sfd, name, &st, dfd, dname, rel)
	}
	return c.special(sfd, name, &st, dfd, dname, rel)
}

// dir creates dname in dfd, fills it from the open directory sfd and
// then gives it sfd's metadata (last: a read-only directory must be
// filled first, and its times would change with every entry made).
func (c *copier) dir(sfd int, st *unix.Stat_t, dfd int, dname, rel string) error {
	if depth(rel) >= maxDepth {
		return fmt.Errorf("copy %s/%s: %w: deeper than %d directories", c.src, rel, ErrTooBig, maxDepth)
	}
	if err := unix.Mkdirat(dfd, dname, 0o700); err != nil {
		if errors.Is(err, unix.EEXIST) {
			err = ErrExists
		}
		return fmt.Errorf("copy to %s: %w", c.at(rel), err)
	}
	fd, err := openEntry(dfd, dname, unix.S_IFDIR)
	if err != nil {
		return fmt.Errorf("copy to %s: %w", c.at(rel), err)
	}
	defer unix.Close(fd)
	ents, err := safefs.List(sfd)
	if err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		if rel == "" && skipTop(e.Name) {
			continue
		}
		names = append(names, e.Name)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := c.entry(sfd, n, fd, n, join(rel, n)); err != nil {
			return err
		}
	}
	x, err := xattr.FRead(sfd)
	if err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	if err := setMeta(fd, st, x); err != nil {
		return fmt.Errorf("copy to %s: %w", c.at(rel), err)
	}
	return nil
}

func (c *copier) file(sfd int, name string, dfd int, dname, rel string) error {
	in, err := openEntry(sfd, name, unix.S_IFREG)
	if err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	defer unix.Close(in)
	var st unix.Stat_t
	if err := unix.Fstat(in, &st); err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	if st.Size > MaxFileSize {
		return fmt.Errorf("copy %s/%s: %w: %d bytes (at most %d)", c.src, rel, ErrTooBig, st.Size, MaxFileSize)
	}
	x, err := xattr.FRead(in)
	if err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	out, err := unix.Openat(dfd, dname, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("copy to %s: %w", c.at(rel), err)
	}
	defer unix.Close(out)
	n, err := io.CopyBuffer(fdWriter{out}, io.LimitReader(fdReader{in}, MaxFileSize+1), c.buf)
	if err == nil && n > MaxFileSize {
		err = fmt.Errorf("%w: grew over %d bytes while copied", ErrTooBig, MaxFileSize)
	}
	if err == nil {
		err = setMeta(out, &st, x)
	}
	if err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	return nil
}

// fdWriter writes a descriptor it does not own.
type fdWriter struct{ fd int }

func (w fdWriter) Write(p []byte) (int, error) {
	if err := writeAll(w.fd, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *copier) symlink(sfd int, name string, st *unix.Stat_t, dfd int, dname, rel string) error {
	target, err := readlink(sfd, name)
	if err == nil {
		err = unix.Symlinkat(target, dfd, dname)
	}
	if err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	return c.pathMeta(sfd, name, st, dfd, dname, rel, false)
}

// special copies a device node, FIFO or socket: the node itself, never
// what it stands for.
func (c *copier) special(sfd int, name string, st *unix.Stat_t, dfd int, dname, rel string) error {
	if err := unix.Mknodat(dfd, dname, st.Mode&(unix.S_IFMT|0o777), int(st.Rdev)); err != nil {
		return fmt.Errorf("copy %s/%s (mknod): %w", c.src, rel, err)
	}
	return c.pathMeta(sfd, name, st, dfd, dname, rel, true)
}

// pathMeta gives dname (a symlink or special file, which has no
// descriptor to set things through) name's owner, xattrs, mode and times.
func (c *copier) pathMeta(sfd int, name string, st *unix.Stat_t, dfd int, dname, rel string, chmod bool) error {
	x, err := xattrsAt(sfd, name)
	if err != nil {
		return fmt.Errorf("copy %s/%s: %w", c.src, rel, err)
	}
	fail := func(err error) error { return fmt.Errorf("copy to %s: %w", c.at(rel), err) }
	if err := unix.Fchownat(dfd, dname, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail(fmt.Errorf("chown: %w", err))
	}
	if x != "" || chmod {
		// The l* calls do not follow the final name; none is set on a
		// plain symlink without xattrs (user.* is refused there).
		if _, err := xattr.LSet(procPath(dfd, dname), x); err != nil {
			return fail(err)
		}
	}
	if chmod { // a device node's mode is its own inode's; fchmodat does not follow one
		if err := unix.Fchmodat(dfd, dname, st.Mode&0o7777, 0); err != nil {
			return fail(fmt.Errorf("chmod: %w", err))
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(dfd, dname, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail(fmt.Errorf("times: %w", err))
	}
	return nil
}

// setMeta gives the open file or directory fd st's owner, then exactly
// the xattrs x (after chown, which drops a file capability), then st's
// mode (an ACL carries the group bits; chown clears setuid), then its
// times.
func setMeta(fd int, st *unix.Stat_t, x string) error {
	var cur unix.Stat_t
	if err := unix.Fstat(fd, &cur); err != nil {
		return err
	}
	if cur.Uid != st.Uid || cur.Gid != st.Gid {
		if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if _, err := xattr.FSet(fd, x); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
		return futimens(fd, ts)
	}
	return nil
}

// futimens sets an open file's times through its /proc link when
// utimensat does not take AT_EMPTY_PATH.
func futimens(fd int, ts []unix.Timespec) error {
	if err := unix.UtimesNano(procFD(fd), ts); err != nil {
		return fmt.Errorf("times: %w", err)
	}
	return nil
}

func procFD(fd int) string { return "/proc/self/fd/" + fmt.Sprint(fd) }
