package txstore

import (
	"fmt"
	"slices"
	"time"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/internal/consume"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/sign"
	"golang.org/x/sys/unix"
)

// Sentinel errors of Commit, checked with errors.Is.
var (
	// ErrChanged: the source directory changed after it was scanned (a file
	// added, removed or modified). Nothing is recorded and, with Consume,
	// the directory is left (or put back) where it was.
	ErrChanged = consume.ErrChanged
	// ErrHoldsStore: the source directory is the store, lies inside it, or
	// holds it (compared by device and inode). Also an ErrInvalid.
	ErrHoldsStore = fmt.Errorf("%w: the directory holds the store or lies inside it", ErrInvalid)
)

// Failpoints of Commit, in the order a commit reaches them; the consume
// ones (consume.go) come between objects-published and blitted, and
// source-removed only with Consume. TestFailpointCrash crashes at each.
var commitFailpoints = commitPoints{
	staged:     failpoint.New("commit/scanned"),
	synced:     failpoint.New("commit/objects-synced"),
	half:       failpoint.New("commit/objects-half-published"),
	published:  failpoint.New("commit/objects-published"),
	built:      failpoint.New("commit/blitted"),
	treeSynced: failpoint.New("commit/tree-synced"),
	imaged:     failpoint.New("commit/image-built"),
	placed:     failpoint.New("commit/tree-published"),
	recorded:   failpoint.New("commit/recorded"),
	finished:   failpoint.New("commit/source-removed"),
}

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
	// Parent is the new tx's parent in its record; 0 = the default tx
	// when the commit allocates its id. CommitLayer sets it to from.
	Parent uint64
	// Etc, if set, is a directory on the store's filesystem (not a
	// symlink) that the commit moves to trees/<id>/etc beside the tree's
	// usr/ (bootctl run's /etc state, package etcstate): durable with the
	// tree, removed with it, never part of the digest. It is moved while
	// the tree is built: after a failed commit it may be gone (removed
	// with the commit's work), so the caller removes it either way.
	Etc string
	// EtcInherited: Etc is only what tx from already boots with (a run
	// from a tx whose /etc is not the live one, which changed no /etc):
	// by itself it is no change, so CommitLayer still says ErrUnchanged
	// when /usr is unchanged too.
	EtcInherited bool
	// Made goes into the record as given (see Tx): "install", "run".
	Made string
	// PkgChanges go into the record as given (see Tx).
	PkgChanges []PkgChange
	// Image is the fs-verity digest the repository's index gives the
	// tx's sealed image ("" = none): the commit is refused
	// (ErrImageMismatch) when the image built here differs. Not checked
	// when no image could be built here (the record says why).
	Image string
	// ImageSignatures go into the record with the image built here (see
	// Tx): a pull carries the repository's.
	ImageSignatures []sign.Signature
	// SignImage, if set, is called with the new tx's digest and its
	// image's once the image is built; what it returns is added to
	// ImageSignatures (commit --sign: sign.SignImage).
	SignImage func(digest, image string) []sign.Signature
}

// CommitStats describe one commit. For CommitLayer, Files, NewObjects,
// Deduplicated and NewBytes count the upper directory's regular files;
// Entries and Bytes are the whole new tree's.
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
	// Image is the time the sealed image took (objects' fs-verity
	// digests, build, write); ImageSize its bytes (0: none).
	Image     time.Duration
	ImageSize int64
	Total     time.Duration
}

// Commit stores the tree at src as a new transaction: src holds the new
// /usr's contents. Order, each step durable before the next is visible:
// objects (temp, syncfs, rename), manifest, tree (blit in staging, syncfs,
// rename into trees/), and last the tx record (see commitJob). A crash
// anywhere leaves only garbage in staging/, removed by the next writer's
// Open, or a whole tree without a record, which that Open records.
func (s *Store) Commit(src string, o CommitOptions) (*Tx, *CommitStats, error) {
	if err := s.writable(); err != nil {
		return nil, nil, err
	}
	if err := s.checkNotStore(src); err != nil {
		return nil, nil, err
	}
	var c *consume.Job
	if o.Consume {
		var err error
		if c, err = s.newConsumeJob(src); err != nil {
			return nil, nil, err
		}
	}
	j, err := s.newCommitJob(src, o, commitFailpoints)
	if err != nil {
		return nil, nil, err
	}
	j.src, j.c = src, c
	if c != nil {
		c.Work = j.work
	}
	t, err := j.run(j.scan)
	if t == nil {
		return nil, nil, err
	}
	return t, j.st, err
}

// scan is Commit's stage step: src scanned, each new object staged as
// its file is read, then the manifest object.
func (j *commitJob) scan() error {
	m, err := manifest.Scan(j.src, manifest.ScanOptions{Workers: j.s.opts.Workers, OnFile: j.stageFile, OnVerity: j.noteVerity})
	if err != nil {
		return fmt.Errorf("commit: %w", err) // scan errors name the path under src
	}
	j.st.Scan = time.Since(j.start)
	return j.useManifest(m, m.Encode())
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
