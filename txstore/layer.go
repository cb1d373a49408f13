package txstore

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// Sentinel errors of CommitLayer, checked with errors.Is.
var (
	// ErrUnchanged: the layer leaves the tx's /usr as it was (the same
	// digest; files opened for writing are copied up unchanged, so an
	// upper directory is rarely empty) and no /etc state was given.
	// Nothing is recorded.
	ErrUnchanged = errors.New("nothing changed")
	// ErrBadUpper: the upper directory holds what an overlay mounted with
	// redirect_dir=off,index=off,metacopy=off does not make (a redirect,
	// a metacopy file, an xattr whiteout, an opaque root). Also an
	// ErrInvalid.
	ErrBadUpper = fmt.Errorf("%w: not an overlayfs upper directory as txboot mounts it", ErrInvalid)
)

// Failpoints of CommitLayer, in the order it reaches them (the steps of
// commitJob, as for Commit).
var layerFailpoints = commitPoints{
	staged:     failpoint.New("layer/scanned"),
	synced:     failpoint.New("layer/objects-synced"),
	half:       failpoint.New("layer/objects-half-published"),
	published:  failpoint.New("layer/objects-published"),
	built:      failpoint.New("layer/blitted"),
	treeSynced: failpoint.New("layer/tree-synced"),
	imaged:     failpoint.New("layer/image-built"),
	placed:     failpoint.New("layer/tree-published"),
	recorded:   failpoint.New("layer/recorded"),
}

// overlayXattr prefixes overlayfs' own xattrs (as root: trusted.*).
const overlayXattr = "trusted.overlay."

// CommitLayer records a new tx: tx from's /usr with upper, the upper
// directory of an overlay over it (mounted redirect_dir=off,index=off,
// metacopy=off), applied as overlayfs merges them. upper stands for the
// /usr root: a file, symlink or directory in it replaces the tx's at its
// path (a directory's lower contents stay unless it is opaque, xattr
// trusted.overlay.opaque "y"); a whiteout (character device 0:0) deletes
// the path and what lies under it. overlayfs' own xattrs (trusted.overlay.*)
// are never recorded. upper's root is the merged root: its mode, owner
// and xattrs are the new tx's /usr's. A file copied up keeps the mode of
// the object it was (write bits stripped): where an upper file has the
// lower file's object mode (or ACL) it gets the mode the tx recorded. The
// overlay must be unmounted: a file that changes during the scan fails
// the commit.
//
// Only upper is read (its regular files hashed, new contents copied into
// the CAS, never linked: upper stays scratch); the rest comes from tx
// from's manifest, so the cost grows with the changes, not with /usr.
// Then it is Commit: objects, manifest, tree, record, each durable before
// the next is visible, failpoints layer/…. The record's parent is from
// (o.Parent must be 0 or from); o.Consume is refused.
//
// ErrUnchanged when the result has tx from's digest and o.Etc is "" (or
// o.EtcInherited); with o.Etc (a run that changed only /etc) the tx is
// recorded.
func (s *Store) CommitLayer(from uint64, upper string, o CommitOptions) (*Tx, *CommitStats, error) {
	if err := s.writable(); err != nil {
		return nil, nil, err
	}
	base, pm, err := s.layerBase(from, upper, &o)
	if err != nil {
		return nil, nil, err
	}
	j, err := s.newCommitJob(upper, o, layerFailpoints)
	if err != nil {
		return nil, nil, err
	}
	j.src, j.from = upper, from
	t, err := j.run(func() error { return j.layer(base, pm) })
	if t == nil {
		return nil, nil, err
	}
	return t, j.st, err
}

// layerBase checks CommitLayer's arguments and loads tx from's record and
// manifest; it sets o.Parent to from.
func (s *Store) layerBase(from uint64, upper string, o *CommitOptions) (*Tx, *manifest.Manifest, error) {
	if o.Consume {
		return nil, nil, fmt.Errorf("commit layer: %w: an upper directory cannot be consumed", ErrInvalid)
	}
	if o.Parent != 0 && o.Parent != from {
		return nil, nil, fmt.Errorf("commit layer: %w: parent %d, but the layer lies on tx %d", ErrInvalid, o.Parent, from)
	}
	o.Parent = from
	if err := s.checkUpper(upper); err != nil {
		return nil, nil, err
	}
	if err := s.layout().CheckAll("staging", "objects", "trees"); err != nil {
		return nil, nil, fmt.Errorf("commit layer: %w", err)
	}
	base, err := s.Get(from)
	if err != nil {
		return nil, nil, fmt.Errorf("commit layer: %w", err)
	}
	pm, err := s.Manifest(base)
	if err != nil {
		return nil, nil, fmt.Errorf("commit layer: %w", err)
	}
	return base, pm, nil
}

// checkUpper refuses an upper directory that is the store or holds it (a
// scan would read the store into the tx). One inside the store is fine:
// bootctl run keeps its working copy in staging/.
func (s *Store) checkUpper(upper string) error {
	up, err := parentChain(upper)
	if err != nil {
		return fmt.Errorf("commit layer: %w", err)
	}
	storeUp, err := parentChain(s.Dir)
	if err != nil {
		return fmt.Errorf("commit layer: %w", err)
	}
	if slices.Contains(storeUp, up[0]) {
		return fmt.Errorf("commit layer %s: %w", upper, ErrHoldsStore)
	}
	return nil
}

// layer is CommitLayer's stage step: upper read (each new file staged as
// it is hashed), laid onto tx base's manifest pm, then the manifest.
func (j *commitJob) layer(base *Tx, pm *manifest.Manifest) error {
	u, err := j.readUpper()
	if err != nil {
		return err
	}
	m := u.apply(pm)
	raw := m.Encode()
	j.st.Scan = time.Since(j.start)
	if (j.o.Etc == "" || j.o.EtcInherited) && sameDigest(base, pm, m, raw) {
		return fmt.Errorf("commit layer %s on tx %d: %w: the result is tx %d's %s", j.name, base.ID, ErrUnchanged, base.ID, base.Digest)
	}
	return j.useManifest(m, raw)
}

// sameDigest reports whether m (encoded as raw) is tx base's manifest pm
// again. A v1 base (no xattrs recorded) is compared in its own format.
func sameDigest(base *Tx, pm, m *manifest.Manifest, raw []byte) bool {
	if manifest.Digest(raw) == base.Digest {
		return true
	}
	if pm.Version != 1 || slices.ContainsFunc(m.Entries, func(e manifest.Entry) bool { return e.Xattrs != "" }) {
		return false
	}
	v1 := manifest.Manifest{Version: 1, Entries: m.Entries}
	return v1.Digest() == base.Digest
}

// upperScan is what reading an upper directory found besides its entries.
type upperScan struct {
	dir       string
	m         *manifest.Manifest // upper's dirs, files and symlinks
	mu        sync.Mutex         // the maps, filled from scan workers
	whiteouts map[string]bool    // paths deleted (with what lies under them)
	opaque    map[string]bool    // directories that hide the lower's children
}

// readUpper scans upper as Commit scans its source (the same bounds,
// symlinks recorded, never followed), staging new files by copy, with
// whiteouts and overlayfs' xattrs taken out.
func (j *commitJob) readUpper() (*upperScan, error) {
	u := &upperScan{dir: j.src, whiteouts: map[string]bool{}, opaque: map[string]bool{}}
	m, err := manifest.Scan(j.src, manifest.ScanOptions{Workers: j.s.opts.Workers, OnFile: j.stageFile, OnVerity: j.noteVerity,
		OnEntry: u.entry, OnOther: u.other})
	if err != nil {
		return nil, fmt.Errorf("commit layer: %w", err) // scan errors name the path under upper
	}
	u.m = m
	return u, nil
}

// other takes a whiteout (character device 0:0) at p; anything else that
// is not a directory, file or symlink is refused, as Scan does.
func (u *upperScan) other(p string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		return fmt.Errorf("%w: %s (mode %o): /usr may hold only directories, regular files and symlinks",
			ErrUnsupported, filepath.Join(u.dir, p), st.Mode)
	}
	u.mu.Lock()
	u.whiteouts[p] = true
	u.mu.Unlock()
	return nil
}

// entry drops overlayfs' own xattrs from e, noting an opaque directory,
// and refuses those of features txboot's overlay mount turns off.
func (u *upperScan) entry(e *manifest.Entry) error {
	if !strings.Contains(e.Xattrs, overlayXattr) {
		return nil // most entries: no parse
	}
	xs, err := manifest.ParseXattrs(e.Xattrs)
	if err != nil {
		return err
	}
	keep := xs[:0]
	for _, x := range xs {
		name, ok := strings.CutPrefix(x.Name, overlayXattr)
		if !ok {
			keep = append(keep, x)
			continue
		}
		if err := u.overlayXattr(e, name, string(x.Value)); err != nil {
			return err
		}
	}
	e.Xattrs, err = manifest.EncodeXattrs(keep)
	return err
}

// overlayXattr handles overlayfs' xattr trusted.overlay.<name> = value
// on e: opaque "y" marks a directory opaque; redirects, metacopy and
// xattr whiteouts are refused (their meaning lies outside this entry);
// the rest (origin, impure, uuid, nlink, …) is overlay's bookkeeping.
func (u *upperScan) overlayXattr(e *manifest.Entry, name, value string) error {
	where := filepath.Join(u.dir, e.Path)
	switch name {
	case "opaque":
		if e.Type != manifest.Dir || value != "y" || e.Path == "." {
			return fmt.Errorf("commit layer: %w: %s has %sopaque=%q", ErrBadUpper, where, overlayXattr, value)
		}
		u.mu.Lock()
		u.opaque[e.Path] = true
		u.mu.Unlock()
	case "redirect", "metacopy", "whiteout", "whiteouts":
		return fmt.Errorf("commit layer: %w: %s has %s%s (mount with redirect_dir=off,index=off,metacopy=off)",
			ErrBadUpper, where, overlayXattr, name)
	}
	return nil
}

// apply lays the upper onto the lower manifest pm as overlayfs merges
// them: an upper entry replaces the lower one at its path (see recorded);
// nothing of the lower is left at a whiteout or under it, under an opaque
// directory, or under an upper entry that is not a directory. Both lists
// and the result are in canonical order.
func (u *upperScan) apply(pm *manifest.Manifest) *manifest.Manifest {
	cut := u.cuts()
	lo, up := pm.Entries, u.m.Entries
	out := make([]manifest.Entry, 0, len(lo)+len(up))
	for i, k := 0, 0; i < len(lo) || k < len(up); {
		switch {
		case k == len(up) || (i < len(lo) && manifest.Less(lo[i].Path, up[k].Path)):
			if !hidden(cut, lo[i].Path) {
				out = append(out, lo[i])
			}
			i++
		case i < len(lo) && lo[i].Path == up[k].Path:
			e := up[k]
			if !above(cut, e.Path) { // else the lower entry is gone, not replaced
				recorded(&e, &lo[i])
			}
			out = append(out, e)
			i, k = i+1, k+1
		default:
			out = append(out, up[k])
			k++
		}
	}
	return &manifest.Manifest{Version: 2, Entries: out}
}

// cuts are the paths where the lower tree ends: whiteouts, opaque
// directories and the upper's non-directories.
func (u *upperScan) cuts() map[string]bool {
	cut := make(map[string]bool, len(u.whiteouts)+len(u.opaque))
	for p := range u.whiteouts {
		cut[p] = true
	}
	for p := range u.opaque {
		cut[p] = true
	}
	for i := range u.m.Entries {
		if e := &u.m.Entries[i]; e.Type != manifest.Dir {
			cut[e.Path] = true
		}
	}
	return cut
}

// recorded gives upper file e the lower file l's mode and xattrs where
// e has them as l's object has them: a tree's files are its objects,
// whose write bits (mode, access ACL) the store strips, and a copy-up
// copies the object's. So a file the run only opened for writing, or
// wrote to, keeps the mode its tx recorded; one the run chmodded to what
// the object has is taken as unchanged (the two look the same).
func recorded(e, l *manifest.Entry) {
	if e.Type != manifest.File || l.Type != manifest.File {
		return
	}
	k := l.Key()
	if e.Mode == k.Mode {
		e.Mode = l.Mode
	}
	if e.Xattrs == k.Xattrs {
		e.Xattrs = l.Xattrs
	}
}

// hidden reports whether a lower entry at p is gone: p or a directory
// above it is a cut (an upper entry at p itself never asks).
func hidden(cut map[string]bool, p string) bool {
	return len(cut) > 0 && (cut[p] || above(cut, p))
}

// above reports whether a directory above p is a cut.
func above(cut map[string]bool, p string) bool {
	if len(cut) == 0 {
		return false
	}
	for i := strings.LastIndexByte(p, '/'); i > 0; i = strings.LastIndexByte(p[:i], '/') {
		if cut[p[:i]] {
			return true
		}
	}
	return false
}
