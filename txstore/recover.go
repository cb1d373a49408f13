package txstore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/txboot/txboot/txstore/internal/manifestio"
	"github.com/txboot/txboot/txstore/manifest"
)

// recordLostTrees records again each trees/<id> that has no record, an id
// at or above the next one (so no prune gave it up: prune deletes the
// record first and only then the tree), and whose content a manifest
// object describes (fast verify, as fsck --repair matches trees). Such a
// tree is a whole commit: its record was lost with a torn meta page of
// store.db (bbolt then reads the database as of one write before), or
// never written (a crash between publishing the tree and recording it).
// The default is left alone. known gains the ids recorded; the rest stay
// unrecorded leftovers for Cleanup to remove.
func (s *Store) recordLostTrees(known map[string]bool) error {
	next, def, err := s.nextID()
	if err != nil {
		return err
	}
	ids, err := s.lostTrees(known, next)
	if err != nil || len(ids) == 0 {
		return err
	}
	// Only now the CAS scan: an open with nothing lost reads no object.
	byDigest, digests, err := manifestio.ByDigest(s.objects, s.opts.Workers, nil)
	if err != nil {
		return fmt.Errorf("cleanup: find manifests for unrecorded trees: %w", err)
	}
	now := time.Now().UTC()
	for _, id := range ids {
		f, ok := s.matchTree(id, nil, byDigest, digests)
		if !ok {
			continue // half a tree, or not ours: removed as a leftover
		}
		t := s.recoveredTx(id, def, f, now)
		t.Summary = "recovered when the store opened: its record was lost"
		s.recoverImage(t, f.M)
		ev := Event{Kind: "recover", TxID: id, Detail: fmt.Sprintf("%s: trees/%d had no record; its manifest describes it", t.Digest, id)}
		if err := s.record(t, true, ev); err != nil {
			return fmt.Errorf("cleanup: record tx %d again: %w", id, err)
		}
		known[strconv.FormatUint(id, 10)] = true
	}
	return nil
}

// lostTrees lists, in ascending order, the ids of directories in trees/
// without a record whose id is at least next.
func (s *Store) lostTrees(known map[string]bool, next uint64) ([]uint64, error) {
	names, err := s.treeNames()
	if err != nil {
		return nil, fmt.Errorf("cleanup: %w", err)
	}
	var ids []uint64
	for _, name := range names {
		id, ok := treeID(name)
		if !ok || known[name] || id < next {
			continue
		}
		// Never through a symlink: Cleanup reports that as damage.
		if fi, err := os.Lstat(filepath.Join(s.Dir, "trees", name)); err == nil && fi.IsDir() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// recoverImage records in t the image the lost commit placed at
// trees/<id>/image.erofs, when it is byte for byte the image m gives
// (built again in memory with the objects' fs-verity digests), with
// Sealed and SealNote as a commit sets them. Otherwise, or when anything
// fails, t stays without an image: bootctl seal builds one.
func (s *Store) recoverImage(t *Tx, m *manifest.Manifest) {
	p := s.ImagePath(t.ID)
	have, err := os.ReadFile(p)
	if err != nil {
		return
	}
	z := newSealer(s.objects, s.opts.Workers)
	sums, err := z.digests(fileKeys(m), true)
	if err != nil {
		return
	}
	img, d, err := buildImage(m, sums)
	if err != nil || !bytes.Equal(img, have) {
		return
	}
	imgSealed, err := z.sealImage(p, d)
	if err != nil {
		return
	}
	t.Image, t.Sealed = d.String(), z.sealed(imgSealed)
	if !t.Sealed {
		t.SealNote = z.note(s.Dir)
	}
}
