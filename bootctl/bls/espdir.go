package bls

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/fsx"
)

// Errors for files on the ESP that are not what txboot's layout expects.
// They are reported and left alone: not opened, followed, replaced or
// removed.
var (
	ErrNotRegular = errors.New("not a regular file; left alone")
	ErrNotDir     = errors.New("not a directory; not followed")
	ErrNoSpace    = errors.New("not enough space on the ESP")
)

// espDir is a directory on the ESP held open by fd. Every directory below
// the ESP's mount point is opened with O_NOFOLLOW|O_DIRECTORY one component
// at a time, and every file operation is relative to the fd (openat,
// renameat, unlinkat), so a symlink planted on the ESP can never redirect a
// read, write or removal outside it. FAT has no symlinks; a directory used
// as an ESP (tests, or a misconfigured --esp) may.
type espDir struct {
	fd  int
	abs string // for messages
	rel string // '/'-separated, relative to the ESP; "" for the ESP itself
}

// openESP opens the ESP's mount point. The configured path itself may be a
// symlink (/efi -> /boot/efi is common); nothing below it is followed.
func openESP(p string) (*espDir, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			return nil, fmt.Errorf("ESP %s: %w: %w", p, ErrConfig, err)
		}
		return nil, fmt.Errorf("ESP %s: %w", p, &fs.PathError{Op: "open", Path: p, Err: err})
	}
	return &espDir{fd: fd, abs: p}, nil
}

func (d *espDir) Close() error { return unix.Close(d.fd) }

// openEntriesDir opens loader/entries beneath the ESP's root handle, one
// component at a time (a symlinked loader/ or entries/ is not followed).
// A missing one is (nil, nil): no entries. The caller closes the result.
func (d *espDir) openEntriesDir() (*espDir, error) {
	loader, err := d.openDir(path.Dir(EntriesDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer loader.Close()
	entries, err := loader.openDir(path.Base(EntriesDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return entries, err
}

func (d *espDir) path(name string) string { return filepath.Join(d.abs, name) }
func (d *espDir) relPath(name string) string {
	if d.rel == "" {
		return name
	}
	return path.Join(d.rel, name)
}

// openDir opens the subdirectory name without following a symlink.
func (d *espDir) openDir(name string) (*espDir, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			// Name what is there instead: errno would only repeat "not a directory".
			kind := "not a directory"
			if st, serr := d.lstat(name); serr == nil {
				kind = KindOf(st.Mode)
			}
			return nil, fmt.Errorf("open dir %s: %s: %w", d.path(name), kind, ErrNotDir)
		}
		return nil, fmt.Errorf("open dir %s: %w", d.path(name), &fs.PathError{Op: "open", Path: d.path(name), Err: err})
	}
	return &espDir{fd: fd, abs: d.path(name), rel: d.relPath(name)}, nil
}

// mkdirAll opens rel below d, creating missing components and fsyncing each
// parent that gained one. A component that exists as anything but a
// directory is an error (ErrNotDir), never followed.
func (d *espDir) mkdirAll(rel string) (*espDir, error) {
	cur := d
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." || c == ".." {
			continue
		}
		err := unix.Mkdirat(cur.fd, c, 0o755)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			if cur != d {
				cur.Close()
			}
			return nil, fmt.Errorf("mkdir %s: %w", cur.path(c), &fs.PathError{Op: "mkdir", Path: cur.path(c), Err: err})
		}
		if err == nil {
			if err := cur.sync(); err != nil {
				if cur != d {
					cur.Close()
				}
				return nil, err
			}
		}
		next, err := cur.openDir(c)
		if cur != d {
			cur.Close()
		}
		if err != nil {
			return nil, err
		}
		cur = next
	}
	if cur == d { // rel named d itself: hand out an fd the caller may close
		fd, err := unix.Dup(d.fd)
		if err != nil {
			return nil, fmt.Errorf("dup %s: %w", d.abs, err)
		}
		unix.CloseOnExec(fd)
		return &espDir{fd: fd, abs: d.abs, rel: d.rel}, nil
	}
	return cur, nil
}

func (d *espDir) sync() error { return fsx.SyncDirFd(d.fd, d.abs) }

// list reads the directory's entries (names and types from the listing,
// without following anything).
func (d *espDir) list() ([]fs.DirEntry, error) {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.abs, err)
	}
	f := os.NewFile(uintptr(fd), d.abs)
	defer f.Close()
	des, err := f.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.abs, err)
	}
	return des, nil
}

// lstat is fstatat without following a symlink.
func (d *espDir) lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, fmt.Errorf("stat %s: %w", d.path(name), &fs.PathError{Op: "stat", Path: d.path(name), Err: err})
	}
	return st, nil
}

// KindOf names a file type for messages.
func KindOf(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "device"
	}
	return "special file"
}

// kindOfType names a directory listing's file type for messages.
func kindOfType(t fs.FileMode) string {
	switch {
	case t.IsRegular():
		return "regular file"
	case t.IsDir():
		return "directory"
	case t&fs.ModeSymlink != 0:
		return "symlink"
	case t&fs.ModeNamedPipe != 0:
		return "FIFO"
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// openRegular opens name for reading only if it is a regular file:
// O_NOFOLLOW refuses a symlink, O_NONBLOCK keeps a FIFO from blocking the
// open, and fstat on the opened fd decides (no race with a swap).
func (d *espDir) openRegular(name string) (*os.File, int64, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, 0, fmt.Errorf("%s: symlink: %w", d.path(name), ErrNotRegular)
		}
		return nil, 0, fmt.Errorf("open %s: %w", d.path(name), &fs.PathError{Op: "open", Path: d.path(name), Err: err})
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("stat %s: %w", d.path(name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%s: %s: %w", d.path(name), KindOf(st.Mode), ErrNotRegular)
	}
	// Back to blocking reads: O_NONBLOCK was only for the open.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("open %s: %w", d.path(name), err)
	}
	return os.NewFile(uintptr(fd), d.path(name)), st.Size, nil
}

// readFile reads a regular file of at most limit bytes (ErrTooLarge beyond).
func (d *espDir) readFile(name string, limit int64) ([]byte, error) {
	f, size, err := d.openRegular(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if size > limit {
		return nil, fmt.Errorf("read %s: %d bytes, limit %d: %w", d.path(name), size, limit, ErrTooLarge)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.path(name), err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: %w", d.path(name), ErrTooLarge)
	}
	return b, nil
}

// createTemp creates a hidden temp file for name in d (O_EXCL|O_NOFOLLOW).
func (d *espDir) createTemp(name string, perm fs.FileMode) (*os.File, string, error) {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return nil, "", fmt.Errorf("write %s: %w", d.path(name), fs.ErrInvalid)
	}
	for range 10 {
		tn, err := tempName(name)
		if err != nil {
			return nil, "", err
		}
		fd, err := unix.Openat(d.fd, tn, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("create temp for %s: %w", d.path(name), &fs.PathError{Op: "open", Path: d.path(tn), Err: err})
		}
		return os.NewFile(uintptr(fd), d.path(tn)), tn, nil
	}
	return nil, "", fmt.Errorf("create temp for %s: %w", d.path(name), fs.ErrExist)
}

// commitTemp fsyncs tmp, renames it to name, fsyncs it again, closes it
// and fsyncs d. The second fsync is for FAT: Linux's vfat rename writes
// the new directory entry with no start cluster and size 0 (or leaves the
// replaced file's) and fills it in only when the inode is written back,
// so a power cut after the directory fsync alone left an empty entry or
// one naming freed clusters (TestPowerCutAtReturn).
func (d *espDir) commitTemp(tmp *os.File, tmpName, name string) error {
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := unix.Renameat(d.fd, tmpName, d.fd, name); err != nil {
		tmp.Close()
		return fmt.Errorf("rename %s: %w", d.path(name), &fs.PathError{Op: "rename", Path: d.path(name), Err: err})
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync %s: %w", d.path(name), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", d.path(name), err)
	}
	return d.sync()
}

// syncFile fsyncs the regular file name in d (see commitTemp: on FAT a
// renamed file's directory entry is written by its own fsync).
func (d *espDir) syncFile(name string) error {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", d.path(name), &fs.PathError{Op: "open", Path: d.path(name), Err: err})
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync %s: %w", d.path(name), &fs.PathError{Op: "fsync", Path: d.path(name), Err: err})
	}
	return nil
}

// writeAtomic replaces name with data: temp file, fsync, rename, fsync dir.
// An existing name that is not a regular file is left alone (ErrNotRegular).
func (d *espDir) writeAtomic(name string, data []byte, perm fs.FileMode) (err error) {
	if st, err := d.lstat(name); err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("write %s: %s: %w", d.path(name), KindOf(st.Mode), ErrNotRegular)
	}
	tmp, tn, err := d.createTemp(name, perm)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			unix.Unlinkat(d.fd, tn, 0)
		}
	}()
	if _, err := (&spaceWriter{w: tmp}).Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	return d.commitTemp(tmp, tn, name)
}

// rename renames oldName to newName in d (replacing a regular newName, like
// rename(2)) and fsyncs d.
func (d *espDir) rename(oldName, newName string) error {
	if st, err := d.lstat(newName); err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("rename %s to %s: %s: %w", d.path(oldName), newName, KindOf(st.Mode), ErrNotRegular)
	}
	if err := unix.Renameat(d.fd, oldName, d.fd, newName); err != nil {
		return fmt.Errorf("rename %s to %s: %w", d.path(oldName), newName, &fs.PathError{Op: "rename", Path: d.path(oldName), Err: err})
	}
	if err := d.syncFile(newName); err != nil {
		return err
	}
	return d.sync()
}

// remove unlinks the regular file name and fsyncs d. A missing file is not
// an error; anything but a regular file is left alone (ErrNotRegular).
func (d *espDir) remove(name string) error {
	st, err := d.lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("remove %s: %s: %w", d.path(name), KindOf(st.Mode), ErrNotRegular)
	}
	if err := unix.Unlinkat(d.fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", d.path(name), &fs.PathError{Op: "unlink", Path: d.path(name), Err: err})
	}
	return d.sync()
}

// removeAll removes the directory name and everything in it, descending
// only through directories opened with O_NOFOLLOW and unlinking every other
// entry (a symlink is removed, never followed).
func (d *espDir) removeAll(name string) error {
	sub, err := d.openDir(name)
	if err != nil {
		return err
	}
	des, err := sub.list()
	if err != nil {
		sub.Close()
		return err
	}
	for _, de := range des {
		if de.IsDir() {
			err = sub.removeAll(de.Name())
		} else if uerr := unix.Unlinkat(sub.fd, de.Name(), 0); uerr != nil && !errors.Is(uerr, unix.ENOENT) {
			err = fmt.Errorf("remove %s: %w", sub.path(de.Name()), uerr)
		}
		if err != nil {
			sub.Close()
			return err
		}
	}
	sub.Close()
	if err := unix.Unlinkat(d.fd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", d.path(name), &fs.PathError{Op: "rmdir", Path: d.path(name), Err: err})
	}
	return d.sync()
}

// freeBytes is what the filesystem holding fd has left for us. A variable
// so that tests can model a small ESP (see spaceWriter).
var freeBytes = func(fd int) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// beforeWrite, when set (tests only), is asked before n more bytes are
// written to a file on the ESP and may refuse with ENOSPC: an injected full
// ESP, since unit tests cannot mount a small filesystem.
var beforeWrite func(n int) error

// spaceWriter writes to an ESP file through the beforeWrite hook.
type spaceWriter struct{ w io.Writer }

func (s *spaceWriter) Write(p []byte) (int, error) {
	if beforeWrite != nil {
		if err := beforeWrite(len(p)); err != nil {
			return 0, err
		}
	}
	return s.w.Write(p)
}

// isNoSpace: the write failed because the filesystem is full.
func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}
