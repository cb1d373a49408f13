package txstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// ErrMissingObject: CommitManifest was given a manifest naming an object
// the CAS does not hold.
var ErrMissingObject = errors.New("object not in the store")

// Failpoints of CommitManifest (a pull's commit), in order.
var manifestFailpoints = commitPoints{
	staged:     failpoint.New("commit-manifest/objects-checked"),
	published:  failpoint.New("commit-manifest/manifest-published"),
	built:      failpoint.New("commit-manifest/blitted"),
	treeSynced: failpoint.New("commit-manifest/tree-synced"),
	placed:     failpoint.New("commit-manifest/tree-published"),
	recorded:   failpoint.New("commit-manifest/recorded"),
}

// Import brings objects from outside the store (a pull from a repository)
// into the CAS, the way Commit stores a scanned file: staged in the store's
// staging/, made durable by syncfs, then renamed under objects/. Objects
// published before a crash are real, verified objects that no tx may
// reference yet; GC removes them if none ever does. Whatever is still
// staged goes with staging/ at the next writer's Open after the import
// ended.
//
// An Import holds Dir/fetch.lock shared from NewImport to Close, so that
// it can run without the writer lock (OpenFetch): meanwhile no writer's
// Cleanup removes its directory and no GC removes an unreferenced object
// (one it found present or published, which its commit will reference).
//
// The caller checks every file it adds (size and SHA-256) before AddFile:
// Import trusts the content it is handed, as Commit trusts its scan.
// Methods are safe for concurrent use.
type Import struct {
	s       *Store
	work    string
	objs    *cas.Store
	fetchFD int // fetch.lock, shared; -1 once Close released it

	flushMu      sync.Mutex // one Flush at a time; add never waits for it
	mu           sync.Mutex
	pending      []stagedObj
	pendingBytes int64
	published    int
}

// importFlushBytes and importFlushObjects bound what an Import keeps staged
// before it publishes a batch: an interrupted pull keeps most of what it
// fetched, and a re-run fetches only the rest.
const (
	importFlushBytes   = 64 << 20
	importFlushObjects = 512
)

// NewImport starts an import in a fresh directory under staging/. The
// store must be open for writing or for fetching (OpenFetch). It takes
// fetch.lock shared before the directory exists (waiting at most
// Options.Timeout for a running GC or Cleanup), so that no Cleanup sees
// the directory without its lock.
func (s *Store) NewImport() (*Import, error) {
	if !s.fetch {
		if err := s.writable(); err != nil {
			return nil, err
		}
	}
	if err := s.checkDirs("staging", "objects", "trees"); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	fd, err := s.lockFetchShared()
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), importPrefix)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("import: %w", err)
	}
	return &Import{s: s, work: work, fetchFD: fd, objs: &cas.Store{Dir: s.objects.Dir, TmpDir: work}}, nil
}

// Close drops whatever was staged and not published, then releases
// fetch.lock (after the removal: a Cleanup never races it).
func (im *Import) Close() error {
	im.objs.Close()
	err := removeTree(im.work)
	im.mu.Lock()
	if im.fetchFD >= 0 {
		unix.Close(im.fetchFD)
		im.fetchFD = -1
	}
	im.mu.Unlock()
	return err
}

// TempFile creates a file in the import's staging directory for the caller
// to fill (a download), then hand to AddFile or remove.
func (im *Import) TempFile() (*os.File, error) {
	f, err := os.CreateTemp(im.work, "fetch-")
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return f, nil
}

// Has reports whether object k is in the CAS (see cas.Store.Has).
func (im *Import) Has(k cas.Key) (bool, error) { return im.objs.Has(k) }

// Check reports whether object k is in the CAS by one stat (see
// cas.Store.Check): for keys Find named.
func (im *Import) Check(k cas.Key) (bool, error) { return im.objs.Check(k) }

// Find returns the objects in the CAS holding each content of hs, under
// any mode and owner (see cas.Store.Find): a puller skips what the store
// has and copies locally what it has under another key instead of
// fetching. Only canonical names are returned; Check and HashFile check
// the files.
func (im *Import) Find(hs []cas.Hash) (map[cas.Hash][]cas.Key, error) {
	found, err := im.objs.Find(hs)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return found, nil
}

// Present is Find for one content.
func (im *Import) Present(h cas.Hash) ([]cas.Key, error) {
	found, err := im.Find([]cas.Hash{h})
	return found[h], err
}

// AddFile stages path, a file in the import's directory (TempFile) that
// the caller has checked holds content h of size bytes, as each of keys
// (the same content under different modes or owners), and removes path.
// The first key takes path's inode by hardlink when it can; the others
// are copies.
func (im *Import) AddFile(path string, h cas.Hash, size int64, keys []cas.Key) error {
	if rel, err := filepath.Rel(im.work, path); err != nil || strings.Contains(rel, "/") || rel == ".." || rel == "." {
		return fmt.Errorf("%w: import: %s is not in %s", ErrInvalid, path, im.work)
	}
	defer os.Remove(path) // only ever our own temp file
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("import: %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != size {
		return fmt.Errorf("import: %s: not a regular file of %d bytes", path, size)
	}
	var staged []stagedObj
	fail := func(err error) error {
		for _, p := range staged {
			os.Remove(p.tmp)
		}
		return err
	}
	// Copies first, while path still has its own mode (a key's mode may
	// not be readable to us); the first key then takes path's inode.
	for i := len(keys) - 1; i >= 0; i-- {
		k := keys[i]
		if k.Hash != h {
			return fail(fmt.Errorf("%w: import: key %s for content %s", ErrInvalid, k.RelPath(), h))
		}
		var tmp string
		var err error
		if i == 0 {
			tmp, err = im.objs.StageLink(path, k, &st)
			if errors.Is(err, cas.ErrNoLink) {
				tmp, err = im.objs.Stage(path, k, &st)
			}
		} else {
			tmp, err = im.objs.Stage(path, k, &st)
		}
		if err != nil {
			return fail(fmt.Errorf("import object %s: %w", k.RelPath(), err))
		}
		staged = append(staged, stagedObj{tmp, k})
	}
	return im.add(staged, size)
}

// CopyLocal stages the content of the existing object src as each of keys,
// after re-hashing it: an object damaged on disk is not spread further.
// It returns ErrDamaged (or a hash mismatch) when src cannot be used; the
// caller then fetches the content instead.
func (im *Import) CopyLocal(src cas.Key, size int64, keys []cas.Key) error {
	p := im.objs.Path(src)
	h, st, err := cas.HashFile(p)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if h != src.Hash || st.Size != size {
		return fmt.Errorf("%w: object objects/%s: content does not match its name", ErrDamaged, src.RelPath())
	}
	var staged []stagedObj
	for _, k := range keys {
		if k.Hash != src.Hash {
			err = fmt.Errorf("%w: import: key %s for content %s", ErrInvalid, k.RelPath(), src.Hash)
			break
		}
		var tmp string
		if tmp, err = im.objs.Stage(p, k, &st); err != nil {
			err = fmt.Errorf("import object %s from %s: %w", k.RelPath(), src.RelPath(), err)
			break
		}
		staged = append(staged, stagedObj{tmp, k})
	}
	if err != nil {
		for _, s := range staged {
			os.Remove(s.tmp)
		}
		return err
	}
	return im.add(staged, size)
}

// Create starts the object k of size bytes, written by the caller
// straight into the staging area with k's mode and owner (cas.Writer);
// after checking what it wrote, the caller hands it to AddObject, or calls
// Abort. For content the tx links under one key, the common case; content
// under several keys goes through TempFile and AddFile.
func (im *Import) Create(k cas.Key, size int64) (*cas.Writer, error) {
	w, err := im.objs.Create(k, size)
	if err != nil {
		return nil, fmt.Errorf("import object %s: %w", k.RelPath(), err)
	}
	return w, nil
}

// AddObject stages w (from Create), whose content the caller has checked
// hashes to w's key, for the next batch.
func (im *Import) AddObject(w *cas.Writer) error {
	k, size := w.Key(), w.Size()
	tmp, err := w.Finish()
	if err != nil {
		return fmt.Errorf("import object %s: %w", k.RelPath(), err)
	}
	return im.add([]stagedObj{{tmp, k}}, size)
}

// add queues staged objects and publishes a batch once enough is staged.
// The caller that fills a batch flushes it; when a Flush is already under
// way the batch waits for the next add or Flush instead of the caller
// waiting (the bound on what is staged is a target, not a hard limit).
func (im *Import) add(staged []stagedObj, size int64) error {
	im.mu.Lock()
	im.pending = append(im.pending, staged...)
	im.pendingBytes += size * int64(len(staged))
	full := im.pendingBytes >= importFlushBytes || len(im.pending) >= importFlushObjects
	im.mu.Unlock()
	if full && im.flushMu.TryLock() {
		defer im.flushMu.Unlock()
		return im.flushLocked()
	}
	return nil
}

// Flush makes everything staged so far durable (one syncfs) and then
// publishes it under objects/. Objects staged meanwhile go in the next
// batch: the syncfs does not hold up the fetchers.
func (im *Import) Flush() error {
	im.flushMu.Lock()
	defer im.flushMu.Unlock()
	return im.flushLocked()
}

func (im *Import) flushLocked() error {
	im.mu.Lock()
	batch, bytes := im.pending, im.pendingBytes
	im.pending, im.pendingBytes = nil, 0
	im.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	// requeue puts back what was not published (a later Flush retries it,
	// Close removes it).
	requeue := func(rest []stagedObj) {
		im.mu.Lock()
		im.pending = append(rest, im.pending...)
		im.pendingBytes += bytes
		im.mu.Unlock()
	}
	if err := cas.Syncfs(im.s.Dir); err != nil {
		requeue(batch)
		return err
	}
	for i, p := range batch {
		if err := im.objs.Publish(p.tmp, p.key); err != nil {
			requeue(batch[i:])
			return err
		}
		im.mu.Lock()
		im.published++
		im.mu.Unlock()
	}
	return nil
}

// Published is how many objects this import has put under objects/.
func (im *Import) Published() int {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.published
}

// Commit publishes what is staged and commits the tx (CommitManifest).
// The store must hold the writer lock (Open, or OpenFetch and then
// LockWriter: Flush first keeps the syncfs out of the locked part).
func (im *Import) Commit(m *manifest.Manifest, raw []byte, o CommitOptions) (*Tx, error) {
	if err := im.Flush(); err != nil {
		return nil, err
	}
	return im.s.CommitManifest(m, raw, o)
}

// CommitManifest commits a new tx from manifest m, whose canonical
// encoding is raw, when every object m names is already in the CAS (a
// pull put them there). It is Commit after its scan: the manifest object
// (syncfs, rename), the tree blitted in staging, syncfs, renamed into
// trees/<id>, and the record last. m must be raw decoded: the new tx's
// digest is raw's. o.Consume is refused (there is no source directory).
func (s *Store) CommitManifest(m *manifest.Manifest, raw []byte, o CommitOptions) (*Tx, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	if o.Consume {
		return nil, fmt.Errorf("%w: commit from a manifest cannot consume", ErrInvalid)
	}
	digest, err := s.checkManifest(m, raw)
	if err != nil {
		return nil, err
	}
	j, err := s.newCommitJob(digest, o, manifestFailpoints)
	if err != nil {
		return nil, err
	}
	return j.run(func() error { return j.checkObjects(m, raw) })
}

// checkManifest refuses a manifest that is empty or not raw decoded, and
// a store whose directories are damaged; it returns raw's digest.
func (s *Store) checkManifest(m *manifest.Manifest, raw []byte) (string, error) {
	digest := manifest.Digest(raw)
	if len(m.Entries) == 0 {
		return "", fmt.Errorf("commit %s: %w: no entries", digest, ErrBadManifest)
	}
	if enc := m.Encode(); len(enc) != len(raw) || manifest.Digest(enc) != digest {
		return "", fmt.Errorf("commit %s: %w: the manifest is not its encoding", digest, ErrDigest)
	}
	if err := s.checkDirs("staging", "objects", "trees"); err != nil {
		return "", fmt.Errorf("commit %s: %w", digest, err)
	}
	return digest, nil
}

// checkObjects is CommitManifest's stage step: every object m names must
// be in the CAS (a clear error before anything is written); only the
// manifest object is staged.
func (j *commitJob) checkObjects(m *manifest.Manifest, raw []byte) error {
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Type != manifest.File || e.Size == 0 {
			continue
		}
		k := e.Key()
		if j.seen[k] {
			continue
		}
		j.seen[k] = true
		has, err := j.objs.Has(k)
		if err != nil {
			return fmt.Errorf("commit %s: %w", j.name, err)
		}
		if !has {
			return fmt.Errorf("commit %s: %w: objects/%s (for %s)", j.name, ErrMissingObject, k.RelPath(), e.Path)
		}
	}
	return j.useManifest(m, raw)
}
