// Package importer stages objects brought from outside the store (a pull)
// and publishes them into the CAS in batches: txstore.Import is an
// Importer with the store's commit.
package importer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/storeerr"
	"golang.org/x/sys/unix"
)

// Importer stages objects in its directory under staging/ and publishes
// them in batches (see txstore.Import). Methods are safe for concurrent
// use.
type Importer struct {
	dir     string // the store's directory (one syncfs per batch)
	work    string // staging/import-*
	objs    *cas.Store
	remove  func(dir string) error // removes work, never following a symlink
	fetchFD int                    // fetch.lock, shared; -1 once Close released it

	flushMu      sync.Mutex // one Flush at a time; add never waits for it
	mu           sync.Mutex
	pending      []stagedObj
	pendingBytes int64
	published    int
}

// stagedObj is an object staged under tmp, to be published as key.
type stagedObj struct {
	tmp string
	key cas.Key
}

// New is an Importer staging in work (a fresh directory under the store
// dir's staging/) into the CAS at objectsDir, holding fetch.lock as
// fetchFD until Close, which removes work with remove.
func New(dir, work, objectsDir string, fetchFD int, remove func(string) error) *Importer {
	return &Importer{dir: dir, work: work, fetchFD: fetchFD, remove: remove, objs: &cas.Store{Dir: objectsDir, TmpDir: work}}
}

// flushBytes and flushObjects bound what an Import keeps staged
// before it publishes a batch: an interrupted pull keeps most of what it
// fetched, and a re-run fetches only the rest.
const (
	flushBytes   = 64 << 20
	flushObjects = 512
)

// Close drops whatever was staged and not published, then releases
// fetch.lock (after the removal: a Cleanup never races it).
func (im *Importer) Close() error {
	im.objs.Close()
	err := im.remove(im.work)
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
func (im *Importer) TempFile() (*os.File, error) {
	f, err := os.CreateTemp(im.work, "fetch-")
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return f, nil
}

// Has reports whether object k is in the CAS (see cas.Store.Has).
func (im *Importer) Has(k cas.Key) (bool, error) { return im.objs.Has(k) }

// Check reports whether object k is in the CAS by one stat (see
// cas.Store.Check): for keys Find named.
func (im *Importer) Check(k cas.Key) (bool, error) { return im.objs.Check(k) }

// Find returns the objects in the CAS holding each content of hs, under
// any mode and owner (see cas.Store.Find): a puller skips what the store
// has and copies locally what it has under another key instead of
// fetching. Only canonical names are returned; Check and HashFile check
// the files.
func (im *Importer) Find(hs []cas.Hash) (map[cas.Hash][]cas.Key, error) {
	found, err := im.objs.Find(hs)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return found, nil
}

// Present is Find for one content.
func (im *Importer) Present(h cas.Hash) ([]cas.Key, error) {
	found, err := im.Find([]cas.Hash{h})
	return found[h], err
}

// AddFile stages path, a file in the import's directory (TempFile) that
// the caller has checked holds content h of size bytes, as each of keys
// (the same content under different modes or owners), and removes path.
// The first key takes path's inode by hardlink when it can; the others
// are copies.
func (im *Importer) AddFile(path string, h cas.Hash, size int64, keys []cas.Key) error {
	if rel, err := filepath.Rel(im.work, path); err != nil || strings.Contains(rel, "/") || rel == ".." || rel == "." {
		return fmt.Errorf("%w: import: %s is not in %s", storeerr.ErrInvalid, path, im.work)
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
			return fail(fmt.Errorf("%w: import: key %s for content %s", storeerr.ErrInvalid, k.RelPath(), h))
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
// It returns cas.ErrDamaged (or a hash mismatch) when src cannot be used; the
// caller then fetches the content instead.
func (im *Importer) CopyLocal(src cas.Key, size int64, keys []cas.Key) error {
	p := im.objs.Path(src)
	h, st, err := cas.HashFile(p)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if h != src.Hash || st.Size != size {
		return fmt.Errorf("%w: object objects/%s: content does not match its name", cas.ErrDamaged, src.RelPath())
	}
	var staged []stagedObj
	for _, k := range keys {
		if k.Hash != src.Hash {
			err = fmt.Errorf("%w: import: key %s for content %s", storeerr.ErrInvalid, k.RelPath(), src.Hash)
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
func (im *Importer) Create(k cas.Key, size int64) (*cas.Writer, error) {
	w, err := im.objs.Create(k, size)
	if err != nil {
		return nil, fmt.Errorf("import object %s: %w", k.RelPath(), err)
	}
	return w, nil
}

// AddObject stages w (from Create), whose content the caller has checked
// hashes to w's key, for the next batch.
func (im *Importer) AddObject(w *cas.Writer) error {
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
func (im *Importer) add(staged []stagedObj, size int64) error {
	im.mu.Lock()
	im.pending = append(im.pending, staged...)
	im.pendingBytes += size * int64(len(staged))
	full := im.pendingBytes >= flushBytes || len(im.pending) >= flushObjects
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
func (im *Importer) Flush() error {
	im.flushMu.Lock()
	defer im.flushMu.Unlock()
	return im.flushLocked()
}

func (im *Importer) flushLocked() error {
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
	if err := cas.Syncfs(im.dir); err != nil {
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
func (im *Importer) Published() int {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.published
}
