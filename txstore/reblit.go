package txstore

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/layout"
)

// Reblit rebuilds tx id's tree from the CAS: blit into staging, sync, swap.
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
	trees := filepath.Join(s.Dir, "trees")
	final := filepath.Join(trees, strconv.FormatUint(id, 10))
	if _, err := os.Lstat(final); err == nil {
		if err := os.Rename(final, filepath.Join(work, "old")); err != nil {
			return bs, fmt.Errorf("reblit tx %d: %w", id, err)
		}
	}
	if err := os.Rename(fresh, final); err != nil {
		return bs, fmt.Errorf("reblit tx %d: %w", id, err)
	}
	if err := fsx.SyncDir(trees); err != nil {
		return bs, err
	}
	return bs, s.Log(Event{Kind: "reblit", TxID: id})
}
