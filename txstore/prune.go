package txstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/txboot/txboot/txstore/cas"
	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// PruneResult lists what Prune removed and kept.
type PruneResult struct {
	Removed []uint64 `json:"removed"`
	Kept    []uint64 `json:"kept"`
}

// Prune keeps the keep newest txs plus pinned ones, the default and protect
// (e.g. the booted tx) and removes the rest: records first, in one bbolt
// transaction, then their trees. A crash in between leaves unrecorded trees,
// which the next writer's Open removes. Objects are freed by GC.
func (s *Store) Prune(keep int, protect ...uint64) (*PruneResult, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	if keep < 1 {
		return nil, fmt.Errorf("prune: keep must be at least 1, got %d", keep)
	}
	unlock, err := s.gcLock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	res := &PruneResult{}
	err = s.update(func(tx *bbolt.Tx) error {
		txs, meta, events, err := buckets(tx)
		if err != nil {
			return err
		}
		var all []*Tx
		if err := txs.ForEach(func(k, v []byte) error {
			t, err := decodeTx(k, v)
			if err == nil {
				all = append(all, t)
			}
			return err
		}); err != nil {
			return err
		}
		keepSet := pruneKeepSet(all, keep, getU64(meta, keyDefault), protect)
		for _, id := range sortedIDs(all) {
			if keepSet[id] {
				res.Kept = append(res.Kept, id)
				continue
			}
			if err := txs.Delete(u64(id)); err != nil {
				return err
			}
			if err := appendEvent(events, Event{Kind: "prune", TxID: id}); err != nil {
				return err
			}
			res.Removed = append(res.Removed, id)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	trees := filepath.Join(s.Dir, "trees")
	for _, id := range res.Removed {
		name := strconv.FormatUint(id, 10)
		if err := removeTree(filepath.Join(trees, name)); err != nil {
			return res, err
		}
		// Per-tx boot files (bootctl's initrd) go with the tx.
		if err := removeTree(filepath.Join(s.Dir, "boot", name)); err != nil {
			return res, err
		}
	}
	if len(res.Removed) > 0 {
		return res, cas.FsyncDir(trees)
	}
	return res, nil
}

// pruneKeepSet: the keep newest, pinned, the default and protect.
func pruneKeepSet(all []*Tx, keep int, def uint64, protect []uint64) map[uint64]bool {
	keepSet := map[uint64]bool{def: true}
	for _, id := range protect {
		keepSet[id] = true
	}
	for i, id := range sortedIDs(all) {
		if i < keep {
			keepSet[id] = true
		}
	}
	for _, t := range all {
		if t.Pinned {
			keepSet[t.ID] = true
		}
	}
	return keepSet
}

// PrunePlan returns the ids Prune(keep, protect...) would remove, so callers
// can drop bootloader entries first (an entry must never outlive its tx).
func (s *Store) PrunePlan(keep int, protect ...uint64) ([]uint64, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	def, err := s.Default()
	if err != nil {
		return nil, err
	}
	keepSet := pruneKeepSet(all, keep, def, protect)
	var out []uint64
	for _, id := range sortedIDs(all) {
		if !keepSet[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

// GCStats describe one GC.
type GCStats struct {
	Referenced int   `json:"referenced"`
	Removed    int   `json:"removed"`
	FreedBytes int64 `json:"freed_bytes"`
}

// GC removes objects no tx references. If any manifest cannot be read it
// removes nothing: deleting on a guess could destroy a bootable tree.
func (s *Store) GC() (*GCStats, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	unlock, err := s.gcLock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	ref := map[cas.Key]bool{}
	for _, t := range all {
		mk, err := manifestKey(t.Manifest)
		if err != nil {
			return nil, err
		}
		ref[mk] = true
		m, err := s.Manifest(t)
		if err != nil {
			return nil, fmt.Errorf("gc: nothing removed: %w", err)
		}
		for i := range m.Entries {
			if e := &m.Entries[i]; e.Type == 'f' && e.Size > 0 {
				ref[e.Key()] = true
			}
		}
	}
	st := &GCStats{Referenced: len(ref)}
	fans, err := os.ReadDir(s.objects.Dir)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	for _, fan := range fans {
		dir := filepath.Join(s.objects.Dir, fan.Name())
		ents, err := os.ReadDir(dir)
		if err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
		removed := false
		for _, e := range ents {
			k, perr := cas.ParseName(e.Name())
			if perr == nil && ref[k] && k.Hash.String()[:2] == fan.Name() {
				continue
			}
			p := filepath.Join(dir, e.Name())
			var size int64
			if info, err := e.Info(); err == nil {
				size = info.Size()
			}
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return st, fmt.Errorf("gc: %w", err)
			}
			st.Removed++
			st.FreedBytes += size
			removed = true
		}
		if removed {
			if err := cas.FsyncDir(dir); err != nil {
				return st, err
			}
		}
	}
	if st.Removed > 0 {
		err = s.Log(Event{Kind: "gc", Detail: fmt.Sprintf("removed %d objects, %d bytes", st.Removed, st.FreedBytes)})
	}
	return st, err
}
