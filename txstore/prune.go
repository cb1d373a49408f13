package txstore

import (
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/layout"
	"github.com/txboot/txboot/txstore/internal/safefs"
	"github.com/txboot/txboot/txstore/records"
	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// PruneResult lists what Prune removed and kept.
type PruneResult struct {
	Removed []uint64 `json:"removed"`
	Kept    []uint64 `json:"kept"`
}

// Prune keeps what bootstate.Keep says (the newest good tx, the default,
// protect (e.g. the booted tx), pinned txs, and the keep newest with bad
// ones last) and removes the rest: records first, in one bbolt
// transaction, then their trees. A crash in between leaves unrecorded
// trees, which the next writer's Open removes. Objects are freed by GC.
func (s *Store) Prune(keep int, protect ...uint64) (*PruneResult, error) {
	return s.PruneWith(keep, protect, nil)
}

// PruneWith is Prune calling before with the ids it is about to remove
// once it holds both locks (the writer lock and the gc lock) and before it
// removes anything: bootctl drops their bootloader entries there, so an
// entry never outlives its tx and the plan cannot change in between. An
// error from before stops the prune with nothing removed.
//
// A tree or boot directory of a removed tx that is not a directory (a
// symlink, say) is left alone, neither followed nor removed; the other
// removals go on and the error (ErrDamaged) names it, with the result
// saying what was removed.
func (s *Store) PruneWith(keep int, protect []uint64, before func(remove []uint64) error) (*PruneResult, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	if keep < 1 {
		return nil, fmt.Errorf("prune: %w: keep must be at least 1, got %d", ErrInvalid, keep)
	}
	unlock, err := s.gcLock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	plan, err := s.PrunePlan(keep, protect...)
	if err != nil {
		return nil, err
	}
	if before != nil {
		if err := before(plan); err != nil {
			return nil, fmt.Errorf("prune: nothing removed: %w", err)
		}
	}
	remove := map[uint64]bool{}
	for _, id := range plan {
		remove[id] = true
	}
	res := &PruneResult{}
	err = s.update(func(tx *bbolt.Tx) error {
		txs, _, events, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		all, err := records.AllTxs(txs)
		if err != nil {
			return err
		}
		for _, id := range sortedIDs(all) {
			if !remove[id] {
				res.Kept = append(res.Kept, id)
				continue
			}
			if err := txs.Delete(records.Key(id)); err != nil {
				return err
			}
			if err := records.AppendEvent(events, Event{Kind: "prune", TxID: id}); err != nil {
				return err
			}
			res.Removed = append(res.Removed, id)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	names := make([]string, len(res.Removed))
	for i, id := range res.Removed {
		names[i] = strconv.FormatUint(id, 10)
	}
	// trees/<id> and boot/<id> (bootctl's initrd)
	return res, s.layout().RemoveEntries([]string{"trees", BootDir}, names)
}

// pruneKeepSet is bootstate.Keep over the records: the default and
// protect are protected.
func pruneKeepSet(all []*Tx, keep int, def uint64, protect []uint64) map[uint64]bool {
	c := make([]bootstate.KeepCandidate, len(all))
	for i, t := range all {
		c[i] = bootstate.KeepCandidate{ID: t.ID, State: t.State, Pinned: t.Pinned}
	}
	return bootstate.Keep(c, keep, append([]uint64{def}, protect...)...)
}

// PrunePlan returns the ids Prune(keep, protect...) would remove, newest
// first.
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
	// PullRunning: a pull held fetch.lock (see OpenFetch), so the Kept
	// unreferenced objects (KeptBytes) were left in place: it may have
	// found or published them and reference them at its commit. A gc
	// after it removes them.
	PullRunning bool  `json:"pull_running,omitempty"`
	Kept        int   `json:"kept_for_pull,omitempty"`
	KeptBytes   int64 `json:"kept_for_pull_bytes,omitempty"`
}

// Note says why unreferenced objects were kept ("" when none were).
func (st *GCStats) Note() string {
	if !st.PullRunning {
		return ""
	}
	return fmt.Sprintf("a pull is running: kept %d unreferenced objects (%d bytes) it may use; gc again after it", st.Kept, st.KeptBytes)
}

// GC removes objects no tx references. If any manifest cannot be read it
// removes nothing: deleting on a guess could destroy a bootable tree.
// While a pull runs (an Import holds fetch.lock) it removes no object and
// counts the unreferenced ones in Kept, rather than wait for a download.
// objects/ and its fan-out directories are walked through fds opened with
// O_NOFOLLOW: one that is a symlink or not a directory is left alone (not
// followed, not removed), the others are collected, and the error
// (ErrDamaged) names it.
func (s *Store) GC() (*GCStats, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	unlock, err := s.gcLock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Held to the end when free: no Import starts (and finds an object
	// present that this GC is about to remove) meanwhile.
	unlockFetch, pull, err := s.tryFetchExclusive()
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	defer unlockFetch()
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
			return nil, fmt.Errorf("nothing removed: %w", err)
		}
		for i := range m.Entries {
			if e := &m.Entries[i]; e.Type == 'f' && e.Size > 0 {
				ref[e.Key().Ident()] = true // names carry only the xattrs' digest
			}
		}
	}
	// Pending downloads (pull --download-only) are roots too.
	if err := s.downloadRefs(ref); err != nil {
		return nil, fmt.Errorf("nothing removed: %w", err)
	}
	st := &GCStats{Referenced: len(ref), PullRunning: pull}
	dfd, err := layout.Open(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", s.Dir, err)
	}
	defer unix.Close(dfd)
	ofd, err := safefs.OpenDir(dfd, "objects")
	if safefs.IsNotDir(err) {
		return nil, fmt.Errorf("nothing removed: %w", s.layout().Damaged(dfd, "", "objects"))
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.objects.Dir, err)
	}
	defer unix.Close(ofd)
	fans, err := safefs.List(ofd)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.objects.Dir, err)
	}
	var damage layout.Damage
	for _, fan := range fans {
		if err := s.gcFan(ofd, fan, ref, st, &damage); err != nil {
			return st, err
		}
	}
	if st.Removed > 0 {
		if err := s.Log(Event{Kind: "gc", Detail: fmt.Sprintf("removed %d objects, %d bytes", st.Removed, st.FreedBytes)}); err != nil {
			return st, err
		}
	}
	if st.Kept > 0 {
		if err := s.Log(Event{Kind: "gc", Detail: st.Note()}); err != nil {
			return st, err
		}
	}
	if err := damage.Err(); err != nil {
		return st, err
	}
	return st, nil
}

// gcFan removes the unreferenced entries of fan-out directory fan of the
// open objects directory ofd.
func (s *Store) gcFan(ofd int, fan safefs.Entry, ref map[cas.Key]bool, st *GCStats, damage *layout.Damage) error {
	if safefs.TypeOf(ofd, fan) != unix.DT_DIR {
		*damage = append(*damage, s.layout().Damaged(ofd, "objects", fan.Name))
		return nil
	}
	fd, err := safefs.OpenDir(ofd, fan.Name)
	if safefs.IsNotDir(err) { // replaced since the listing
		*damage = append(*damage, s.layout().Damaged(ofd, "objects", fan.Name))
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s/%s: %w", s.objects.Dir, fan.Name, err)
	}
	defer unix.Close(fd)
	ents, err := safefs.List(fd)
	if err != nil {
		return fmt.Errorf("list %s/%s: %w", s.objects.Dir, fan.Name, err)
	}
	removed := false
	for _, e := range ents {
		k, perr := cas.ParseName(e.Name)
		if perr == nil && ref[k.Ident()] && k.Hash.String()[:2] == fan.Name {
			continue
		}
		var fst unix.Stat_t
		if err := unix.Fstatat(fd, e.Name, &fst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return fmt.Errorf("stat %s/%s/%s: %w", s.objects.Dir, fan.Name, e.Name, err)
		}
		if fst.Mode&unix.S_IFMT == unix.S_IFDIR {
			*damage = append(*damage, fmt.Errorf("%w: %s/%s/%s is a directory, not an object: left alone (not removed)",
				ErrDamaged, s.objects.Dir, fan.Name, e.Name))
			continue
		}
		if st.PullRunning {
			st.Kept++
			st.KeptBytes += fst.Size
			continue
		}
		// unlinkat removes a symlink itself, never what it points to.
		if err := unix.Unlinkat(fd, e.Name, 0); err != nil && err != unix.ENOENT {
			return fmt.Errorf("remove %s/%s/%s: %w", s.objects.Dir, fan.Name, e.Name, err)
		}
		st.Removed++
		st.FreedBytes += fst.Size
		removed = true
	}
	if removed {
		if err := fsx.SyncDirFd(fd, filepath.Join(s.objects.Dir, fan.Name)); err != nil {
			return err
		}
	}
	return nil
}
