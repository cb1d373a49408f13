package repo

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/safefs"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/sign"
	"golang.org/x/sys/unix"
)

// Sentinel errors of Publish, for errors.Is.
var (
	// ErrLocked: another publish holds the repository's lock.
	ErrLocked = errors.New("repository is locked by another publish")
	// ErrSigned: the repository has an index.sig, so changing its index
	// without a key would leave it unverifiable.
	ErrSigned = errors.New("repository index is signed: publish with --key")
	// ErrDamaged: something in the repository is not what the format says
	// (a symlink where a directory belongs, an object of the wrong size).
	// It is left alone, never followed or removed.
	ErrDamaged = errors.New("repository damaged")
	// ErrImageConflict: the index already pins another image digest for
	// a tx than the publishing store's record.
	ErrImageConflict = errors.New("image digest differs from the index's")
)

// LockName is the flock(2) file a publish holds in the repository
// directory; it is not part of what readers fetch.
const LockName = ".lock"

// tmpPrefix starts every temp file; a later publish removes them.
const tmpPrefix = ".tmp-"

// Compression rule of the format: only objects of at least minCompress
// bytes are tried, and a .zst is kept only if it saves at least 1/8.
const minCompress = 512

func keepZst(stored, size int64) bool { return 8*stored <= 7*size }

// smallObject: objects up to this size are read whole into a pooled buffer
// and compressed with EncodeAll; bigger ones are streamed.
const smallObject = 256 << 10

// Failpoints of Publish, in order (TestPublishCrash crashes at each).
var (
	fpObjectsHalf      = failpoint.New("publish/objects-half")
	fpObjectsWritten   = failpoint.New("publish/objects-written")
	fpObjectsSynced    = failpoint.New("publish/objects-synced")
	fpManifestsWritten = failpoint.New("publish/manifests-written")
	fpRecorded         = failpoint.New("publish/recorded")
	fpSigWritten       = failpoint.New("publish/sig-written")
	fpIndexWritten     = failpoint.New("publish/index-written")
)

// PublishOptions tune Publish.
type PublishOptions struct {
	// Key signs the index, every published tx's digest and its image
	// (when the tx has one); the tx and image signatures are also added
	// to the local record (the store must then be open for writing).
	Key ed25519.PrivateKey
	// Version overrides the index version of every tx published (default:
	// the tx's summary, else "tx-<id>").
	Version string
	Workers int              // parallel object writers; 0 = 2×GOMAXPROCS
	Timeout time.Duration    // waiting for the repository lock; 0 = txstore.DefaultTimeout
	Now     func() time.Time // index "updated"; nil = time.Now
	// Expires: how long the new index stays valid (default
	// DefaultExpires). Every publish writes a new index with a new
	// expiry and the next sequence number, so a publish that adds
	// nothing refreshes a repository (a cron job keeps it fresh).
	Expires time.Duration
}

// PublishedTx is one tx Publish was asked for.
type PublishedTx struct {
	ID      uint64 `json:"id"`
	Digest  string `json:"digest"`
	Version string `json:"version"`
	New     bool   `json:"new"`    // false: the index already had it
	Signed  bool   `json:"signed"` // a signature was added to its entry
	// Image: the image digest its entry pins ("": none); ImageSigned: an
	// image signature was added to the entry.
	Image       string `json:"image,omitempty"`
	ImageSigned bool   `json:"image_signed"`
	Objects     int    `json:"objects"` // distinct objects it uses (new txs only)
	Stored      int64  `json:"stored"`  // its index "stored"
	Delta       bool   `json:"delta"`   // a manifest delta against its parent was written
}

// PublishStats say what Publish did.
type PublishStats struct {
	Repo           string        `json:"repo"`
	Txs            []PublishedTx `json:"txs"`
	NewObjects     int           `json:"new_objects"`
	SkippedObjects int           `json:"skipped_objects"` // already in the repo
	BytesWritten   int64         `json:"bytes_written"`   // objects, manifests, tables, index as stored
	BytesSkipped   int64         `json:"bytes_skipped"`   // stored size of the skipped objects
	IndexWritten   bool          `json:"index_written"`   // false: nothing changed
	IndexSigned    bool          `json:"index_signed"`
	Sequence       uint64        `json:"sequence"` // of the index written
	Expires        time.Time     `json:"expires"`  // of the index written
	Duration       time.Duration `json:"duration_ns"`
}

// rdir is an open directory of the repository.
type rdir struct {
	fd   int
	path string
}

func (d rdir) join(name string) string { return filepath.Join(d.path, name) }

// openSub opens (creating it if needed) the directory name in d without
// following a symlink.
func openSub(d rdir, name string) (rdir, error) {
	p := d.join(name)
	err := unix.Mkdirat(d.fd, name, 0o755)
	if err != nil && err != unix.EEXIST {
		return rdir{-1, p}, fmt.Errorf("mkdir %s: %w", p, err)
	}
	made := err == nil
	fd, err := safefs.OpenDir(d.fd, name)
	if err != nil {
		if safefs.IsNotDir(err) {
			return rdir{-1, p}, fmt.Errorf("%w: %s is %s, not a directory (left alone)", ErrDamaged, p, safefs.Describe(d.fd, name))
		}
		return rdir{-1, p}, fmt.Errorf("open %s: %w", p, err)
	}
	if made { // served as it is: readable whatever the umask
		if err := unix.Fchmod(fd, 0o755); err != nil {
			unix.Close(fd)
			return rdir{-1, p}, fmt.Errorf("chmod %s: %w", p, err)
		}
	}
	return rdir{fd, p}, nil
}

// cleanTemps removes stale temp files of an interrupted publish from d and
// returns every other name (with its d_type).
func cleanTemps(d rdir) ([]safefs.Entry, error) {
	ents, err := safefs.List(d.fd)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.path, err)
	}
	out := ents[:0]
	for _, e := range ents {
		if !strings.HasPrefix(e.Name, tmpPrefix) {
			out = append(out, e)
			continue
		}
		if safefs.TypeOf(d.fd, e) == unix.DT_DIR {
			continue // not ours: we only ever make files
		}
		if err := unix.Unlinkat(d.fd, e.Name, 0); err != nil && err != unix.ENOENT {
			return nil, fmt.Errorf("remove %s: %w", d.join(e.Name), err)
		}
	}
	return out, nil
}

func tempName() string {
	var b [8]byte
	rand.Read(b[:])
	return tmpPrefix + hex.EncodeToString(b[:])
}

// createTemp makes a new temp file in d.
func createTemp(d rdir) (*os.File, string, error) {
	for {
		name := tempName()
		fd, err := unix.Openat(d.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == unix.EEXIST || err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("create temp file in %s: %w", d.path, err)
		}
		// A web server must read it whatever the umask.
		if err := unix.Fchmod(fd, 0o644); err != nil {
			unix.Close(fd)
			unix.Unlinkat(d.fd, name, 0)
			return nil, "", fmt.Errorf("chmod %s: %w", d.join(name), err)
		}
		return os.NewFile(uintptr(fd), d.join(name)), name, nil
	}
}

// writeFile puts data at d/name: temp file, fsync when durable, rename.
// The caller fsyncs d.
func writeFile(d rdir, name string, data []byte, durable bool) error {
	f, tmp, err := createTemp(d)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(d.fd, tmp, d.fd, name)
	}
	if err != nil {
		unix.Unlinkat(d.fd, tmp, 0)
		return fmt.Errorf("write %s: %w", d.join(name), err)
	}
	return nil
}

// readSmall reads d/name (not following a symlink), at most max bytes.
// A missing file is (nil, nil).
func readSmall(d rdir, name string, max int64) ([]byte, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		return nil, nil
	}
	if err == unix.ELOOP {
		return nil, fmt.Errorf("%w: %s is a symlink (left alone)", ErrDamaged, d.join(name))
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", d.join(name), err)
	}
	f := os.NewFile(uintptr(fd), d.join(name))
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file (left alone)", ErrDamaged, d.join(name))
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.join(name), err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrDamaged, d.join(name), max)
	}
	return []byte(data), nil
}

// lockRepo takes the repository's flock, waiting up to timeout.
func lockRepo(d rdir, timeout time.Duration) (int, error) {
	fd, err := unix.Openat(d.fd, LockName, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", d.join(LockName), err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return fd, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			unix.Close(fd)
			return -1, fmt.Errorf("lock %s: %w", d.join(LockName), err)
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %w (waited %s)", d.path, ErrLocked, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// repo is an open, locked repository.
type repo struct {
	root, objects, manifests, txs rdir
	deltas                        rdir
	lockFD                        int
	fans                          [256]rdir
	names                         [256]map[string]bool // listing of each opened fan-out directory
}

func (r *repo) close() {
	for _, d := range append(r.fans[:], r.root, r.objects, r.manifests, r.txs, r.deltas) {
		if d.fd >= 0 {
			unix.Close(d.fd)
		}
	}
	if r.lockFD >= 0 {
		unix.Close(r.lockFD)
	}
}

// openRepo opens or creates the repository at dir and takes its lock. A
// directory with other files and no config is refused: publish never
// writes into something that is not a repository.
func openRepo(dir string, timeout time.Duration) (_ *repo, err error) {
	r := &repo{lockFD: -1}
	for i := range r.fans {
		r.fans[i].fd = -1
	}
	r.root.fd, r.objects.fd, r.manifests.fd, r.txs.fd, r.deltas.fd = -1, -1, -1, -1, -1
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if err := os.Mkdir(dir, 0o755); err == nil {
		if err := os.Chmod(dir, 0o755); err != nil { // served: not narrowed by the umask
			return nil, fmt.Errorf("repository %s: %w", dir, err)
		}
	} else if !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	r.root = rdir{fd, dir}
	// Refuse a directory that is not a repository before creating the
	// lock file in it, then look again under the lock.
	if err := checkRepoDir(r.root); err != nil {
		return nil, err
	}
	if r.lockFD, err = lockRepo(r.root, timeout); err != nil {
		return nil, err
	}
	if err := checkRepoDir(r.root); err != nil {
		return nil, err
	}
	if _, err := cleanTemps(r.root); err != nil {
		return nil, err
	}
	cfg, err := readSmall(r.root, ConfigPath, 4096)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		if err := writeFile(r.root, ConfigPath, []byte(ConfigMarker), true); err != nil {
			return nil, err
		}
		if err := fsx.SyncDirFd(r.root.fd, r.root.path); err != nil {
			return nil, err
		}
	}
	for _, s := range []struct {
		d    *rdir
		name string
	}{{&r.objects, "objects"}, {&r.manifests, "manifests"}, {&r.txs, "txs"}, {&r.deltas, "deltas"}} {
		if *s.d, err = openSub(r.root, s.name); err != nil {
			return nil, err
		}
	}
	if _, err := cleanTemps(r.manifests); err != nil {
		return nil, err
	}
	// Every fan-out directory is listed (and cleaned of stale temp files)
	// up front: a re-run after a crash removes them even when it has no
	// object to write there.
	objEnts, err := cleanTemps(r.objects)
	if err != nil {
		return nil, err
	}
	for _, e := range objEnts {
		if b, err := hex.DecodeString(e.Name); err == nil && len(b) == 1 && hex.EncodeToString(b) == e.Name {
			if err := r.openFan(b[0]); err != nil {
				return nil, err
			}
		}
	}
	if _, err := cleanTemps(r.txs); err != nil {
		return nil, err
	}
	if _, err := cleanTemps(r.deltas); err != nil {
		return nil, err
	}
	return r, nil
}

// checkRepoDir accepts a repository (its config is the marker) or a
// directory holding nothing but a lock and temp files of ours.
func checkRepoDir(d rdir) error {
	cfg, err := readSmall(d, ConfigPath, 4096)
	if err != nil {
		return err
	}
	if cfg != nil {
		if err := ParseConfig(cfg); err != nil {
			return fmt.Errorf("repository %s: %w", d.path, err)
		}
		return nil
	}
	ents, err := safefs.List(d.fd)
	if err != nil {
		return fmt.Errorf("list %s: %w", d.path, err)
	}
	for _, e := range ents {
		if e.Name != LockName && !strings.HasPrefix(e.Name, tmpPrefix) {
			return fmt.Errorf("repository %s: %w: not empty and no %s file (found %q); publish into a new directory", d.path, ErrNotRepo, ConfigPath, e.Name)
		}
	}
	return nil
}

// openFan opens objects/<ab> (creating it) and lists it once, removing
// stale temp files.
func (r *repo) openFan(b byte) error {
	if r.fans[b].fd >= 0 {
		return nil
	}
	d, err := openSub(r.objects, hex.EncodeToString([]byte{b}))
	if err != nil {
		return err
	}
	r.fans[b] = d
	ents, err := cleanTemps(d)
	if err != nil {
		return err
	}
	r.names[b] = make(map[string]bool, len(ents))
	for _, e := range ents {
		r.names[b][e.Name] = true
	}
	return nil
}

// objJob is one distinct content to put in the repository.
type objJob struct {
	key  cas.Key // a local object with that content
	size int64
	out  TableEntry
	new  bool
}

// worker holds one goroutine's compressor and buffers (bounded memory:
// big objects are streamed, never read whole).
type worker struct {
	enc  *zstd.Encoder
	buf  []byte
	zbuf []byte
	h    hash.Hash
}

func newWorker() *worker {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	return &worker{enc: enc, buf: make([]byte, smallObject), h: sha256.New()}
}

// existing fills j.out from an object already in the repository.
func (r *repo) existing(j *objJob, fan rdir, name string, compressed bool) error {
	var st unix.Stat_t
	if err := unix.Fstatat(fan.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat %s: %w", fan.join(name), err)
	}
	j.out.Compressed, j.out.Stored = compressed, st.Size
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: %s is %s (left alone; remove it and publish again)", ErrDamaged, fan.join(name), safefs.Describe(fan.fd, name))
	}
	if err := checkEntry(j.out); err != nil {
		return fmt.Errorf("%w: %s: %w (remove it and publish again)", ErrDamaged, fan.join(name), err)
	}
	return nil
}

// put makes sure object j is in the repository: skipped by name when
// there, else written to a temp file (compressed when the format says so),
// checked against its hash, and renamed into place (durable later, by one
// syncfs).
func (r *repo) put(objs *cas.Store, w *worker, j *objJob) error {
	b := j.key.Hash[0]
	fan := r.fans[b]
	hx := j.out.Hash
	j.out.Size = j.size
	if r.names[b][hx] {
		return r.existing(j, fan, hx, false)
	}
	if r.names[b][hx+".zst"] {
		return r.existing(j, fan, hx+".zst", true)
	}
	j.new = true
	local := "objects/" + j.key.RelPath()
	fd, err := objs.Open(j.key)
	if err != nil {
		return fmt.Errorf("open local object %s: %w", local, err)
	}
	src := os.NewFile(uintptr(fd), objs.Path(j.key))
	defer src.Close()
	if st, err := src.Stat(); err != nil || st.Size() != j.size || !st.Mode().IsRegular() {
		return fmt.Errorf("local object %s: %w: not a regular file of %d bytes (run bootctl verify)", local, txstore.ErrVerify, j.size)
	}
	tmpf, tmp, err := createTemp(fan)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmpf.Close()
			unix.Unlinkat(fan.fd, tmp, 0)
		}
	}()
	badHash := fmt.Errorf("local object %s: %w: content does not match its hash (run bootctl verify --full)", local, txstore.ErrVerify)
	var stored int64
	compressed := false
	if j.size <= smallObject {
		data := w.buf[:j.size]
		if _, err := io.ReadFull(src, data); err != nil {
			return fmt.Errorf("read local object %s: %w", local, err)
		}
		if sha256.Sum256(data) != j.key.Hash {
			return badHash
		}
		out := data
		if j.size >= minCompress {
			w.zbuf = w.enc.EncodeAll(data, w.zbuf[:0])
			if keepZst(int64(len(w.zbuf)), j.size) {
				out, compressed = w.zbuf, true
			}
		}
		if _, err := tmpf.Write(out); err != nil {
			return fmt.Errorf("write %s: %w", fan.join(tmp), err)
		}
		stored = int64(len(out))
	} else {
		// Stream through the compressor, hashing on the way.
		w.h.Reset()
		cw := &countWriter{w: tmpf}
		w.enc.ResetContentSize(cw, j.size)
		n, err := w.enc.ReadFrom(io.TeeReader(io.LimitReader(src, j.size+1), w.h))
		if cerr := w.enc.Close(); err == nil {
			err = cerr
		}
		w.enc.Reset(nil) // drop the reference to tmpf
		if err != nil {
			return fmt.Errorf("compress local object %s to %s: %w", local, fan.join(tmp), err)
		}
		if n != j.size || !hashIs(w.h, j.key.Hash) {
			return badHash
		}
		stored, compressed = cw.n, true
		if !keepZst(cw.n, j.size) {
			// Not worth it: the raw content instead (copy_file_range when
			// the kernel can).
			if err := tmpf.Truncate(0); err != nil {
				return fmt.Errorf("truncate %s: %w", fan.join(tmp), err)
			}
			if _, err := tmpf.Seek(0, io.SeekStart); err != nil {
				return err
			}
			if _, err := src.Seek(0, io.SeekStart); err != nil {
				return err
			}
			n, err := io.Copy(tmpf, io.LimitReader(src, j.size+1))
			if err != nil {
				return fmt.Errorf("copy local object %s to %s: %w", local, fan.join(tmp), err)
			}
			if n != j.size {
				return badHash
			}
			stored, compressed = n, false
		}
	}
	if err := tmpf.Close(); err != nil {
		return fmt.Errorf("write %s: %w", fan.join(tmp), err)
	}
	j.out.Compressed, j.out.Stored = compressed, stored
	name := hx
	if compressed {
		name += ".zst"
	}
	if err := unix.Renameat(fan.fd, tmp, fan.fd, name); err != nil {
		return fmt.Errorf("rename %s: %w", fan.join(name), err)
	}
	ok = true
	return nil
}

func hashIs(h hash.Hash, want cas.Hash) bool {
	var got cas.Hash
	h.Sum(got[:0])
	return got == want
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// newTx is one tx being published.
type newTx struct {
	t     *txstore.Tx
	entry *IndexTx
	m     *manifest.Manifest // nil when the index already has it
	pub   *PublishedTx
	// parent: the local parent tx, whose manifest a delta is made against.
	parent *txstore.Tx
}

// mergeSigs adds to dst the signatures of add whose key is not in dst yet,
// and reports whether it added any.
func mergeSigs(dst *[]sign.Signature, add []sign.Signature) bool {
	added := false
	for _, s := range add {
		if !slices.ContainsFunc(*dst, func(o sign.Signature) bool { return o.KeyID == s.KeyID }) {
			*dst = append(*dst, s)
			added = true
		}
	}
	return added
}

// Publish writes the txs ids of s into the static repository at dir
// (created when missing), in the order of the format: objects (temp +
// rename, existing ones skipped by name), one syncfs, manifests and object
// tables (fsynced), index.sig, and index.json last. A crash at any point
// leaves the old index describing a complete repository, and running
// Publish again completes the work.
func Publish(s *txstore.Store, dir string, ids []uint64, o PublishOptions) (*PublishStats, error) {
	start := time.Now()
	o, err := o.withDefaults(ids)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	r, err := openRepo(dir, o.Timeout)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	defer r.close()
	old, err := r.readIndex()
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	// Records first: everything is checked before anything is written.
	txs, err := planTxs(s, old.ix, ids, o)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	// Every publish writes a new index (the next sequence number, a new
	// expiry), which a signed repository needs signed.
	if o.Key == nil && old.sigData != nil {
		return nil, fmt.Errorf("publish: %s: %w (or remove %s to publish unsigned)", dir, ErrSigned, SigPath)
	}
	st := &PublishStats{Repo: dir}
	byHash, err := r.writeObjects(s, txs, o.Workers, st)
	if err == nil {
		err = r.writeMetadata(s, old.ix, txs, byHash, st)
	}
	if err == nil {
		err = recordSignatures(s, txs, o.Key, dir)
	}
	if err == nil {
		err = r.writeIndex(old, o, st)
	}
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	for _, n := range txs {
		st.Txs = append(st.Txs, *n.pub)
	}
	st.Duration = time.Since(start)
	return st, nil
}

func (o PublishOptions) withDefaults(ids []uint64) (PublishOptions, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout <= 0 {
		o.Timeout = txstore.DefaultTimeout
	}
	if o.Workers <= 0 {
		o.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if len(ids) == 0 {
		return o, fmt.Errorf("%w: no transaction given", txstore.ErrInvalid)
	}
	if o.Version != "" {
		if err := checkText("version", o.Version); err != nil {
			return o, fmt.Errorf("%w: --version: %w", txstore.ErrInvalid, err)
		}
	}
	return o, nil
}

// oldIndex is the repository's index as publish found it (an empty one of
// format 2 in a new repository), format-1 entries already pinned.
type oldIndex struct {
	ix      *Index
	data    []byte // nil: none yet
	sigData []byte // nil: unsigned
	sigs    []sign.Signature
}

func (r *repo) readIndex() (*oldIndex, error) {
	data, err := readSmall(r.root, IndexPath, MaxIndexSize)
	if err != nil {
		return nil, err
	}
	old := &oldIndex{ix: &Index{Format: FormatVersion}, data: data}
	if data != nil {
		if old.ix, err = ParseIndex(data); err != nil {
			return nil, fmt.Errorf("%s: %w", r.root.join(IndexPath), err)
		}
		if err := r.pinAll(old.ix); err != nil {
			return nil, err
		}
	}
	if old.sigData, err = readSmall(r.root, SigPath, MaxIndexSize); err != nil {
		return nil, err
	}
	if old.sigData != nil {
		if old.sigs, err = ParseSig(old.sigData); err != nil {
			return nil, fmt.Errorf("%s: %w", r.root.join(SigPath), err)
		}
	}
	return old, nil
}

// planTxs reads the records of ids and makes their index entries: an
// existing entry gains the new signatures; a new one is made from the
// record (its manifest loaded, to be written) and pinned later. Nothing
// is written.
func planTxs(s *txstore.Store, ix *Index, ids []uint64, o PublishOptions) ([]*newTx, error) {
	var txs []*newTx
	seen := map[string]bool{}
	for _, id := range ids {
		t, err := s.Get(id)
		if err != nil {
			return nil, err
		}
		if seen[t.Digest] {
			continue // two records of one tree: it is published once
		}
		seen[t.Digest] = true
		n := &newTx{t: t, pub: &PublishedTx{ID: id, Digest: t.Digest}}
		var sigs []sign.Signature
		if o.Key != nil {
			sigs = append(sigs, sign.SignTx(o.Key, t.Digest))
		}
		sigs = append(sigs, t.Signatures...)
		if e := ix.Find(t.Digest); e != nil {
			n.entry = e
		} else if n.entry, n.parent, err = newEntry(s, t, o.Version); err != nil {
			return nil, err
		} else if n.m, err = s.Manifest(t); err != nil {
			return nil, err
		} else {
			n.pub.New = true
		}
		n.pub.Signed = mergeSigs(&n.entry.Signatures, sigs)
		if err := checkSigs(n.entry.Signatures); err != nil {
			return nil, fmt.Errorf("tx %d: %w", id, err)
		}
		if err := entryImage(n, o.Key); err != nil {
			return nil, err
		}
		n.pub.Version = n.entry.Version
		txs = append(txs, n)
	}
	return txs, nil
}

// entryImage gives n's entry the record's image digest and image
// signatures (with key's, when given), as the entry's tx signatures are
// given above. An entry that pins another image is refused: the image is
// a function of the manifest, so two digests for one tx mean two builders
// disagree, and devices would refuse one of them.
func entryImage(n *newTx, key ed25519.PrivateKey) error {
	t, e := n.t, n.entry
	if t.Image == "" {
		return nil
	}
	if e.Image != "" && e.Image != t.Image {
		return fmt.Errorf("tx %d %s: %w: the index pins image %s, the record %s", t.ID, t.Digest, ErrImageConflict, e.Image, t.Image)
	}
	e.Image, n.pub.Image = t.Image, t.Image
	var sigs []sign.Signature
	if key != nil {
		sigs = append(sigs, sign.SignImage(key, t.Digest, t.Image))
	}
	n.pub.ImageSigned = mergeSigs(&e.ImageSignatures, append(sigs, t.ImageSignatures...))
	if err := checkSigs(e.ImageSignatures); err != nil {
		return fmt.Errorf("tx %d: image: %w", t.ID, err)
	}
	return nil
}

// newEntry is the index entry of record t (not in the index yet) and its
// local parent, if the store has it.
func newEntry(s *txstore.Store, t *txstore.Tx, version string) (*IndexTx, *txstore.Tx, error) {
	e := &IndexTx{Digest: t.Digest, Version: version, Kernels: t.Kernels,
		Created: t.Created.UTC(), Size: t.Bytes, Entries: t.Entries}
	if e.Version == "" {
		e.Version = t.Summary
		if checkText("version", e.Version) != nil {
			e.Version = fmt.Sprintf("tx-%d", t.ID)
		}
	}
	var parent *txstore.Tx
	if t.Parent != 0 {
		if p, err := s.Get(t.Parent); err == nil && p.Digest != t.Digest {
			e.Parent, parent = p.Digest, p
		} else if err != nil && !errors.Is(err, txstore.ErrNotFound) {
			return nil, nil, err
		}
	}
	if err := checkTx(e, FormatV1); err != nil { // pinned when written
		return nil, nil, fmt.Errorf("tx %d: %w", t.ID, err)
	}
	return e, parent, nil
}

// writeObjects writes every distinct content of the new txs once (ones
// already there skipped by name), then one syncfs. It returns the jobs by
// content hash, with their table lines.
func (r *repo) writeObjects(s *txstore.Store, txs []*newTx, workers int, st *PublishStats) (map[cas.Hash]*objJob, error) {
	var jobs []*objJob
	byHash := map[cas.Hash]*objJob{}
	for _, n := range txs {
		if n.m == nil {
			continue
		}
		for i := range n.m.Entries {
			e := &n.m.Entries[i]
			if e.Type != manifest.File || e.Size == 0 || byHash[e.Hash] != nil {
				continue
			}
			j := &objJob{key: e.Key(), size: e.Size, out: TableEntry{Hash: e.Hash.String()}}
			byHash[e.Hash] = j
			jobs = append(jobs, j)
		}
	}
	for _, j := range jobs {
		if err := r.openFan(j.key.Hash[0]); err != nil {
			return nil, err
		}
	}
	if err := r.putAll(s.Objects(), jobs, workers); err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if j.new {
			st.NewObjects++
			st.BytesWritten += j.out.Stored
		} else {
			st.SkippedObjects++
			st.BytesSkipped += j.out.Stored
		}
	}
	if err := fpObjectsWritten.Inject(); err != nil {
		return nil, err
	}
	if len(jobs) > 0 {
		if err := unix.Syncfs(r.root.fd); err != nil {
			return nil, fmt.Errorf("syncfs %s: %w", r.root.path, err)
		}
	}
	return byHash, fpObjectsSynced.Inject()
}

// writeMetadata writes each new tx's manifest, object table and delta
// (fsynced, then their directories), pins them in its entry and adds the
// entry to ix: each durable before the index names it.
func (r *repo) writeMetadata(s *txstore.Store, ix *Index, txs []*newTx, byHash map[cas.Hash]*objJob, st *PublishStats) error {
	wrote := false
	for _, n := range txs {
		if n.m == nil {
			n.pub.Stored = n.entry.Stored
			continue
		}
		if err := r.writeTxMetadata(s, n, byHash, st); err != nil {
			return err
		}
		ix.Txs = append(ix.Txs, *n.entry)
		wrote = true
	}
	if wrote {
		for _, d := range []rdir{r.manifests, r.txs, r.deltas} {
			if err := fsx.SyncDirFd(d.fd, d.path); err != nil {
				return err
			}
		}
	}
	return fpManifestsWritten.Inject()
}

// writeTxMetadata writes new tx n's manifest, table and delta files.
func (r *repo) writeTxMetadata(s *txstore.Store, n *newTx, byHash map[cas.Hash]*objJob, st *PublishStats) error {
	hx, _ := DigestHex(n.t.Digest) // checked by checkTx
	mtext := n.m.Encode()
	mz := w0().EncodeAll(mtext, nil)
	n.entry.Manifest = NewFileRef(mz, len(mtext))
	mp, _ := ManifestPath(hx)
	if err := writeFile(r.manifests, filepath.Base(mp), mz, true); err != nil {
		return err
	}
	var table []TableEntry
	var stored int64
	used := map[cas.Hash]bool{}
	for i := range n.m.Entries {
		e := &n.m.Entries[i]
		if e.Type != manifest.File || e.Size == 0 || used[e.Hash] {
			continue
		}
		used[e.Hash] = true
		j := byHash[e.Hash]
		table = append(table, j.out)
		stored += j.out.Stored
	}
	text, err := EncodeTable(table)
	if err != nil {
		return fmt.Errorf("tx %d: %w", n.t.ID, err)
	}
	tz := w0().EncodeAll(text, nil)
	n.entry.Table = NewFileRef(tz, len(text))
	tp, _ := TablePath(hx)
	if err := writeFile(r.txs, filepath.Base(tp), tz, true); err != nil {
		return err
	}
	st.BytesWritten += int64(len(mz) + len(tz))
	if n.parent != nil {
		dz, dlen, err := r.writeDelta(s, n, used, byHash)
		if err != nil {
			return fmt.Errorf("tx %d: %w", n.t.ID, err)
		}
		st.BytesWritten += int64(len(dz))
		n.pub.Delta = dz != nil
		if dz != nil {
			n.entry.Delta = NewFileRef(dz, dlen)
		}
	}
	n.entry.Stored, n.pub.Stored, n.pub.Objects = stored, stored, len(table)
	return nil
}

// recordSignatures stores key's signature in each tx's local record (a
// later publish without a key carries it; the boot-time check needs it).
func recordSignatures(s *txstore.Store, txs []*newTx, key ed25519.PrivateKey, dir string) error {
	if key != nil {
		keyID := sign.KeyID(key.Public().(ed25519.PublicKey))
		for _, n := range txs {
			if hasKey(n.t.Signatures, keyID) && (n.t.Image == "" || hasKey(n.t.ImageSignatures, keyID)) {
				continue
			}
			_, err := s.Update(n.t.ID, txstore.Event{Kind: "sign", Detail: "signed by key " + keyID + " (publish " + dir + ")"},
				func(t *txstore.Tx) error {
					signRecord(t, key)
					return nil
				})
			if err != nil {
				return fmt.Errorf("record signature of tx %d: %w", n.t.ID, err)
			}
		}
	}
	return fpRecorded.Inject()
}

func hasKey(sigs []sign.Signature, keyID string) bool {
	return slices.ContainsFunc(sigs, func(g sign.Signature) bool { return g.KeyID == keyID })
}

// signRecord adds key's signatures to record t: over its digest, and over
// its image when it has one (the image it has now, which is what the
// index entry pins unless a seal rebuilt it meanwhile).
func signRecord(t *txstore.Tx, key ed25519.PrivateKey) {
	mergeSigs(&t.Signatures, []sign.Signature{sign.SignTx(key, t.Digest)})
	if t.Image != "" {
		mergeSigs(&t.ImageSignatures, []sign.Signature{sign.SignImage(key, t.Digest, t.Image)})
	}
}

// writeIndex writes the next index: index.sig first (signing the new and
// the old index, so a reader or a crash between the two renames still
// finds a signature for what it sees), then index.json, each durable.
func (r *repo) writeIndex(old *oldIndex, o PublishOptions, st *PublishStats) error {
	ix := old.ix
	if err := nextIndex(ix, o); err != nil {
		return err
	}
	data, err := EncodeIndex(ix)
	if err != nil {
		return err
	}
	if o.Key != nil {
		sigs := []sign.Signature{sign.SignIndex(o.Key, data)}
		if old.data != nil {
			for _, g := range old.sigs {
				if len(sigs) < MaxSignatures {
					if _, err := sign.VerifyIndex(publicKeys(o.Key), old.data, []sign.Signature{g}); err == nil {
						sigs = append(sigs, g)
					}
				}
			}
		}
		sd, err := EncodeSig(sigs)
		if err != nil {
			return err
		}
		if err := r.writeRoot(SigPath, sd); err != nil {
			return err
		}
		st.BytesWritten += int64(len(sd))
		st.IndexSigned = true
		if err := fpSigWritten.Inject(); err != nil {
			return err
		}
	}
	if err := r.writeRoot(IndexPath, data); err != nil {
		return err
	}
	st.BytesWritten += int64(len(data))
	st.IndexWritten, st.Sequence, st.Expires = true, ix.Sequence, ix.Expires
	return fpIndexWritten.Inject()
}

// writeRoot writes a file at the repository's top, durably (fsynced, then
// the directory).
func (r *repo) writeRoot(name string, data []byte) error {
	if err := writeFile(r.root, name, data, true); err != nil {
		return err
	}
	return fsx.SyncDirFd(r.root.fd, r.root.path)
}

func publicKeys(priv ed25519.PrivateKey) []sign.PublicKey {
	pub := priv.Public().(ed25519.PublicKey)
	return []sign.PublicKey{{Key: pub, ID: sign.KeyID(pub), Source: "--key"}}
}

var (
	w0Once sync.Once
	w0Enc  *zstd.Encoder
)

// w0 is the encoder for manifests and tables (one goroutine uses it).
func w0() *zstd.Encoder {
	w0Once.Do(func() {
		w0Enc, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	})
	return w0Enc
}

// putAll runs put over jobs on n goroutines; the first error stops them.
func (r *repo) putAll(objs *cas.Store, jobs []*objJob, n int) error {
	if n > len(jobs) {
		n = len(jobs)
	}
	var next, done atomic.Int64
	var failed atomic.Bool
	half := int64(len(jobs)+1) / 2
	errs := make([]error, n)
	var wg sync.WaitGroup
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			w := newWorker()
			defer w.enc.Close()
			for !failed.Load() {
				i := next.Add(1) - 1
				if i >= int64(len(jobs)) {
					return
				}
				if err := r.put(objs, w, jobs[i]); err != nil {
					errs[g] = err
					failed.Store(true)
					return
				}
				if done.Add(1) == half {
					if err := fpObjectsHalf.Inject(); err != nil {
						errs[g] = err
						failed.Store(true)
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err // the first one: errors stay one line
		}
	}
	return nil
}

// writeDelta writes deltas/<hex>-<parent hex>.zst for new tx n (fsynced;
// the caller fsyncs the directory before the index names n): the manifest
// against its parent's, with the table lines of the contents the parent
// does not use. A parent whose manifest cannot be loaded gets no delta
// (nil, nil): pullers then fetch the whole manifest, as from a repository
// without deltas.
func (r *repo) writeDelta(s *txstore.Store, n *newTx, used map[cas.Hash]bool, byHash map[cas.Hash]*objJob) ([]byte, int, error) {
	pm, err := s.Manifest(n.parent)
	if err != nil {
		return nil, 0, nil
	}
	inParent := map[cas.Hash]bool{}
	for i := range pm.Entries {
		if e := &pm.Entries[i]; e.Type == manifest.File && e.Size > 0 {
			inParent[e.Hash] = true
		}
	}
	var table []TableEntry
	for h := range used {
		if !inParent[h] {
			table = append(table, byHash[h].out)
		}
	}
	text, err := MakeDelta(pm, n.m, table)
	if err != nil {
		return nil, 0, err
	}
	hx, _ := DigestHex(n.t.Digest)
	phx, err := DigestHex(n.parent.Digest)
	if err != nil {
		return nil, 0, err
	}
	dp, _ := DeltaPath(hx, phx)
	dz := w0().EncodeAll(text, nil)
	if err := writeFile(r.deltas, filepath.Base(dp), dz, true); err != nil {
		return nil, 0, err
	}
	return dz, len(text), nil
}
