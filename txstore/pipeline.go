package txstore

import (
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
	"github.com/txboot/txboot/txstore/internal/consume"
	"github.com/txboot/txboot/txstore/internal/layout"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/records"
	"github.com/txboot/txboot/txstore/verity"
	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// commitJob is one commit on its way into the store: Commit (a scanned
// directory, maybe consumed) and CommitManifest (a pull's manifest, whose
// objects are stored already) configure one and run it. Each step is
// durable before the next makes it visible, and ends at its failpoint:
//
//	stage    new objects and the manifest object staged in work
//	publish  one syncfs, then renamed under objects/
//	build    the tree at work/tree/usr: blitted, or the consumed src
//	         adopted; CommitOptions.Etc moved to work/tree/etc; one
//	         syncfs for the renames and the whole tree
//	image    work/tree/image.erofs: the sealed image (objects sealed where
//	         the filesystem can), durable; none is not a failure
//	place    renamed to trees/<id>, the directory fsynced
//	record   the tx record, last: from here the tx exists
//	finish   a consumed src removed (or its journal dropped)
//
// A crash before the record leaves garbage in staging/ or a whole tree
// without a record; the next writer's Open removes the one and records the
// other again (recordLostTrees). close undoes what a failed job did.
type commitJob struct {
	s     *Store
	o     CommitOptions
	fp    commitPoints
	name  string       // src, or the manifest's digest: for errors
	src   string       // "" for a manifest; the upper for a layer
	from  uint64       // CommitLayer: the tx layered on
	c     *consume.Job // Consume only
	work  string       // staging/commit-*
	objs  *cas.Store   // the CAS, staging into work
	st    *CommitStats
	start time.Time

	mu      sync.Mutex // seen, pending, verity and st, during the scan
	seen    map[cas.Key]bool
	pending []stagedObj
	verity  map[cas.Hash]verity.Sum // the scan's fs-verity digests, for the image

	m          *manifest.Manifest
	digest     string
	mkey       cas.Key // the manifest object
	id, parent uint64
	publishing bool   // objects may be under objects/ (publishObjects began)
	final      string // trees/<id>, once placed
	tx         *Tx    // once recorded
	img        imageOutcome
}

// commitPoints are a commit path's failpoints, each at the end of a step;
// nil where the path has no such point.
type commitPoints struct {
	staged, synced, half, published *failpoint.Point
	built, treeSynced, imaged       *failpoint.Point
	placed                          *failpoint.Point
	recorded, finished              *failpoint.Point
}

// stagedObj is an object staged under tmp, to be published as key.
type stagedObj struct {
	tmp string
	key cas.Key
}

func inject(p *failpoint.Point) error {
	if p == nil {
		return nil
	}
	return p.Inject()
}

// newCommitJob starts a job in a fresh directory under staging/.
func (s *Store) newCommitJob(name string, o CommitOptions, fp commitPoints) (*commitJob, error) {
	if err := s.checkEtc(o.Etc); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "commit-")
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return &commitJob{s: s, o: o, fp: fp, name: name, work: work, objs: &cas.Store{Dir: s.objects.Dir, TmpDir: work},
		st: &CommitStats{}, start: time.Now(), seen: map[cas.Key]bool{}, verity: map[cas.Hash]verity.Sum{}}, nil
}

// run takes the job through its steps, stage being the path's own; the tx
// is returned once recorded, even with an error from a later step.
func (j *commitJob) run(stage func() error) (*Tx, error) {
	defer j.close()
	for _, step := range []func() error{stage, j.publishObjects, j.buildTree, j.buildImage, j.placeTree, j.record} {
		if err := step(); err != nil {
			return j.tx, err
		}
	}
	if err := j.finish(); err != nil {
		return j.tx, err
	}
	j.st.Total = time.Since(j.start)
	return j.tx, nil
}

// close undoes what a job that recorded nothing left (the objects that are
// src's own inodes, a consumed src, the placed tree), then removes work;
// work stays while src may still be in it, for the next Open.
func (j *commitJob) close() {
	keepWork := false
	if j.tx == nil {
		if j.c != nil {
			keepWork = j.c.Abandon(j.publishing)
		}
		if j.final != "" && !keepWork {
			layout.RemoveTree(j.final)
		}
	}
	j.objs.Close()
	if !keepWork {
		layout.RemoveTree(j.work)
	}
}

// useManifest makes m (canonical encoding raw) the tx's manifest and
// stages its object unless the CAS has it; the stage step ends here.
func (j *commitJob) useManifest(m *manifest.Manifest, raw []byte) error {
	// A tx whose manifest the store could not load again is refused.
	if len(m.Entries) > manifest.MaxEntries || len(raw) > manifest.MaxSize {
		return fmt.Errorf("commit %s: %w: %d entries, %d bytes (at most %d, %d)",
			j.name, ErrManifestTooLarge, len(m.Entries), len(raw), manifest.MaxEntries, manifest.MaxSize)
	}
	j.m, j.digest = m, manifest.Digest(raw)
	j.st.Entries, j.st.Bytes = m.Stats()
	z, k := ManifestObject(raw)
	j.mkey = k
	has, err := j.objs.Has(k)
	if err == nil && !has {
		var tmp string
		if tmp, err = j.objs.StageBytes(z, k); err == nil {
			j.pending = append(j.pending, stagedObj{tmp, k})
		}
	}
	if err != nil {
		return err
	}
	return inject(j.fp.staged)
}

// publishObjects makes every staged object durable (one syncfs) before
// any of their names appears under objects/.
func (j *commitJob) publishObjects() error {
	if len(j.pending) > 0 {
		if err := cas.Syncfs(j.s.Dir); err != nil {
			return err
		}
	}
	if err := inject(j.fp.synced); err != nil {
		return err
	}
	j.publishing = true
	for i, p := range j.pending {
		if err := j.objs.Publish(p.tmp, p.key); err != nil {
			return err
		}
		if i == len(j.pending)/2 {
			if err := inject(j.fp.half); err != nil {
				return err
			}
		}
	}
	j.st.Store = time.Since(j.start) - j.st.Scan
	return inject(j.fp.published)
}

// buildTree makes the tree at work/tree/usr under a new id: the consumed
// src adopted, else blitted from the CAS; and work/tree/etc (o.Etc).
func (j *commitJob) buildTree() error {
	var err error
	// Under the writer lock (held since Open) the id stays free; the
	// consume journal names it before src moves.
	if j.id, j.parent, err = j.s.nextID(); err != nil {
		return err
	}
	if j.o.Parent != 0 {
		j.parent = j.o.Parent
	}
	bt := time.Now()
	root := filepath.Join(j.work, "tree")
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if j.c != nil {
		if j.st.Adopted, err = j.c.Take(j.id, j.digest, j.m, root); err != nil {
			return fmt.Errorf("commit %s: %w", j.name, err)
		}
	}
	if !j.st.Adopted {
		if j.st.Blit, err = blit.Blit(j.m, j.s.objects, filepath.Join(root, "usr"), j.s.opts.Workers); err != nil {
			return fmt.Errorf("commit %s: %w", j.name, err)
		}
		if j.c != nil {
			if err := j.c.CheckUnchanged(j.m); err != nil {
				return fmt.Errorf("commit %s: %w", j.name, err)
			}
		}
	}
	j.st.BlitTime = time.Since(bt)
	if err := j.placeEtc(root); err != nil {
		return err
	}
	if err := inject(j.fp.built); err != nil {
		return err
	}
	// Object renames and the whole tree reach the disk in one syncfs.
	if err := cas.Syncfs(j.s.Dir); err != nil {
		return err
	}
	return inject(j.fp.treeSynced)
}

// placeTree renames the synced tree to trees/<id>.
func (j *commitJob) placeTree() error {
	final, err := j.s.publishTree(filepath.Join(j.work, "tree"), j.id)
	j.final = final // renamed, even if the fsync failed
	if j.c != nil && final != "" {
		j.c.Placed(final)
	}
	if err != nil {
		return err
	}
	return inject(j.fp.placed)
}

// record writes the tx record, the commit's last step.
func (j *commitJob) record() error {
	now := time.Now().UTC()
	o := j.o
	t := &Tx{ID: j.id, Digest: j.digest, Parent: j.parent, Created: now, Updated: now,
		Summary: o.Summary, Kernels: j.m.Kernels(), Entries: j.st.Entries, Bytes: j.st.Bytes,
		Manifest: j.mkey.Hash.String(), Boot: bootstate.New(o.Tries),
		Signatures: o.Signatures, Version: o.Version, Origin: o.Origin, PkgChanges: o.PkgChanges, Made: o.Made}
	if o.Sign != nil {
		t.Signatures = append(slices.Clip(t.Signatures), o.Sign(j.digest)...)
	}
	j.img.apply(t, o)
	if err := j.s.record(t, o.NoDefault, Event{Kind: "commit", TxID: j.id, Detail: j.eventDetail()}); err != nil {
		return fmt.Errorf("commit: record tx %d: %w", j.id, err)
	}
	j.tx = t
	// From here the tx exists: an injected error is reported with it.
	return inject(j.fp.recorded)
}

// eventDetail says what the commit event logs of the new tx.
func (j *commitJob) eventDetail() string {
	what := fmt.Sprintf("%d new objects", j.st.NewObjects)
	switch {
	case j.from != 0:
		what = fmt.Sprintf("layered on tx %d, %d new objects", j.from, j.st.NewObjects)
	case j.src == "" && j.o.Origin != "":
		what = "pulled from " + j.o.Origin
	case j.src == "":
		what = "from a manifest"
	}
	return fmt.Sprintf("%s, %d entries, %s", j.digest, j.st.Entries, what)
}

// finish gives up a consumed src once the tx is recorded; a failure there
// is the stats' ConsumeErr, not the commit's.
func (j *commitJob) finish() error {
	if j.c == nil {
		return nil
	}
	j.st.ConsumeErr = j.c.Finish(j.id, j.st.Adopted, layout.RemoveTree)
	return inject(j.fp.finished)
}

// noteVerity is the scan's OnVerity: the image step takes each file's
// fs-verity digest from here instead of reading its object again.
func (j *commitJob) noteVerity(e *manifest.Entry, sum verity.Sum) {
	if e.Size == 0 {
		return
	}
	j.mu.Lock()
	j.verity[e.Hash] = sum
	j.mu.Unlock()
}

// stageFile is the scan's OnFile: it stages the object of a file unless
// the CAS or this commit has it; consuming, by hardlink when it can.
func (j *commitJob) stageFile(e *manifest.Entry, path string, fst *unix.Stat_t) error {
	linked, err := j.stageObject(e, path, fst)
	if err == nil && j.c != nil {
		j.c.ScannedFile(e, fst, linked)
	}
	return err
}

func (j *commitJob) stageObject(e *manifest.Entry, path string, fst *unix.Stat_t) (linked bool, err error) {
	if e.Size == 0 {
		return false, nil
	}
	k := e.Key()
	if fresh, err := j.claim(k); !fresh || err != nil {
		return false, err
	}
	var tmp string
	if j.c != nil {
		tmp, err = j.objs.StageLink(path, k, fst)
		linked = err == nil
		if err != nil && !errors.Is(err, cas.ErrNoLink) {
			return false, err
		}
	}
	if !linked {
		if tmp, err = j.objs.Stage(path, k, fst); err != nil {
			return false, err
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pending = append(j.pending, stagedObj{tmp, k})
	j.st.NewObjects++
	j.st.NewBytes += e.Size
	if linked {
		j.st.Linked++
	}
	return linked, nil
}

// claim counts a file of content k; fresh: neither the CAS nor another
// file of this commit has it, so this one stages it.
func (j *commitJob) claim(k cas.Key) (fresh bool, err error) {
	j.mu.Lock()
	j.st.Files++
	has := j.seen[k]
	j.seen[k] = true
	j.mu.Unlock()
	if !has {
		if has, err = j.objs.Has(k); err != nil {
			return false, err
		}
	}
	if has {
		j.mu.Lock()
		j.st.Deduplicated++
		j.mu.Unlock()
	}
	return !has, nil
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
	if err := layout.RemoveTree(final); err != nil { // unrecorded leftover, if any
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
