package pkgdb

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// maxJournal bounds how many names of updates/ are looked at.
const maxJournal = 4096

// ReadTree reads the package database of the tree whose /usr is usrDir.
// It returns false (and no error) when the tree has none: a tx made
// before the database moved into /usr, or not a Debian tree. Paths are
// opened beneath usrDir without following symlinks: a tx's tree is data,
// not a map of the host. A journal with records dpkg has not merged is
// ErrPending; an error names the file.
func ReadTree(usrDir string) (Set, bool, error) {
	dfd, err := unix.Open(usrDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, &fs.PathError{Op: "open", Path: usrDir, Err: err}
	}
	defer unix.Close(dfd)
	p := filepath.Join(usrDir, StatusRel)
	f, err := openBeneath(dfd, StatusRel, p, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	set, err := Parse(f)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", p, err)
	}
	if err := checkJournal(dfd, usrDir); err != nil {
		return nil, false, err
	}
	return set, true, nil
}

// openBeneath opens rel beneath dfd (p names it in errors), with no
// symlink followed, and checks it is a regular file (dir: a directory).
func openBeneath(dfd int, rel, p string, dir int) (*os.File, error) {
	fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{
		Flags:   uint64(unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK | dir),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		return nil, fmt.Errorf("%s: a symlink on the way, not followed: %w", p, ErrNotRegular)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, &fs.PathError{Op: "stat", Path: p, Err: err}
	}
	if dir == 0 && st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, fmt.Errorf("%s: %w", p, ErrNotRegular)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		f.Close()
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	return f, nil
}

// checkJournal fails with ErrPending when dpkg's updates/ holds records:
// files named by digits only (dpkg ignores the others, "tmp.i" among
// them). dpkg merges them into the status file when it exits cleanly, so
// they are left only by a dpkg that was stopped.
func checkJournal(dfd int, usrDir string) error {
	p := filepath.Join(usrDir, UpdatesRel)
	d, err := openBeneath(dfd, UpdatesRel, p, unix.O_DIRECTORY)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Readdirnames(maxJournal)
	if err != nil && len(names) == 0 && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: %w", p, err)
	}
	n := 0
	for _, name := range names {
		if name != "" && strings.Trim(name, "0123456789") == "" {
			n++
		}
	}
	if n > 0 {
		return fmt.Errorf("%s: %w: %d record(s); dpkg was stopped before it merged them into the status file (dpkg --configure -a merges them)", p, ErrPending, n)
	}
	return nil
}
