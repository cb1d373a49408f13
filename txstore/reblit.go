package txstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/layout"
	"golang.org/x/sys/unix"
)

// Reblit rebuilds tx id's tree from the CAS: blit into staging, sync, swap
// its usr/ in (what lies beside it, the tx's etc/, stays).
func (s *Store) Reblit(id uint64) (blit.Stats, error) {
	var bs blit.Stats
	if err := s.writable(); err != nil {
		return bs, err
	}
	t, err := s.Get(id)
	if err != nil {
		return bs, err
	}
	m, err := s.Manifest(t)
	if err != nil {
		return bs, err
	}
	// Never blit into, or swap trees through, a symlinked store directory.
	if err := s.layout().CheckAll("staging", "trees"); err != nil {
		return bs, fmt.Errorf("reblit tx %d: %w", id, err)
	}
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "reblit-")
	if err != nil {
		return bs, fmt.Errorf("reblit tx %d: %w", id, err)
	}
	defer layout.RemoveTree(work)
	fresh := filepath.Join(work, "tree")
	if err := os.Mkdir(fresh, 0o755); err != nil {
		return bs, fmt.Errorf("reblit tx %d: %w", id, err)
	}
	if bs, err = blit.Blit(m, s.objects, filepath.Join(fresh, "usr"), s.opts.Workers); err != nil {
		return bs, fmt.Errorf("reblit tx %d: %w", id, err)
	}
	if err := cas.Syncfs(s.Dir); err != nil {
		return bs, err
	}
	if err := s.swapTree(id, fresh, work); err != nil {
		return bs, fmt.Errorf("reblit tx %d: %w", id, err)
	}
	return bs, s.Log(Event{Kind: "reblit", TxID: id})
}

// swapTree puts the synced tree fresh (its usr/) in place of tx id's. When
// trees/<id> is a directory only its usr/ is replaced, atomically
// (RENAME_EXCHANGE), so what lies beside it (the tx's etc/, see EtcDir)
// stays; the old usr/ ends in fresh, under work. Otherwise trees/<id> (a
// symlink, say: never followed) goes to work and fresh takes its place.
func (s *Store) swapTree(id uint64, fresh, work string) error {
	trees := filepath.Join(s.Dir, "trees")
	final := filepath.Join(trees, strconv.FormatUint(id, 10))
	fi, err := os.Lstat(final)
	if err == nil && fi.IsDir() {
		if err := exchange(filepath.Join(fresh, "usr"), filepath.Join(final, "usr"), filepath.Join(work, "old-usr")); err != nil {
			return err
		}
		return fsx.SyncDir(final)
	}
	if err == nil {
		if err := os.Rename(final, filepath.Join(work, "old")); err != nil {
			return err
		}
	}
	if err := os.Rename(fresh, final); err != nil {
		return err
	}
	return fsx.SyncDir(trees)
}

// exchange swaps directory src with dst, or renames it there when dst is
// missing. Without RENAME_EXCHANGE (a filesystem lacking it) dst first
// moves aside to old: a crash in between leaves dst missing, which the
// next verify finds and a reblit repairs.
func exchange(src, dst, old string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE)
	switch err {
	case nil:
		return nil
	case unix.ENOENT: // dst missing (src exists: blitted just now)
		return os.Rename(src, dst)
	case unix.EINVAL, unix.ENOSYS, unix.EOPNOTSUPP:
		if err := os.Rename(dst, old); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return os.Rename(src, dst)
	}
	return &os.LinkError{Op: "exchange", Old: src, New: dst, Err: err}
}
