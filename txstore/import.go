package txstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/internal/importer"
	"github.com/txboot/txboot/txstore/internal/layout"
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
	imaged:     failpoint.New("commit-manifest/image-built"),
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
// Methods are safe for concurrent use; all but Commit are the embedded
// Importer's (package internal/importer: TempFile, AddFile, CopyLocal,
// Create, AddObject, Has, Check, Find, Present, Flush, Published, Close).
type Import struct {
	*importer.Importer
	s *Store
}

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
	if err := s.layout().CheckAll("staging", "objects", "trees"); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	fd, err := s.lockFetchShared()
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), layout.ImportPrefix)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("import: %w", err)
	}
	return &Import{Importer: importer.New(s.Dir, work, s.objects.Dir, fd, layout.RemoveTree), s: s}, nil
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
	if err := s.layout().CheckAll("staging", "objects", "trees"); err != nil {
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
