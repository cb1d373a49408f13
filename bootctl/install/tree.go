package install

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// tree is the OS tree being installed, held open by fd. Every path below
// it is resolved with openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, so a
// symlink in the tree (usr/lib/txboot -> /usr/bin, say) can never send a
// write, read or removal outside it: it fails instead.
type tree struct {
	root string
	fd   int
}

func openTree(root string) (*tree, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, &fs.PathError{Op: "open", Path: root, Err: err})
	}
	return &tree{root: root, fd: fd}, nil
}

func (t *tree) Close() error { return unix.Close(t.fd) }

func (t *tree) path(rel string) string { return filepath.Join(t.root, rel) }

// open opens rel (a '/'-separated path) without following any symlink.
func (t *tree) open(rel string, flags int, mode uint32) (int, error) {
	if rel == "" || rel == "." {
		return unix.Dup(t.fd)
	}
	fd, err := unix.Openat2(t.fd, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return -1, fmt.Errorf("%s: a symlink on the way, not followed: %w", t.path(rel), ErrRefused)
		}
		return -1, &fs.PathError{Op: "open", Path: t.path(rel), Err: err}
	}
	return fd, nil
}

func (t *tree) openDir(rel string) (int, error) {
	return t.open(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

// lstat stats rel itself (a symlink is not followed).
func (t *tree) lstat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	dfd, err := t.openDir(path.Dir(rel))
	if err != nil {
		return st, err
	}
	defer unix.Close(dfd)
	if err := unix.Fstatat(dfd, path.Base(rel), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, &fs.PathError{Op: "lstat", Path: t.path(rel), Err: err}
	}
	return st, nil
}

func (t *tree) readlink(rel string) (string, error) {
	dfd, err := t.openDir(path.Dir(rel))
	if err != nil {
		return "", err
	}
	defer unix.Close(dfd)
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dfd, path.Base(rel), buf)
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: t.path(rel), Err: err}
	}
	return string(buf[:n]), nil
}

// openRegular opens rel for reading if it is a regular file.
func (t *tree) openRegular(rel string) (*os.File, error) {
	fd, err := t.open(rel, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		if err == nil {
			err = errors.New("not a regular file")
		}
		return nil, fmt.Errorf("%s: %w", t.path(rel), err)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: t.path(rel), Err: err}
	}
	return os.NewFile(uintptr(fd), t.path(rel)), nil
}

func (t *tree) readFile(rel string, limit int64) ([]byte, error) {
	f, err := t.openRegular(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", f.Name(), limit)
	}
	return b, nil
}

// mkdirAll creates the missing directories of rel (mode 0755), fsyncing
// each parent that gained one, and returns the ones it created, parents
// first.
func (t *tree) mkdirAll(rel string) ([]string, error) {
	var created []string
	cur := ""
	for _, c := range splitPath(rel) {
		next := path.Join(cur, c)
		dfd, err := t.openDir(cur)
		if err != nil {
			return created, err
		}
		err = unix.Mkdirat(dfd, c, 0o755)
		if err == nil {
			created = append(created, next)
			err = unix.Fsync(dfd)
		} else if errors.Is(err, unix.EEXIST) {
			err = nil
		}
		unix.Close(dfd)
		if err != nil {
			return created, &fs.PathError{Op: "mkdir", Path: t.path(next), Err: err}
		}
		cur = next
	}
	return created, nil
}

func splitPath(rel string) []string {
	var out []string
	for _, c := range strings.Split(rel, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// writeFile replaces rel with r's content: a temp file in rel's directory,
// fsync, rename, directory fsync. perm is applied exactly (no umask).
func (t *tree) writeFile(rel string, r io.Reader, perm fs.FileMode) (err error) {
	dfd, err := t.openDir(path.Dir(rel))
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := "." + path.Base(rel) + ".txboot-" + hex.EncodeToString(rnd[:]) + ".tmp"
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "create", Path: t.path(path.Join(path.Dir(rel), tmp)), Err: err}
	}
	f := os.NewFile(uintptr(fd), t.path(path.Join(path.Dir(rel), tmp)))
	defer func() {
		if err != nil {
			f.Close()
			unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return fmt.Errorf("write %s: %w", t.path(rel), err)
	}
	if err := unix.Fchmod(fd, uint32(perm.Perm())); err != nil {
		return &fs.PathError{Op: "chmod", Path: f.Name(), Err: err}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, path.Base(rel)); err != nil {
		return &fs.PathError{Op: "rename", Path: t.path(rel), Err: err}
	}
	if err := unix.Fsync(dfd); err != nil {
		return &fs.PathError{Op: "fsync", Path: t.path(path.Dir(rel)), Err: err}
	}
	return nil
}

// symlink creates rel pointing at target and fsyncs its directory.
func (t *tree) symlink(target, rel string) error {
	dfd, err := t.openDir(path.Dir(rel))
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Symlinkat(target, dfd, path.Base(rel)); err != nil {
		return &fs.PathError{Op: "symlink", Path: t.path(rel), Err: err}
	}
	if err := unix.Fsync(dfd); err != nil {
		return &fs.PathError{Op: "fsync", Path: t.path(path.Dir(rel)), Err: err}
	}
	return nil
}

// remove unlinks rel (a file, a symlink, or an empty directory when dir).
func (t *tree) remove(rel string, dir bool) error {
	dfd, err := t.openDir(path.Dir(rel))
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	flags := 0
	if dir {
		flags = unix.AT_REMOVEDIR
	}
	if err := unix.Unlinkat(dfd, path.Base(rel), flags); err != nil && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "remove", Path: t.path(rel), Err: err}
	}
	return unix.Fsync(dfd)
}
