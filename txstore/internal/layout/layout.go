// Package layout checks and cleans the store directory's layout through
// directory fds opened with O_NOFOLLOW (package safefs): a symlink or
// non-directory where the layout has a directory is damage, left alone
// (neither followed nor removed) and named in an ErrDamaged error.
package layout

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/safefs"
	"golang.org/x/sys/unix"
)

// ErrDamaged is txstore.ErrDamaged (see there).
var ErrDamaged = cas.ErrDamaged

// Dir is a store's directory (ROOT/.txboot).
type Dir string

// Open opens a directory the caller names by path (the store's own
// directory, or a tree's parent): its path is the caller's, so it is
// resolved normally; what lies below is opened with safefs.
func Open(p string) (int, error) {
	for {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// Damaged is the error for name in the open directory dirfd (sub of the
// store, "" for the store itself) found not to be a directory.
func (d Dir) Damaged(dirfd int, sub, name string) error {
	rel := name
	if sub != "" {
		rel = sub + "/" + name
	}
	return fmt.Errorf("%w: %s/%s is %s, not a directory: left alone (not followed, not removed)",
		ErrDamaged, string(d), rel, safefs.Describe(dirfd, name))
}

// Check reports ErrDamaged when sub of the store (open as dfd) exists
// and is not a directory.
func (d Dir) Check(dfd int, sub string) error {
	fd, err := safefs.OpenDir(dfd, sub)
	if err == nil {
		unix.Close(fd)
		return nil
	}
	if safefs.IsNotDir(err) {
		return d.Damaged(dfd, "", sub)
	}
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("open %s/%s: %w", string(d), sub, err)
}

// CheckAll opens the store and checks its directories subs (see Check).
func (d Dir) CheckAll(subs ...string) error {
	dfd, err := Open(string(d))
	if err != nil {
		return fmt.Errorf("open store %s: %w", string(d), err)
	}
	defer unix.Close(dfd)
	var dl Damage
	for _, sub := range subs {
		if err := d.Check(dfd, sub); err != nil {
			if !errors.Is(err, ErrDamaged) {
				return err
			}
			dl = append(dl, err)
		}
	}
	return dl.Err()
}

// Damage collects damage found while the rest of the work goes on; as
// an error it is one line naming every path, and errors.Is(ErrDamaged).
type Damage []error

func (d Damage) Err() error {
	if len(d) == 0 {
		return nil
	}
	return d
}

func (d Damage) Error() string {
	parts := make([]string, len(d))
	for i, e := range d {
		parts[i] = e.Error()
		if i > 0 { // one "damaged store:" prefix is enough
			parts[i] = strings.TrimPrefix(parts[i], ErrDamaged.Error()+": ")
		}
	}
	return strings.Join(parts, "; ")
}

func (d Damage) Unwrap() []error { return d }

// CleanStaging empties the open staging directory: directories as trees,
// other files unlinked, symlinks left alone as damage. With imports live
// (a pull holds fetch.lock), directories named import-* stay.
func (d Dir) CleanStaging(sfd int, imports bool, damage *Damage) error {
	ents, err := safefs.List(sfd)
	if err != nil {
		return fmt.Errorf("cleanup %s/staging: %w", string(d), err)
	}
	for _, e := range ents {
		switch safefs.TypeOf(sfd, e) {
		case unix.DT_LNK:
			*damage = append(*damage, d.Damaged(sfd, "staging", e.Name))
		case unix.DT_DIR:
			if imports && IsImportDir(e.Name) {
				continue
			}
			if err := safefs.RemoveTree(sfd, e.Name); err != nil {
				if !errors.Is(err, safefs.ErrNotDir) {
					return fmt.Errorf("cleanup %s/staging: %w", string(d), err)
				}
				*damage = append(*damage, d.Damaged(sfd, "staging", e.Name))
			}
		default:
			if err := unix.Unlinkat(sfd, e.Name, 0); err != nil && err != unix.ENOENT {
				return fmt.Errorf("cleanup %s/staging/%s: %w", string(d), e.Name, err)
			}
		}
	}
	return nil
}

// RemoveUnknown removes the entries of the open directory fd (trees or
// boot) not named in known; a non-directory among them is damage, left alone.
func (d Dir) RemoveUnknown(fd int, sub string, known map[string]bool, damage *Damage) error {
	ents, err := safefs.List(fd)
	if err != nil {
		return fmt.Errorf("cleanup %s/%s: %w", string(d), sub, err)
	}
	removed := false
	for _, e := range ents {
		if known[e.Name] {
			continue
		}
		if err := safefs.RemoveTree(fd, e.Name); err != nil {
			if !errors.Is(err, safefs.ErrNotDir) {
				return fmt.Errorf("cleanup %s/%s: %w", string(d), sub, err)
			}
			*damage = append(*damage, d.Damaged(fd, sub, e.Name))
			continue
		}
		removed = true
	}
	if removed {
		if err := fsx.SyncDirFd(fd, filepath.Join(string(d), sub)); err != nil {
			return err
		}
	}
	return nil
}

// RemoveTree deletes the directory tree at p (whose directories may lack
// write bits) without following any symlink in it; p itself must be a
// directory (else ErrDamaged, nothing removed) or missing.
func RemoveTree(p string) error {
	p = filepath.Clean(p)
	dfd, err := Open(filepath.Dir(p))
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	defer unix.Close(dfd)
	base := filepath.Base(p)
	if err := safefs.RemoveTree(dfd, base); err != nil {
		if errors.Is(err, safefs.ErrNotDir) {
			return fmt.Errorf("%w: %s is %s, not a directory: left alone (not followed, not removed)", ErrDamaged, p, safefs.Describe(dfd, base))
		}
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// ImportPrefix names an Import's directory under staging/.
const ImportPrefix = "import-"

// IsImportDir reports whether a staging entry is an Import's directory.
func IsImportDir(name string) bool { return strings.HasPrefix(name, ImportPrefix) }

// RemoveEntries removes the entries names of each directory subs of the
// store (a pruned tx's trees/<id> and boot/<id>) through directory fds,
// never following a symlink; one that is not a directory is damage.
func (d Dir) RemoveEntries(subs, names []string) error {
	if len(names) == 0 {
		return nil
	}
	dfd, err := Open(string(d))
	if err != nil {
		return fmt.Errorf("prune: open store %s: %w", string(d), err)
	}
	defer unix.Close(dfd)
	var damage Damage
	for _, sub := range subs {
		fd, err := safefs.OpenDir(dfd, sub)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if safefs.IsNotDir(err) {
			damage = append(damage, d.Damaged(dfd, "", sub))
			continue
		}
		if err != nil {
			return fmt.Errorf("prune: open %s/%s: %w", string(d), sub, err)
		}
		for _, name := range names {
			if err := safefs.RemoveTree(fd, name); err != nil {
				if !errors.Is(err, safefs.ErrNotDir) {
					unix.Close(fd)
					return fmt.Errorf("prune %s/%s: %w", string(d), sub, err)
				}
				damage = append(damage, d.Damaged(fd, sub, name))
			}
		}
		err = fsx.SyncDirFd(fd, filepath.Join(string(d), sub))
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("prune: %w", err)
		}
	}
	return damage.Err()
}
