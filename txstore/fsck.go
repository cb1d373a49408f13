package txstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/dbio"
	"github.com/txboot/txboot/txstore/internal/manifestio"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/records"
	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// store.db is an index, not the only truth: every tx is also a tree under
// trees/<id> and a manifest object in the CAS whose digest the bootloader
// entry pins. This file reads the store without the database (FindManifest,
// VerifyManifest: initagent's boot when store.db is damaged), checks the
// database (Fsck) and rebuilds it from trees and manifests (Rebuild).

// ErrNoManifest: no manifest object in the CAS has the digest asked for.
var ErrNoManifest = errors.New("no manifest object with that digest")

// maxProblems bounds what Fsck lists; the rest are counted.
const maxProblems = 50

// FsckReport is what Fsck found.
type FsckReport struct {
	DB       string   `json:"db"`
	Records  int      `json:"records"` // readable tx records
	Problems []string `json:"problems,omitempty"`
	// Images: txs whose sealed image is missing or not the one their
	// record names. Not store.db damage (a rebuild would not help): Seal
	// builds each again.
	Images []ImageProblem `json:"images,omitempty"`
}

// ImageProblem is a tx whose image Seal must build again.
type ImageProblem struct {
	ID      uint64 `json:"id"`
	Problem string `json:"problem"`
}

func (r *FsckReport) add(format string, a ...any) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, dbio.OneLine(fmt.Sprintf(format, a...)))
	} else if len(r.Problems) == maxProblems {
		r.Problems = append(r.Problems, "more problems not listed")
	}
}

// Fsck checks store.db: both meta pages, bbolt's own consistency check
// (tx.Check), the buckets, every record and event, the id counter and the
// default, and that every tree has a record (a writer's cleanup removes a
// tree without one). Damage is reported in Problems, not as an error; the
// error is for failing to check at all.
func (s *Store) Fsck() (*FsckReport, error) {
	p := filepath.Join(s.Dir, "store.db")
	rep := &FsckReport{DB: p}
	for _, m := range dbio.MetaProblems(p) {
		rep.add("%s: %s", p, m)
	}
	ids := map[uint64]bool{}
	err := s.view(func(tx *bbolt.Tx) error {
		ids = records.Check(tx, func(problem string) { rep.add("%s: %s", p, problem) })
		rep.Records = len(ids)
		return nil
	})
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		rep.add("%v", err)
		return rep, nil
	}
	trees, err := s.treeNames()
	if err != nil {
		return nil, err
	}
	for _, name := range trees {
		if id, ok := treeID(name); !ok || !ids[id] {
			rep.add("%s has no record: a writer's cleanup would remove it (fsck --repair records it if a manifest matches)", filepath.Join(s.Dir, "trees", name))
		}
	}
	rep.Images = s.checkImages()
	return rep, nil
}

// checkImages lists the txs whose image file is missing or differs from
// the digest their record names.
func (s *Store) checkImages() []ImageProblem {
	txs, err := s.List()
	if err != nil {
		return nil // the records' own problems are reported already
	}
	var out []ImageProblem
	for _, t := range txs {
		if t.Image != "" && !s.imageCurrent(t) {
			out = append(out, ImageProblem{t.ID, fmt.Sprintf("%s is missing or is not image %s of tx %d: bootctl seal %d builds it again", s.ImagePath(t.ID), t.Image, t.ID, t.ID)})
		}
	}
	return out
}

// treeNames lists trees/ (names only; nothing is followed).
func (s *Store) treeNames() ([]string, error) {
	dir := filepath.Join(s.Dir, "trees")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

// treeID parses a canonical tree directory name.
func treeID(name string) (uint64, bool) {
	id, err := strconv.ParseUint(name, 10, 64)
	return id, err == nil && id > 0 && strconv.FormatUint(id, 10) == name
}

// FindManifest returns the manifest with digest ("sha256:HEX") and the key
// of its CAS object, without trusting the database: if tx hint's record is
// still readable and has that digest its manifest object is tried first,
// else the CAS is scanned. The digest is checked either way.
func (s *Store) FindManifest(digest string, hint uint64) (*manifest.Manifest, cas.Key, error) {
	hex, ok := strings.CutPrefix(digest, "sha256:")
	if _, err := cas.ParseHash(hex); !ok || err != nil {
		return nil, cas.Key{}, fmt.Errorf("%w: digest %q is not sha256:<64 hex digits>", ErrInvalid, digest)
	}
	if hint != 0 {
		if t, err := s.Get(hint); err == nil && t.Digest == digest {
			if m, err := s.Manifest(t); err == nil {
				k, _ := manifestKey(t.Manifest)
				return m, k, nil
			}
		}
	}
	var found *manifestio.Found
	var skips []error
	err := manifestio.Scan(s.objects, s.opts.Workers, digest, func(f manifestio.Found) bool { found = &f; return false }, func(err error) { skips = append(skips, err) })
	if found != nil {
		return found.M, found.Key, nil
	}
	if err != nil {
		return nil, cas.Key{}, fmt.Errorf("find manifest %s: %w", digest, err)
	}
	var also string
	if len(skips) > 0 {
		also = fmt.Sprintf(" (skipped %d unusable: %v)", len(skips), skips[0])
	}
	return nil, cas.Key{}, fmt.Errorf("%w: %s in %s%s", ErrNoManifest, digest, s.objects.Dir, also)
}

// RebuildReport says what Rebuild did.
type RebuildReport struct {
	DB       string `json:"db"`
	Saved    string `json:"saved,omitempty"` // the previous store.db, kept byte for byte
	Txs      []*Tx  `json:"transactions"`
	Salvaged int    `json:"salvaged"` // records taken over from the previous database
	Default  uint64 `json:"default"`
	// SetAside: entries of trees/ that no manifest describes, moved to
	// lost+found/ (a writer's cleanup would otherwise delete them).
	SetAside []string `json:"set_aside,omitempty"`
	// Skipped: objects that start as a manifest does but were not used
	// (too large for a manifest, damaged), each with why; at most
	// maxProblems are listed.
	Skipped []string `json:"skipped,omitempty"`
}

// Rebuild writes a new store.db from the trees and manifest objects: each
// trees/<id> whose content a manifest object describes (fast verify) becomes
// a record with that digest. What the old database still tells is kept
// where it agrees with the tree (state, tries, summary, pin, parent, created;
// settings; the event log); otherwise a tx is pending with fresh tries and
// its parent is the previous id. A salvaged record whose tree is gone but
// whose manifest is present is kept too (initagent re-blits the tree).
// Order, for crash safety: unmatched trees are moved to lost+found/, the new
// database is built and fsynced in staging/, the old one is hard-linked to
// store.db.corrupt-<time>, and the new one renamed over store.db.
func (s *Store) Rebuild() (*RebuildReport, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	unlock, err := s.gcLock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	p := filepath.Join(s.Dir, "store.db")
	rep := &RebuildReport{DB: p}
	sv := records.Salvage(s.view)

	skip := func(err error) {
		if len(rep.Skipped) < maxProblems {
			rep.Skipped = append(rep.Skipped, dbio.OneLine(err.Error()))
		}
	}
	byDigest, digests, err := manifestio.ByDigest(s.objects, s.opts.Workers, skip)
	if err != nil {
		return nil, fmt.Errorf("rebuild %s: %w", p, err)
	}

	matched, aside, err := s.matchTrees(sv, byDigest, digests)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	maxID := rep.recordsFor(s, matched, sv, now)

	// Set aside first: once the new database is in place, a writer's
	// cleanup would delete every tree it has no record for.
	if err := s.setAside(aside, now, rep); err != nil {
		return nil, err
	}

	tmp := filepath.Join(s.Dir, "staging", "store.db.rebuild")
	os.Remove(tmp)
	ev := Event{Kind: "fsck-rebuild", Time: now, Detail: fmt.Sprintf("%d txs from trees and manifests (%d records kept from the previous database); %d trees set aside", len(rep.Txs), rep.Salvaged, len(aside))}
	if err := records.Write(tmp, s.opts.Timeout, rep.Txs, rep.Default, max(sv.Next, maxID+1), sv.Cfg, append(sv.Events, ev)); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("rebuild: %w", err)
	}
	if rep.Saved, err = dbio.KeepOld(p, now); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("rebuild: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return nil, fmt.Errorf("rebuild: install %s: %w", p, err)
	}
	for _, d := range []string{filepath.Join(s.Dir, "staging"), s.Dir} {
		if err := fsx.SyncDir(d); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// matchTree finds the manifest tx id's tree holds: the digest its old
// record names first, then every other manifest whose sizes agree on a
// sample of files, each confirmed by a fast verify with no problem.
func (s *Store) matchTree(id uint64, old *Tx, byDigest map[string]manifestio.Found, digests []string) (manifestio.Found, bool) {
	tree := s.TreeDir(id)
	try := func(f manifestio.Found) bool {
		probs, err := blit.Verify(f.M, s.objects, tree, false, s.opts.Workers, nil)
		return err == nil && len(probs) == 0
	}
	if old != nil {
		if f, ok := byDigest[old.Digest]; ok && try(f) {
			return f, true
		}
	}
	for _, d := range digests {
		f := byDigest[d]
		if (old == nil || d != old.Digest) && sizesAgree(f.M, tree) && try(f) {
			return f, true
		}
	}
	return manifestio.Found{}, false
}

// sizesAgree is a cheap filter before a verify: up to 32 regular files of m,
// spread over it, exist in tree with m's sizes.
func sizesAgree(m *manifest.Manifest, tree string) bool {
	var files []*manifest.Entry
	for i := range m.Entries {
		if m.Entries[i].Type == manifest.File {
			files = append(files, &m.Entries[i])
		}
	}
	step := max(1, len(files)/32)
	for i := 0; i < len(files); i += step {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(tree, files[i].Path), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != files[i].Size {
			return false
		}
	}
	return true
}

// treeTime is when tx id's tree was placed (its directory's mtime).
func (s *Store) treeTime(id uint64, fallback time.Time) time.Time {
	if fi, err := os.Lstat(filepath.Dir(s.TreeDir(id))); err == nil {
		return fi.ModTime().UTC()
	}
	return fallback
}

// pickDefault keeps the old default if it survived, else the newest good
// tx, else the newest.
func pickDefault(txs []*Tx, old uint64) uint64 {
	for _, t := range txs {
		if t.ID == old {
			return old
		}
	}
	for i := len(txs) - 1; i >= 0; i-- {
		if txs[i].State == StateGood {
			return txs[i].ID
		}
	}
	if len(txs) > 0 {
		return txs[len(txs)-1].ID
	}
	return 0
}

// matchTrees pairs each trees/<id> with the manifest that describes it
// (aside: the names none matches), and adds salvaged records whose tree is
// gone but whose manifest is still there.
func (s *Store) matchTrees(sv *records.Salvaged, byDigest map[string]manifestio.Found, digests []string) (map[uint64]manifestio.Found, []string, error) {
	names, err := s.treeNames()
	if err != nil {
		return nil, nil, err
	}
	matched := map[uint64]manifestio.Found{}
	var aside []string
	for _, name := range names {
		id, ok := treeID(name)
		if fi, err := os.Lstat(filepath.Join(s.Dir, "trees", name)); err != nil || !fi.IsDir() {
			ok = false
		}
		if ok {
			f, found := s.matchTree(id, sv.Txs[id], byDigest, digests)
			if found {
				matched[id] = f
				continue
			}
		}
		aside = append(aside, name)
	}
	// Salvaged records without a matching tree, whose manifest is still there.
	for id, t := range sv.Txs {
		if _, ok := matched[id]; ok {
			continue
		}
		// Its tree, if any, matched nothing and is set aside; initagent or
		// verify re-blits a fresh one from the manifest.
		if f, ok := byDigest[t.Digest]; ok {
			matched[id] = f
		}
	}

	return matched, aside, nil
}

// recordsFor makes a record for each matched tx, keeping what the old
// database still tells; it returns the highest id.
func (rep *RebuildReport) recordsFor(s *Store, matched map[uint64]manifestio.Found, sv *records.Salvaged, now time.Time) uint64 {
	ids := make([]uint64, 0, len(matched))
	for id := range matched {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var prev, maxID uint64
	for _, id := range ids {
		f := matched[id]
		t := s.recoveredTx(id, prev, f, now)
		if old := sv.Txs[id]; old != nil && old.Digest == f.Digest {
			t = old
			describe(t, f, now)
			rep.Salvaged++
		}
		rep.Txs = append(rep.Txs, t)
		prev, maxID = id, id
	}
	rep.Default = pickDefault(rep.Txs, sv.Default)
	return maxID
}

// recoveredTx is a new record for tree id, which manifest f describes:
// pending with fresh tries, parent as given, created when the tree was
// placed.
func (s *Store) recoveredTx(id, parent uint64, f manifestio.Found, now time.Time) *Tx {
	t := &Tx{ID: id, Parent: parent, Created: s.treeTime(id, now), Summary: "recovered by fsck", Boot: bootstate.New(0)}
	describe(t, f, now)
	return t
}

// describe sets what manifest f says of a tx in its record.
func describe(t *Tx, f manifestio.Found, now time.Time) {
	entries, size := f.M.Stats()
	t.Digest, t.Manifest, t.Kernels, t.Entries, t.Bytes, t.Updated = f.Digest, f.Key.Hash.String(), f.M.Kernels(), entries, size, now
}

// setAside moves the trees no manifest matches to lost+found, durably.
func (s *Store) setAside(aside []string, now time.Time, rep *RebuildReport) error {
	if len(aside) == 0 {
		return nil
	}
	lf := filepath.Join(s.Dir, "lost+found")
	if err := os.MkdirAll(lf, 0o700); err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	stamp := now.Format("20060102T150405Z")
	for _, name := range aside {
		dst := filepath.Join(lf, "tree-"+name+"-"+stamp)
		if err := os.Rename(filepath.Join(s.Dir, "trees", name), dst); err != nil {
			return fmt.Errorf("rebuild: set aside: %w", err)
		}
		rep.SetAside = append(rep.SetAside, dst)
	}
	for _, d := range []string{lf, filepath.Join(s.Dir, "trees"), s.Dir} {
		if err := fsx.SyncDir(d); err != nil {
			return err
		}
	}
	return nil
}
