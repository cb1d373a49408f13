package txstore

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/fsx"
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
