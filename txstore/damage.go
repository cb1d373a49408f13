package txstore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/safefs"
	"golang.org/x/sys/unix"
)

// ErrDamaged: a path in the store is not what the layout says (a symlink
// or non-directory where a directory belongs, or a damaged object). It was
// left alone, neither followed nor removed; the error names it.
var ErrDamaged = cas.ErrDamaged

// openStoreDir opens a directory the caller names by path (the store's own
// directory, or a tree's parent): its path is the caller's, so it is
// resolved normally; what lies below is opened with safefs.
func openStoreDir(p string) (int, error) {
	for {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// damaged is the error for name in the open directory dirfd (sub of the
// store, "" for the store itself) found not to be a directory.
func (s *Store) damaged(dirfd int, sub, name string) error {
	rel := name
	if sub != "" {
		rel = sub + "/" + name
	}
	return fmt.Errorf("%w: %s/%s is %s, not a directory: left alone (not followed, not removed)",
		ErrDamaged, s.Dir, rel, safefs.Describe(dirfd, name))
}

// checkDir reports ErrDamaged when sub of the store (open as dfd) exists
// and is not a directory.
func (s *Store) checkDir(dfd int, sub string) error {
	fd, err := safefs.OpenDir(dfd, sub)
	if err == nil {
		unix.Close(fd)
		return nil
	}
	if safefs.IsNotDir(err) {
		return s.damaged(dfd, "", sub)
	}
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("open %s/%s: %w", s.Dir, sub, err)
}

// checkDirs opens the store and checks its directories subs (see checkDir).
func (s *Store) checkDirs(subs ...string) error {
	dfd, err := openStoreDir(s.Dir)
	if err != nil {
		return fmt.Errorf("open store %s: %w", s.Dir, err)
	}
	defer unix.Close(dfd)
	var d damageList
	for _, sub := range subs {
		if err := s.checkDir(dfd, sub); err != nil {
			if !errors.Is(err, ErrDamaged) {
				return err
			}
			d = append(d, err)
		}
	}
	return d.err()
}

// damageList collects damage found while the rest of the work goes on; as
// an error it is one line naming every path, and errors.Is(ErrDamaged).
type damageList []error

func (d damageList) err() error {
	if len(d) == 0 {
		return nil
	}
	return d
}

func (d damageList) Error() string {
	parts := make([]string, len(d))
	for i, e := range d {
		parts[i] = e.Error()
		if i > 0 { // one "damaged store:" prefix is enough
			parts[i] = strings.TrimPrefix(parts[i], ErrDamaged.Error()+": ")
		}
	}
	return strings.Join(parts, "; ")
}

func (d damageList) Unwrap() []error { return d }

// openTree opens trees/<id> without following a symlink at trees or
// trees/<id>; what it finds instead is returned as the verify problem.
func (s *Store) openTree(id uint64) (int, *Problem) {
	name := strconv.FormatUint(id, 10)
	dfd, err := openStoreDir(s.Dir)
	if err != nil {
		return -1, &Problem{Path: "usr", Reason: fmt.Sprintf("tree missing: %v", err)}
	}
	defer unix.Close(dfd)
	tfd, err := safefs.OpenDir(dfd, "trees")
	if err != nil {
		if safefs.IsNotDir(err) {
			return -1, &Problem{Path: ".", Reason: fmt.Sprintf("the store's trees directory is %s, not a directory (not followed)", safefs.Describe(dfd, "trees"))}
		}
		return -1, &Problem{Path: "usr", Reason: fmt.Sprintf("tree missing: %v", err)}
	}
	defer unix.Close(tfd)
	fd, err := safefs.OpenDir(tfd, name)
	if err != nil {
		if safefs.IsNotDir(err) {
			return -1, &Problem{Path: ".", Reason: fmt.Sprintf("trees/%s is %s, not a directory (not followed)", name, safefs.Describe(tfd, name))}
		}
		return -1, &Problem{Path: "usr", Reason: fmt.Sprintf("tree missing: %v", err)}
	}
	return fd, nil
}
