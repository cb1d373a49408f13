// Package safefs walks and removes directory trees of the store through
// directory descriptors, never following a symlink: every directory is
// opened relative to its parent's fd with O_NOFOLLOW|O_DIRECTORY and every
// name is removed with unlinkat relative to the fd of the directory that
// holds it. A symlink inside a tree is removed itself, never entered, so a
// tree whose parts were replaced by symlinks cannot lead a removal outside
// it.
package safefs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrNotDir: the name given to RemoveTree is not a directory (a symlink,
// say); nothing was removed.
var ErrNotDir = errors.New("not a directory")

// OpenDir opens directory name in dirfd without following a symlink: a
// symlink gives ELOOP or ENOTDIR, a non-directory ENOTDIR.
func OpenDir(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// IsNotDir reports whether an OpenDir error means "there is something
// here, but not a directory".
func IsNotDir(err error) bool {
	return errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, ErrNotDir)
}

// Describe says what name in dirfd is, for damage reports: "a symlink to
// /x", "a regular file", "missing".
func Describe(dirfd int, name string) string {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return "unreadable (" + err.Error() + ")"
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		buf := make([]byte, 4096)
		if n, err := unix.Readlinkat(dirfd, name, buf); err == nil {
			return "a symlink to " + strconv.Quote(string(buf[:n]))
		}
		return "a symlink"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFREG:
		return "a regular file"
	default:
		return fmt.Sprintf("a special file (mode %o)", st.Mode&unix.S_IFMT)
	}
}

// Entry is one name of a directory listing with its d_type (unix.DT_*;
// DT_UNKNOWN when the filesystem does not say).
type Entry struct {
	Name string
	Type uint8
}

// List reads every entry of the open directory fd (from its start) except
// "." and "..".
func List(fd int) ([]Entry, error) {
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, err
	}
	var out []Entry
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n <= 0 {
			return out, nil
		}
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				break
			}
			rec := b[:reclen]
			b = b[reclen:]
			nb := rec[19:]
			l := 0
			for l < len(nb) && nb[l] != 0 {
				l++
			}
			if name := string(nb[:l]); name != "" && name != "." && name != ".." {
				out = append(out, Entry{name, rec[18]})
			}
		}
	}
}

// TypeOf returns e's type, asking the filesystem when the listing did not say.
func TypeOf(dirfd int, e Entry) uint8 {
	if e.Type != unix.DT_UNKNOWN {
		return e.Type
	}
	var st unix.Stat_t
	if unix.Fstatat(dirfd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return unix.DT_UNKNOWN
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.DT_DIR
	case unix.S_IFLNK:
		return unix.DT_LNK
	case unix.S_IFREG:
		return unix.DT_REG
	}
	return unix.DT_UNKNOWN
}

// RemoveTree removes directory name in dirfd and everything beneath it.
// If name is not a directory (a symlink, a file) nothing is removed and the
// error wraps ErrNotDir; a missing name is no error. Inside the tree,
// symlinks are unlinked (never followed) and directories without write or
// search permission are made accessible through their own fd first.
// Subtrees two levels down are removed on a few goroutines: ext4 unlinks
// spend most of their time waiting on the journal, so several at once
// finish a 100k-entry tree in about half the time of one.
func RemoveTree(dirfd int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return fmt.Errorf("stat %s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s: %w", name, ErrNotDir)
	}
	fd, err := openForRemoval(dirfd, name)
	if err != nil {
		if IsNotDir(err) {
			return fmt.Errorf("%s: %w", name, ErrNotDir)
		}
		return fmt.Errorf("open %s: %w", name, err)
	}
	removeParallel(fd)
	err = removeContents(fd)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	if err := unlinkRetry(dirfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// removeParallel removes, on a few goroutines, the entries two levels
// below the open directory fd when there are enough of them to be worth
// it. Errors are ignored: the sequential pass that follows reports them.
func removeParallel(fd int) {
	top, err := List(fd)
	if err != nil {
		return
	}
	type unit struct {
		dirfd int
		e     Entry
	}
	var units []unit
	var subs []int
	defer func() {
		for _, s := range subs {
			unix.Close(s)
		}
	}()
	for _, e := range top {
		if TypeOf(fd, e) != unix.DT_DIR {
			continue
		}
		sub, err := openForRemoval(fd, e.Name)
		if err != nil {
			continue
		}
		subs = append(subs, sub)
		kids, err := List(sub)
		if err != nil {
			continue
		}
		for _, k := range kids {
			units = append(units, unit{sub, k})
		}
	}
	if len(units) < 64 {
		return
	}
	work := make(chan unit)
	var wg sync.WaitGroup
	for i := 0; i < 4*runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range work {
				removeEntry(u.dirfd, u.e)
			}
		}()
	}
	for _, u := range units {
		work <- u
	}
	close(work)
	wg.Wait()
}

// removeContents empties the open directory fd. A few passes: names added
// while it ran, or missed by a listing that changed under it, are caught
// by the next one.
func removeContents(fd int) error {
	for pass := 0; ; pass++ {
		ents, err := List(fd)
		if err != nil {
			return err
		}
		if len(ents) == 0 {
			return nil
		}
		for _, e := range ents {
			if err := removeEntry(fd, e); err != nil {
				return err
			}
		}
		if pass == 3 {
			return nil // the parent's rmdir reports what is left
		}
	}
}

// removeEntry removes one name of dirfd: a non-directory by unlinkat, a
// directory by opening it (O_NOFOLLOW), emptying it and rmdir.
func removeEntry(dirfd int, e Entry) error {
	if e.Type != unix.DT_DIR {
		err := unlinkRetry(dirfd, e.Name, 0)
		if err == nil || err == unix.ENOENT {
			return nil
		}
		if err != unix.EISDIR {
			return fmt.Errorf("unlink %s: %w", e.Name, err)
		}
	}
	fd, err := openForRemoval(dirfd, e.Name)
	if IsNotDir(err) { // replaced by a non-directory meanwhile: unlink that
		if err := unlinkRetry(dirfd, e.Name, 0); err != nil && err != unix.ENOENT {
			return fmt.Errorf("unlink %s: %w", e.Name, err)
		}
		return nil
	}
	if err == unix.ENOENT {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", e.Name, err)
	}
	err = removeContents(fd)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("%s/%w", e.Name, err)
	}
	if err := unlinkRetry(dirfd, e.Name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return fmt.Errorf("rmdir %s: %w", e.Name, err)
	}
	return nil
}

// unlinkRetry is unlinkat; on EACCES (dirfd lacks write or search
// permission, e.g. a 0555 directory of a tree, without CAP_DAC_OVERRIDE)
// it gives dirfd's directory u+rwx through the fd and tries again.
func unlinkRetry(dirfd int, name string, flags int) error {
	for retried := false; ; {
		err := unix.Unlinkat(dirfd, name, flags)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EACCES && !retried:
			retried = true
			if makeAccessible(dirfd) == nil {
				continue
			}
		}
		return err
	}
}

func makeAccessible(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	return unix.Fchmod(fd, st.Mode&07777|0o700)
}

// openForRemoval is OpenDir; a directory we may not read (mode 0000, 0311)
// is first given u+rwx through an O_PATH descriptor, so no symlink put in
// its place can redirect the chmod.
func openForRemoval(dirfd int, name string) (int, error) {
	fd, err := OpenDir(dirfd, name)
	if err != unix.EACCES {
		return fd, err
	}
	pfd, perr := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if perr != nil {
		return -1, err
	}
	var st unix.Stat_t
	cerr := unix.Fstat(pfd, &st)
	if cerr == nil {
		// fchmod does not take O_PATH descriptors; the /proc link names
		// exactly the inode pfd holds.
		cerr = unix.Chmod("/proc/self/fd/"+strconv.Itoa(pfd), st.Mode&07777|0o700)
	}
	unix.Close(pfd)
	if cerr != nil {
		return -1, err
	}
	return OpenDir(dirfd, name)
}
