package txstore

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/walk"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/records"
	"github.com/txboot/txboot/txstore/sign"
	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Sentinel errors of Commit, checked with errors.Is.
var (
	// ErrChanged: the source directory changed after it was scanned (a file
	// added, removed or modified). Nothing is recorded and, with Consume,
	// the directory is left (or put back) where it was.
	ErrChanged = errors.New("source directory changed during the commit")
	// ErrHoldsStore: the source directory is the store, lies inside it, or
	// holds it (compared by device and inode). Also an ErrInvalid.
	ErrHoldsStore = fmt.Errorf("%w: the directory holds the store or lies inside it", ErrInvalid)
)

// Failpoints of Commit, in the order a commit reaches them (the consume
// ones only with Consume). TestFailpointCrash crashes at each.
var (
	fpScanned          = failpoint.New("commit/scanned")
	fpObjectsSynced    = failpoint.New("commit/objects-synced")
	fpObjectsHalf      = failpoint.New("commit/objects-half-published")
	fpObjectsPublished = failpoint.New("commit/objects-published")
	fpJournaled        = failpoint.New("commit/consume-journaled")
	fpAdopted          = failpoint.New("commit/adopted")
	fpRelinkHalf       = failpoint.New("commit/relink-half")
	fpRelinked         = failpoint.New("commit/relinked")
	fpBlitted          = failpoint.New("commit/blitted")
	fpTreeSynced       = failpoint.New("commit/tree-synced")
	fpTreePublished    = failpoint.New("commit/tree-published")
	fpRecorded         = failpoint.New("commit/recorded")
	fpSourceRemoved    = failpoint.New("commit/source-removed")
)

// CommitOptions tune Commit.
type CommitOptions struct {
	Summary   string
	Tries     int  // boot tries for the new tx; 0 = bootstate.DefaultTries
	NoDefault bool // do not make the new tx the default
	// Consume gives src to the store: new objects are taken by hardlink
	// instead of copied when src is on the store's filesystem (files with
	// other links, or open elsewhere, are still copied), src itself becomes
	// the tree, and src is gone once the tx is recorded. Until the record,
	// a journal names src's path: a failure puts src back there, and so
	// does the next writer's Open after a crash (see recoverConsumed).
	Consume bool
	// Signatures, Version and Origin go into the record as given (see Tx).
	Signatures []sign.Signature
	Version    string
	Origin     string
	// Sign, if set, is called with the new tx's digest once it is known;
	// what it returns is added to Signatures (commit --sign: the digest
	// does not exist before the scan).
	Sign func(digest string) []sign.Signature
}

// CommitStats describe one commit.
type CommitStats struct {
	Entries      int
	Files        int
	Bytes        int64
	NewObjects   int
	NewBytes     int64
	Deduplicated int  // regular files whose object was already stored
	Linked       int  // new objects taken from src by hardlink (Consume)
	Adopted      bool // Consume: src itself became the tree (no blit)
	// ConsumeErr is set when the tx was recorded but removing src failed.
	ConsumeErr  error
	Blit        blit.Stats
	Scan, Store time.Duration
	BlitTime    time.Duration
	Total       time.Duration
}

var (
	zencOnce sync.Once
	zenc     *zstd.Encoder
)

func encoder() *zstd.Encoder {
	zencOnce.Do(func() {
		zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	})
	return zenc
}

func manifestKey(hexhash string) (cas.Key, error) {
	h, err := cas.ParseHash(hexhash)
	if err != nil {
		return cas.Key{}, fmt.Errorf("%w: manifest reference %q", ErrCorrupt, hexhash)
	}
	return cas.NewKey(h, 0o444, 0, 0), nil
}

// Commit stores the tree at src as a new transaction: src holds the new
// /usr's contents. Order, each step durable before the next is visible:
// objects (temp, syncfs, rename), manifest, tree (blit in staging, syncfs,
// rename into trees/), and last the tx record. A crash anywhere leaves
// only garbage in staging/ or an unrecorded tree, both removed by the next
// writer's Open.
func (s *Store) Commit(src string, o CommitOptions) (*Tx, *CommitStats, error) {
	if err := s.writable(); err != nil {
		return nil, nil, err
	}
	if err := s.checkNotStore(src); err != nil {
		return nil, nil, err
	}
	// Consume: the directory scanned (a symlink given as src is followed,
	// as the scan does), by absolute path: the journal records it.
	var abs string
	if o.Consume {
		if err := s.checkConsumable(src); err != nil {
			return nil, nil, err
		}
		var err error
		if abs, err = filepath.Abs(src); err == nil {
			abs, err = filepath.EvalSymlinks(abs)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("commit --consume %s: %w", src, err)
		}
	}
	start := time.Now()
	st := &CommitStats{}
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "commit-")
	if err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err)
	}
	// Unless src sits in work and could not be put back: the next Open's
	// recoverConsumed moves it, so work must survive until then.
	keepWork := false
	defer func() {
		if !keepWork {
			removeTree(work)
		}
	}()
	objs := &cas.Store{Dir: s.objects.Dir, TmpDir: work}
	defer objs.Close() // before removeTree(work): defers run last first
	// Consume: where src is while the store holds it and no tx records it;
	// any failure moves it back to abs (this runs before the two above).
	var movedTo string
	defer func() {
		if movedTo != "" {
			if _, err := s.putBack(movedTo, abs); err != nil {
				keepWork = true
			}
		}
	}()

	type staged struct {
		tmp string
		key cas.Key
	}
	var mu sync.Mutex
	seen := map[cas.Key]bool{}
	var pending []staged
	var relink []manifest.Entry // Consume: files in src that are not (yet) their object's inode
	var linked []linkedObj      // Consume: new objects that are src's own inodes
	scanned := map[string]fileID{}
	notLinked := func(e *manifest.Entry) {
		if o.Consume {
			mu.Lock()
			relink = append(relink, *e)
			mu.Unlock()
		}
	}
	m, err := manifest.Scan(src, manifest.ScanOptions{Workers: s.opts.Workers, OnFile: func(e *manifest.Entry, path string, fst *unix.Stat_t) error {
		if o.Consume {
			mu.Lock()
			scanned[e.Path] = idOf(fst)
			mu.Unlock()
		}
		if e.Size == 0 {
			notLinked(e)
			return nil
		}
		k := e.Key()
		mu.Lock()
		st.Files++
		dup := seen[k]
		seen[k] = true
		mu.Unlock()
		if dup {
			notLinked(e)
			mu.Lock()
			st.Deduplicated++
			mu.Unlock()
			return nil
		}
		has, err := objs.Has(k)
		if err != nil {
			return err
		}
		if has {
			notLinked(e)
			mu.Lock()
			st.Deduplicated++
			mu.Unlock()
			return nil
		}
		took := false
		var tmp string
		if o.Consume {
			tmp, err = objs.StageLink(path, k, fst)
			took = err == nil
			if errors.Is(err, cas.ErrNoLink) {
				err = nil
			}
			if err != nil {
				return err
			}
		}
		if !took {
			notLinked(e)
			if tmp, err = objs.Stage(path, k, fst); err != nil {
				return err
			}
		}
		mu.Lock()
		if took {
			st.Linked++
			linked = append(linked, linkedObj{e.Path, k})
		}
		pending = append(pending, staged{tmp, k})
		st.NewObjects++
		st.NewBytes += e.Size
		mu.Unlock()
		return nil
	}})
	if err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err) // scan errors name the path under src
	}
	st.Scan = time.Since(start)
	st.Entries, st.Bytes = m.Stats()
	if err := fpScanned.Inject(); err != nil {
		return nil, nil, err
	}

	enc := m.Encode()
	digest := manifest.Digest(enc)
	zbytes := encoder().EncodeAll(enc, nil)
	mkey := cas.NewKey(sha256.Sum256(zbytes), 0o444, 0, 0)
	if has, err := objs.Has(mkey); err != nil {
		return nil, nil, err
	} else if !has {
		tmp, err := objs.StageBytes(zbytes, mkey)
		if err != nil {
			return nil, nil, err
		}
		pending = append(pending, staged{tmp, mkey})
	}

	// All staged data durable before any object name appears.
	if err := cas.Syncfs(s.Dir); err != nil {
		return nil, nil, err
	}
	if err := fpObjectsSynced.Inject(); err != nil {
		return nil, nil, err
	}
	for i, p := range pending {
		if err := objs.Publish(p.tmp, p.key); err != nil {
			return nil, nil, err
		}
		if i == len(pending)/2 {
			if err := fpObjectsHalf.Inject(); err != nil {
				return nil, nil, err
			}
		}
	}
	st.Store = time.Since(start) - st.Scan
	if err := fpObjectsPublished.Inject(); err != nil {
		return nil, nil, err
	}

	// Objects that are src's own inodes leave the store again unless the
	// tx is recorded: src may be handed back, and must not alias them.
	recorded := false
	defer func() {
		if !recorded {
			for _, l := range linked {
				os.Remove(s.objects.Path(l.k))
			}
		}
	}()

	// Allocate the id under the writer lock (held since Open, so it stays
	// free): the consume journal names it before src moves.
	id, parent, err := s.nextID()
	if err != nil {
		return nil, nil, err
	}

	bt := time.Now()
	treeRoot := filepath.Join(work, "tree")
	if err := os.Mkdir(treeRoot, 0o755); err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err)
	}
	var keptBecause error // Consume: src was put back after a failure that is not a change
	if o.Consume {
		c := &consumeCtx{src: abs, work: work, id: id, digest: digest, m: m,
			relink: relink, scanned: scanned, linked: linked}
		res, err := s.adopt(c)
		switch res {
		case adoptYes:
			st.Adopted = true
			movedTo = filepath.Join(treeRoot, "usr")
		case adoptStuck: // neither adopted nor put back: the next Open moves it
			keepWork = true
		case adoptRestored:
			keptBecause = c.why
		}
		if err != nil {
			return nil, nil, fmt.Errorf("commit %s: %w", src, err)
		}
	}
	if !st.Adopted {
		if st.Blit, err = blit.Blit(m, s.objects, filepath.Join(treeRoot, "usr"), s.opts.Workers); err != nil {
			return nil, nil, fmt.Errorf("commit %s: %w", src, err)
		}
		// src is removed after the record: it must hold nothing the tree
		// lacks.
		if o.Consume && keptBecause == nil {
			if err := unchanged(abs, m, scanned); err != nil {
				return nil, nil, fmt.Errorf("commit %s: %w", src, err)
			}
		}
	}
	st.BlitTime = time.Since(bt)
	if err := fpBlitted.Inject(); err != nil {
		return nil, nil, err
	}
	// Object renames and the whole tree reach the disk in one syncfs.
	if err := cas.Syncfs(s.Dir); err != nil {
		return nil, nil, err
	}
	if err := fpTreeSynced.Inject(); err != nil {
		return nil, nil, err
	}

	// Publish the tree, then record it.
	final, err := s.publishTree(treeRoot, id)
	if movedTo != "" && final != "" { // renamed, even if the fsync failed
		movedTo = filepath.Join(final, "usr")
	}
	if err != nil {
		return nil, nil, err
	}
	if err := fpTreePublished.Inject(); err != nil {
		if movedTo == "" { // else src goes back first; the next Open removes the rest
			removeTree(final)
		}
		return nil, nil, err
	}

	now := time.Now().UTC()
	t := &Tx{ID: id, Digest: digest, Parent: parent, Created: now, Updated: now,
		Summary: o.Summary, Kernels: m.Kernels(), Entries: st.Entries, Bytes: st.Bytes,
		Manifest: mkey.Hash.String(), Boot: bootstate.New(o.Tries),
		Signatures: o.Signatures, Version: o.Version, Origin: o.Origin}
	if o.Sign != nil {
		t.Signatures = append(slices.Clip(t.Signatures), o.Sign(digest)...)
	}
	err = s.record(t, o.NoDefault, Event{Kind: "commit", TxID: id,
		Detail: fmt.Sprintf("%s, %d entries, %d new objects", digest, st.Entries, st.NewObjects)})
	if err != nil {
		if movedTo == "" {
			removeTree(final)
		} // else src goes back first; the next Open removes the rest
		return nil, nil, fmt.Errorf("commit: record tx %d: %w", id, err)
	}
	recorded, movedTo = true, ""
	// From here the tx exists: an injected error is reported like a
	// failure to drop the journal or remove src, the record stays.
	if err := fpRecorded.Inject(); err != nil {
		return t, st, err
	}
	if o.Consume {
		switch {
		case st.Adopted:
			if err := s.dropJournal(); err != nil { // the next Open drops it
				st.ConsumeErr = fmt.Errorf("tx %d committed: %w", id, err)
			}
		case keptBecause != nil:
			st.ConsumeErr = fmt.Errorf("tx %d committed by copy; %s was kept: %w", id, src, keptBecause)
		default:
			if err := removeTree(abs); err != nil {
				st.ConsumeErr = fmt.Errorf("tx %d committed, but %s was not removed: %w", id, src, err)
			}
		}
		if err := fpSourceRemoved.Inject(); err != nil {
			return t, st, err
		}
	}
	st.Total = time.Since(start)
	return t, st, nil
}

// nextID allocates the next tx id, and the parent (the current default),
// under the writer lock (held since Open, so the id stays free).
func (s *Store) nextID() (id, parent uint64, err error) {
	err = s.view(func(tx *bbolt.Tx) error {
		_, meta, _, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		id, parent = records.Uint(meta, records.KeyNext), records.Uint(meta, records.KeyDefault)
		if id == 0 {
			id = 1
		}
		return nil
	})
	return id, parent, err
}

// publishTree renames a synced tree (staging/…/tree) to trees/<id>, the
// directory fsynced, replacing an unrecorded leftover of that id.
func (s *Store) publishTree(treeRoot string, id uint64) (string, error) {
	trees := filepath.Join(s.Dir, "trees")
	final := filepath.Join(trees, strconv.FormatUint(id, 10))
	if err := removeTree(final); err != nil { // unrecorded leftover, if any
		return "", err
	}
	if err := os.Rename(treeRoot, final); err != nil {
		return "", fmt.Errorf("commit: publish tree: %w", err)
	}
	if err := fsx.SyncDir(trees); err != nil {
		return final, err
	}
	return final, nil
}

// record writes tx t's record (the last step of a commit), advances the
// next id, makes t the default unless noDefault, and logs ev.
func (s *Store) record(t *Tx, noDefault bool, ev Event) error {
	return s.update(func(tx *bbolt.Tx) error {
		txs, meta, events, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		if txs.Get(records.Key(t.ID)) != nil {
			return fmt.Errorf("%w: tx %d already recorded", ErrCorrupt, t.ID)
		}
		if err := records.PutTx(txs, t); err != nil {
			return err
		}
		// Never lowered (a guard: a tx is recorded at or above it).
		if err := meta.Put(records.KeyNext, records.Key(max(records.Uint(meta, records.KeyNext), t.ID+1))); err != nil {
			return err
		}
		if !noDefault {
			if err := meta.Put(records.KeyDefault, records.Key(t.ID)); err != nil {
				return err
			}
		}
		return records.AppendEvent(events, ev)
	})
}

// Manifest loads and checks tx t's manifest: the object must hash to its
// name and the decompressed manifest to the tx digest.
func (s *Store) Manifest(t *Tx) (*manifest.Manifest, error) {
	k, err := manifestKey(t.Manifest)
	if err != nil {
		return nil, err
	}
	// Bounded by the record's entry count: a small tree's manifest cannot
	// take the bytes and lines of a large one.
	raw, err := s.manifestText(k, t.Entries)
	if err != nil {
		return nil, fmt.Errorf("tx %d manifest: %w", t.ID, err)
	}
	// Hash and parse at once (both are on the boot path); a parse is only
	// used once the digest matched.
	digest := make(chan string, 1)
	go func() { digest <- manifest.Digest(raw) }()
	m, err := manifest.DecodeOwned(raw) // raw is ours and never written again
	if d := <-digest; d != t.Digest {
		return nil, fmt.Errorf("tx %d manifest: %w: %s, want %s", t.ID, ErrDigest, d, t.Digest)
	}
	if err != nil {
		return nil, fmt.Errorf("tx %d manifest: %w", t.ID, err)
	}
	return m, nil
}

// ManifestProblem is the Path of the Problem Verify reports when the tx's
// manifest object cannot be loaded; it is not a path in the tree.
const ManifestProblem = "manifest"

// Verify checks tx id's tree: fast or full (see blit.Verify). Problems name
// paths as "usr/…"; the error is only for failing to run at all.
func (s *Store) Verify(id uint64, mode VerifyMode) ([]Problem, error) {
	t, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	if mode == VerifyOff {
		return nil, nil
	}
	unlock, err := s.gcLock(unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	m, err := s.Manifest(t)
	if err != nil {
		// Path already says "manifest" (and the caller knows the tx): keep
		// only what went wrong, which names the object.
		reason := strings.TrimPrefix(err.Error(), fmt.Sprintf("tx %d manifest: ", id))
		return []Problem{{Path: ManifestProblem, Reason: reason}}, nil
	}
	// trees/<id> is opened without following a symlink: one there (even to
	// a good copy, or to /) is damage to report, not a tree to check.
	tfd, prob := s.openTree(id)
	if prob != nil {
		return []Problem{*prob}, nil
	}
	defer unix.Close(tfd)
	probs, err := blit.VerifyAt(m, s.objects, tfd, "usr", mode == VerifyFull, s.opts.Workers, s.hashed)
	for i := range probs {
		if probs[i].Path == "." {
			probs[i].Path = "usr"
		} else {
			probs[i].Path = "usr/" + probs[i].Path
		}
	}
	return probs, err
}

// gcLock serialises deletions (prune, gc: exclusive) against readers that
// walk trees and objects (verify: shared).
func (s *Store) gcLock(how int) (func(), error) {
	fd, err := lockFile(filepath.Join(s.Dir, "gc.lock"), how, s.opts.Timeout)
	if err != nil {
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

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
	if err := s.checkDirs("staging", "trees"); err != nil {
		return bs, fmt.Errorf("reblit tx %d: %w", id, err)
	}
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "reblit-")
	if err != nil {
		return bs, fmt.Errorf("reblit tx %d: %w", id, err)
	}
	defer removeTree(work)
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

// checkConsumable refuses to consume (and later remove) a directory that
// holds the store or lies inside it, or a filesystem root.
func (s *Store) checkConsumable(src string) error {
	abs, err := filepath.Abs(src)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return fmt.Errorf("commit --consume %s: %w", src, err)
	}
	store, err := filepath.EvalSymlinks(s.Dir)
	if err != nil {
		return fmt.Errorf("commit --consume: %w", err)
	}
	inside := func(a, b string) bool { // a is b or under it
		rel, err := filepath.Rel(b, a)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}
	if abs == "/" || inside(abs, store) || inside(store, abs) {
		return fmt.Errorf("commit --consume %s: %w: it holds the store, lies in it, or is /", src, ErrInvalid)
	}
	return nil
}

// fileID is what a consuming commit remembers of a file at its scan, to
// tell later whether it is still that file with that content.
type fileID struct {
	ino, dev uint64
	size     int64
	mtim     unix.Timespec
	mode     uint32 // with the type bits
	uid, gid uint32
}

func idOf(st *unix.Stat_t) fileID {
	return fileID{st.Ino, st.Dev, st.Size, st.Mtim, st.Mode, st.Uid, st.Gid}
}

// sameContent: the same inode with the same size and mtime, so nobody
// wrote it since.
func (f fileID) sameContent(st *unix.Stat_t) bool {
	return f.ino == st.Ino && f.dev == st.Dev && f.size == st.Size && f.mtim == st.Mtim
}

// linkedObj is a new object that is one of src's own inodes (StageLink).
type linkedObj struct {
	path string
	k    cas.Key
}

type adoptResult int

const (
	adoptNo       adoptResult = iota // src did not move (another filesystem): blit, then remove src
	adoptYes                         // src is the tree at work/tree/usr
	adoptRestored                    // src moved and is back: blit (unless changed), keep src
	adoptStuck                       // src moved and could not be put back: the journal stays
)

// consumeCtx is what adopt needs of a consuming commit.
type consumeCtx struct {
	src, work string // src's absolute path; the commit's staging directory
	id        uint64
	digest    string
	m         *manifest.Manifest
	relink    []manifest.Entry // files that are not (yet) their object's inode
	scanned   map[string]fileID
	linked    []linkedObj
	why       error // adoptRestored without an error: why src was not adopted
}

// adopt makes src the new tree at work/tree/usr instead of blitting one
// (Consume). Before src moves, the journal names its path and the tx id:
// from then until the record, a failure here or in the caller puts it
// back, and so does the next Open after a crash (recoverConsumed). In the
// tree, each file in relink (deduplicated, copied, or empty) is first
// checked to be the file that was scanned, then replaced by a link to its
// object or by a fresh empty file, never changed in place while another
// link shares its inode (a tree made with cp -al). A fast verify (nothing
// extra or missing, every file its object) and a look at the objects taken
// from src then catch any other change since the scan: ErrChanged, and src
// goes back. Any other failure puts src back too; the caller then blits.
func (s *Store) adopt(c *consumeCtx) (adoptResult, error) {
	dst := filepath.Join(c.work, "tree", "usr")
	// A file taken by hardlink that was written since its scan would give
	// its new content to the files about to be linked to its object.
	if err := s.checkLinked(c); err != nil {
		return adoptNo, err
	}
	j := consumeJournal{Src: c.src, Work: filepath.Base(c.work), ID: c.id, Digest: c.digest}
	if err := s.writeJournal(j); err != nil {
		return adoptNo, err
	}
	if err := fpJournaled.Inject(); err != nil {
		return adoptNo, errors.Join(err, s.dropJournal())
	}
	if err := os.Rename(c.src, dst); err != nil {
		return adoptNo, s.dropJournal() // another filesystem, or a mount point: blit
	}
	err := fpAdopted.Inject()
	if err == nil {
		err = s.relinkTree(c, dst)
	}
	if err == nil {
		err = s.checkAdopted(c, dst)
	}
	if err == nil {
		err = fpRelinked.Inject()
	}
	if err == nil {
		return adoptYes, nil
	}
	at, perr := s.putBack(dst, c.src)
	if perr != nil {
		return adoptStuck, fmt.Errorf("%w (and it could not be put back; the store's next open retries: %w)", err, perr)
	}
	if at != c.src {
		err = fmt.Errorf("%w (the directory is now at %s: its path was taken meanwhile)", err, at)
	}
	if errors.Is(err, ErrChanged) {
		return adoptRestored, err
	}
	c.why = err
	return adoptRestored, nil
}

// relinkTree replaces the files of relink in the adopted tree dst (see
// adopt). Temporary names live in work, never in src: a crash leaves
// nothing of ours in the user's directory.
func (s *Store) relinkTree(c *consumeCtx, dst string) error {
	rootfd, err := walk.OpenDirAt(unix.AT_FDCWD, dst)
	if err != nil {
		return fmt.Errorf("open %s: %w", dst, err)
	}
	defer unix.Close(rootfd)
	workfd, err := walk.OpenDirAt(unix.AT_FDCWD, c.work)
	if err != nil {
		return fmt.Errorf("open %s: %w", c.work, err)
	}
	defer unix.Close(workfd)
	// In path order, so that files of one directory share its fd.
	relink := c.relink
	slices.SortFunc(relink, func(a, b manifest.Entry) int { return strings.Compare(a.Path, b.Path) })
	dirfd, dirPath := -1, ""
	defer func() {
		if dirfd >= 0 {
			unix.Close(dirfd)
		}
	}()
	for i := range relink {
		if i == len(relink)/2 {
			if err := fpRelinkHalf.Inject(); err != nil {
				return err
			}
		}
		e := &relink[i]
		dir, base := ".", e.Path
		if j := strings.LastIndexByte(e.Path, '/'); j >= 0 {
			dir, base = e.Path[:j], e.Path[j+1:]
		}
		if dir != dirPath || dirfd < 0 {
			if dirfd >= 0 {
				unix.Close(dirfd)
				dirfd = -1
			}
			// src was the caller's until now: nothing in it is followed
			// out of the tree, however it changed since the scan.
			fd, err := openBeneath(rootfd, dir)
			switch err {
			case nil:
			case unix.ENOENT, unix.ENOTDIR, unix.ELOOP, unix.EXDEV:
				return fmt.Errorf("%w: directory %s was removed or replaced", ErrChanged, dir)
			default:
				return fmt.Errorf("open %s: %w", dir, err)
			}
			dirfd, dirPath = fd, dir
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				return fmt.Errorf("%w: %s was removed", ErrChanged, e.Path)
			}
			return fmt.Errorf("lstat %s: %w", e.Path, err)
		}
		if id := c.scanned[e.Path]; !id.sameContent(&st) || st.Mode != id.mode || st.Uid != id.uid || st.Gid != id.gid {
			return fmt.Errorf("%w: %s was modified", ErrChanged, e.Path)
		}
		k := e.Key()
		tmp := ".relink-" + strconv.Itoa(i)
		if e.Size == 0 {
			if err := fixEmpty(dirfd, base, &st, k, workfd, tmp); err != nil {
				return fmt.Errorf("%s: %w", e.Path, err)
			}
			continue
		}
		if err := s.objects.Link(k, workfd, tmp); err != nil {
			return fmt.Errorf("link object %s for %s: %w", k.RelPath(), e.Path, err)
		}
		if err := unix.Renameat(workfd, tmp, dirfd, base); err != nil {
			unix.Unlinkat(workfd, tmp, 0)
			return fmt.Errorf("replace %s: %w", e.Path, err)
		}
	}
	return nil
}

// checkAdopted is the last look at an adopted src before it is published:
// a fast verify (every manifest entry there, nothing else, each file its
// object's inode), and the objects taken from src by hardlink still as
// scanned (a writer could have written through them).
func (s *Store) checkAdopted(c *consumeCtx, dst string) error {
	probs, err := blit.Verify(c.m, s.objects, dst, false, s.opts.Workers, nil)
	if err != nil {
		return fmt.Errorf("verify %s: %w", dst, err)
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %s (%d differences)", ErrChanged, probs[0], len(probs))
	}
	return s.checkLinked(c)
}

// checkLinked checks that the objects taken from src by hardlink are as
// scanned.
func (s *Store) checkLinked(c *consumeCtx) error {
	for _, l := range c.linked {
		var st unix.Stat_t
		if err := s.objects.Stat(l.k, &st); err != nil {
			return fmt.Errorf("object %s of %s: %w", l.k.RelPath(), l.path, err)
		}
		if !c.scanned[l.path].sameContent(&st) {
			return fmt.Errorf("%w: %s was modified", ErrChanged, l.path)
		}
	}
	return nil
}

// fixEmpty gives an empty file in the adopted tree (stat want) its
// manifest mode and owner. An inode only src links is changed in place;
// one with other links (cp -al from a live tree) is left alone and a fresh
// empty file, made as tmp in workfd, takes its name. Only through
// descriptors: a symlink put in its place is never followed.
func fixEmpty(dirfd int, name string, want *unix.Stat_t, k cas.Key, workfd int, tmp string) error {
	if want.Mode&07777 == k.Mode && (!cas.IsRoot() || (want.Uid == k.UID && want.Gid == k.GID)) {
		return nil
	}
	if want.Nlink == 1 {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrChanged, err)
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		if err == nil && (st.Ino != want.Ino || st.Size != 0 || st.Mode&unix.S_IFMT != unix.S_IFREG) {
			err = ErrChanged
		}
		if err == nil && st.Nlink == 1 {
			err = cas.SetAttrs(fd, k.Mode, k.UID, k.GID)
			unix.Close(fd)
			return err
		}
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	fd, err := unix.Openat(workfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	err = cas.SetAttrs(fd, k.Mode, k.UID, k.GID)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(workfd, tmp, dirfd, name)
	}
	if err != nil {
		unix.Unlinkat(workfd, tmp, 0)
	}
	return err
}

// consumeJournalName is the file in the store that names a consumed src
// while the store holds it and no tx records it yet.
const consumeJournalName = "consume.json"

type consumeJournal struct {
	Src    string `json:"src"`    // where src was (absolute)
	Work   string `json:"work"`   // its commit's directory in staging/
	ID     uint64 `json:"id"`     // the tx it is to become
	Digest string `json:"digest"` // that tx's digest
}

// writeJournal writes the consume journal durably (temp, fsync, rename,
// directory fsync) before src moves.
func (s *Store) writeJournal(j consumeJournal) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	p := filepath.Join(s.Dir, consumeJournalName)
	tmp := filepath.Join(s.Dir, "staging", consumeJournalName+".new")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("consume journal: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("consume journal %s: %w", p, err)
	}
	return fsx.SyncDir(s.Dir)
}

// dropJournal removes the consume journal durably; a missing one is fine.
func (s *Store) dropJournal() error {
	p := filepath.Join(s.Dir, consumeJournalName)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return fsx.SyncDir(s.Dir)
}

// putBack moves a consumed src from the store back to its path to, or
// next to it (to.txboot-recovered-N) if something took that path
// meanwhile; makes that durable, then drops the journal. It returns where
// src now is.
func (s *Store) putBack(from, to string) (string, error) {
	dest := to
	for n := 1; ; n++ {
		err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, dest, unix.RENAME_NOREPLACE)
		if err == unix.EINVAL || err == unix.ENOSYS { // no RENAME_NOREPLACE here
			err = unix.EEXIST
			if _, lerr := os.Lstat(dest); errors.Is(lerr, os.ErrNotExist) {
				err = unix.Rename(from, dest)
			}
		}
		if err == nil {
			break
		}
		if (err != unix.EEXIST && err != unix.ENOTEMPTY) || n > 100 {
			return "", fmt.Errorf("put %s back at %s: %w", from, dest, err)
		}
		dest = fmt.Sprintf("%s.txboot-recovered-%d", to, n)
	}
	for _, d := range []string{filepath.Dir(dest), filepath.Dir(from)} {
		if err := fsx.SyncDir(d); err != nil {
			return dest, err
		}
	}
	return dest, s.dropJournal()
}

// recoverConsumed finishes what a consuming commit killed before its end
// left: if the journal's tx is recorded, only the journal goes; otherwise
// src goes back to where the user put it (see putBack), from staging/ or
// from its unrecorded trees/<id>, and a GC drops the objects that were
// src's own inodes. Cleanup calls it before it empties staging/ and removes
// unrecorded trees, which would otherwise delete the user's directory.
func (s *Store) recoverConsumed() error {
	p := filepath.Join(s.Dir, consumeJournalName)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("consume journal %s: %w", p, err)
	}
	var j consumeJournal
	if err := json.Unmarshal(b, &j); err != nil || !filepath.IsAbs(j.Src) || filepath.Clean(j.Src) != j.Src || j.Src == "/" ||
		j.ID == 0 || j.Work == "" || j.Work == "." || j.Work == ".." || strings.ContainsRune(j.Work, '/') {
		return fmt.Errorf("%w: consume journal %s is unreadable; a consumed directory may be in %s: move it back, then remove the journal",
			ErrCorrupt, p, filepath.Join(s.Dir, "staging"))
	}
	t, err := s.Get(j.ID)
	if err == nil && t.Digest == j.Digest {
		return s.dropJournal() // committed; killed before the journal went
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("consume journal %s: %w", p, err)
	}
	cands := []string{filepath.Join(s.Dir, "staging", j.Work, "tree", "usr")}
	if err != nil { // no record with that id: its tree, if any, is src
		cands = append(cands, s.TreeDir(j.ID))
	}
	for _, c := range cands {
		if fi, err := os.Lstat(c); err == nil && fi.IsDir() {
			if _, err := s.putBack(c, j.Src); err != nil {
				return err
			}
			s.GC() // best effort: objects that are src's inodes go now, or at the next GC
			return nil
		}
	}
	return s.dropJournal() // src never moved, or is back already
}

// unchanged checks that src still holds exactly what its scan found (by
// lstat: type, mode, owner, symlink target, and for files the same inode,
// size and mtime), before a consuming commit that copied src removes it.
func unchanged(src string, m *manifest.Manifest, scanned map[string]fileID) error {
	want := make(map[string]*manifest.Entry, len(m.Entries))
	for i := range m.Entries {
		want[m.Entries[i].Path] = &m.Entries[i]
	}
	seen := 0
	err := filepath.WalkDir(src, func(p string, _ fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s was removed", ErrChanged, p)
		}
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		e := want[rel]
		if e == nil {
			return fmt.Errorf("%w: %s was added", ErrChanged, rel)
		}
		seen++
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("%w: lstat %s: %w", ErrChanged, rel, err)
		}
		ok := st.Uid == e.UID && st.Gid == e.GID
		switch e.Type {
		case manifest.Dir:
			ok = ok && st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Mode&07777 == e.Mode
		case manifest.Symlink:
			t, err := os.Readlink(p)
			ok = ok && err == nil && t == e.Target
		default:
			ok = ok && scanned[rel].sameContent(&st)
		}
		if !ok {
			return fmt.Errorf("%w: %s was modified", ErrChanged, rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != len(m.Entries) {
		return fmt.Errorf("%w: %d entries were removed", ErrChanged, len(m.Entries)-seen)
	}
	return nil
}

// devIno identifies a directory, whatever path reaches it.
type devIno struct{ dev, ino uint64 }

// parentChain is dir's device and inode, then its parent's, and so on up
// to the root (".." from a descriptor: crosses mounts, sees through
// symlinks and relative paths).
func parentChain(dir string) ([]devIno, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	var out []devIno
	for len(out) < 4096 {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("stat a parent of %s: %w", dir, err)
		}
		id := devIno{st.Dev, st.Ino}
		if len(out) > 0 && out[len(out)-1] == id { // the root is its own parent
			break
		}
		out = append(out, id)
		up, err := unix.Openat(fd, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return nil, fmt.Errorf("open a parent of %s: %w", dir, err)
		}
		fd = up
	}
	unix.Close(fd)
	return out, nil
}

// checkNotStore refuses a src that is the store, lies inside it, or holds
// it (committing the store into itself), comparing directories by device
// and inode along both chains of parents.
func (s *Store) checkNotStore(src string) error {
	srcUp, err := parentChain(src)
	if err != nil {
		return nil // not a directory one can open: the scan says so
	}
	storeUp, err := parentChain(s.Dir)
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if slices.Contains(srcUp, storeUp[0]) || slices.Contains(storeUp, srcUp[0]) {
		return fmt.Errorf("commit %s: %w", src, ErrHoldsStore)
	}
	return nil
}

// openBeneath opens directory rel under rootfd without following any
// symlink or leaving rootfd (openat2; on kernels before 5.6, one component
// at a time with O_NOFOLLOW).
func openBeneath(rootfd int, rel string) (int, error) {
	how := unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	for {
		fd, err := unix.Openat2(rootfd, rel, &how)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != unix.ENOSYS {
			return fd, err
		}
		break
	}
	fd, err := unix.Dup(rootfd)
	if err != nil || rel == "." {
		return fd, err
	}
	for _, c := range strings.Split(rel, "/") {
		next, err := walk.OpenDirAt(fd, c)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}
