package txstore

import (
	"crypto/sha256"
	"errors"
	"fmt"
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
	"github.com/txboot/txboot/txstore/internal/walk"
	"github.com/txboot/txboot/txstore/manifest"
	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// CommitOptions tune Commit.
type CommitOptions struct {
	Summary   string
	Tries     int  // boot tries for the new tx; 0 = bootstate.DefaultTries
	NoDefault bool // do not make the new tx the default
	// Consume gives src to the store: new objects are taken by hardlink
	// instead of copied when src is on the store's filesystem (files with
	// other links are still copied), and src is removed once the tx is
	// recorded, since its files are now the store's objects. A crash
	// before that leaves src in place, some of its files read-only.
	Consume bool
	// Hook, if set, is called between the steps of a commit; tests use it to
	// crash at chosen points.
	Hook func(step string)
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
	zdecOnce sync.Once
	zdec     *zstd.Decoder
)

func encoder() *zstd.Encoder {
	zencOnce.Do(func() {
		zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	})
	return zenc
}

// decoder is one long-lived, single-threaded decoder with bounded memory:
// manifests come from disk, so they are untrusted input.
func decoder() *zstd.Decoder {
	zdecOnce.Do(func() {
		zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(manifest.MaxSize))
	})
	return zdec
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
	if o.Consume {
		if err := s.checkConsumable(src); err != nil {
			return nil, nil, err
		}
	}
	hook := o.Hook
	if hook == nil {
		hook = func(string) {}
	}
	start := time.Now()
	st := &CommitStats{}
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "commit-")
	if err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err)
	}
	defer removeTree(work)
	objs := &cas.Store{Dir: s.objects.Dir, TmpDir: work}
	defer objs.Close() // before removeTree(work): defers run last first

	type staged struct {
		tmp string
		key cas.Key
	}
	var mu sync.Mutex
	seen := map[cas.Key]bool{}
	var pending []staged
	var relink []manifest.Entry // Consume: files in src that are not (yet) their object's inode
	notLinked := func(e *manifest.Entry) {
		if o.Consume {
			mu.Lock()
			relink = append(relink, *e)
			mu.Unlock()
		}
	}
	m, err := manifest.Scan(src, manifest.ScanOptions{Workers: s.opts.Workers, OnFile: func(e *manifest.Entry, path string, fst *unix.Stat_t) error {
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
		linked := false
		var tmp string
		if o.Consume {
			tmp, err = objs.StageLink(path, k, fst)
			linked = err == nil
			if errors.Is(err, cas.ErrNoLink) {
				err = nil
			}
			if err != nil {
				return err
			}
		}
		if !linked {
			notLinked(e)
			if tmp, err = objs.Stage(path, k, fst); err != nil {
				return err
			}
		}
		mu.Lock()
		if linked {
			st.Linked++
		}
		pending = append(pending, staged{tmp, k})
		st.NewObjects++
		st.NewBytes += e.Size
		mu.Unlock()
		return nil
	}})
	if err != nil {
		return nil, nil, fmt.Errorf("commit %s: %w", src, err)
	}
	st.Scan = time.Since(start)
	st.Entries, st.Bytes = m.Stats()
	hook("scanned")

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
	hook("objects-synced")
	for i, p := range pending {
		if err := objs.Publish(p.tmp, p.key); err != nil {
			return nil, nil, err
		}
		if i == len(pending)/2 {
			hook("objects-half-published")
		}
	}
	st.Store = time.Since(start) - st.Scan
	hook("objects-published")

	bt := time.Now()
	treeRoot := filepath.Join(work, "tree")
	if err := os.Mkdir(treeRoot, 0o755); err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err)
	}
	if o.Consume && s.adopt(src, filepath.Join(treeRoot, "usr"), m, relink) {
		st.Adopted = true
	} else if st.Blit, err = blit.Blit(m, s.objects, filepath.Join(treeRoot, "usr"), s.opts.Workers); err != nil {
		return nil, nil, fmt.Errorf("commit %s: %w", src, err)
	}
	st.BlitTime = time.Since(bt)
	hook("blitted")
	// Object renames and the whole tree reach the disk in one syncfs.
	if err := cas.Syncfs(s.Dir); err != nil {
		return nil, nil, err
	}
	hook("tree-synced")

	// Allocate the id under the writer lock; publish the tree, then record it.
	var id, parent uint64
	if err := s.view(func(tx *bbolt.Tx) error {
		_, meta, _, err := buckets(tx)
		if err != nil {
			return err
		}
		id, parent = getU64(meta, keyNext), getU64(meta, keyDefault)
		if id == 0 {
			id = 1
		}
		return nil
	}); err != nil {
		return nil, nil, err
	}
	trees := filepath.Join(s.Dir, "trees")
	final := filepath.Join(trees, strconv.FormatUint(id, 10))
	if err := removeTree(final); err != nil { // unrecorded leftover, if any
		return nil, nil, err
	}
	if err := os.Rename(treeRoot, final); err != nil {
		return nil, nil, fmt.Errorf("commit: publish tree: %w", err)
	}
	if err := cas.FsyncDir(trees); err != nil {
		return nil, nil, err
	}
	hook("tree-published")

	now := time.Now().UTC()
	t := &Tx{ID: id, Digest: digest, Parent: parent, Created: now, Updated: now,
		Summary: o.Summary, Kernels: m.Kernels(), Entries: st.Entries, Bytes: st.Bytes,
		Manifest: mkey.Hash.String(), Boot: bootstate.New(o.Tries)}
	err = s.update(func(tx *bbolt.Tx) error {
		txs, meta, events, err := buckets(tx)
		if err != nil {
			return err
		}
		if txs.Get(u64(id)) != nil {
			return fmt.Errorf("%w: tx %d already recorded", ErrCorrupt, id)
		}
		if err := putTx(txs, t); err != nil {
			return err
		}
		if err := meta.Put(keyNext, u64(id+1)); err != nil {
			return err
		}
		if !o.NoDefault {
			if err := meta.Put(keyDefault, u64(id)); err != nil {
				return err
			}
		}
		return appendEvent(events, Event{Kind: "commit", TxID: id,
			Detail: fmt.Sprintf("%s, %d entries, %d new objects", digest, st.Entries, st.NewObjects)})
	})
	if err != nil {
		removeTree(final)
		return nil, nil, fmt.Errorf("commit: record tx %d: %w", id, err)
	}
	hook("recorded")
	if o.Consume {
		if err := removeTree(src); err != nil {
			st.ConsumeErr = fmt.Errorf("tx %d committed, but %s was not removed: %w", id, src, err)
		}
		hook("source-removed")
	}
	st.Total = time.Since(start)
	return t, st, nil
}

// Manifest loads and checks tx t's manifest: the object must hash to its
// name and the decompressed manifest to the tx digest.
func (s *Store) Manifest(t *Tx) (*manifest.Manifest, error) {
	k, err := manifestKey(t.Manifest)
	if err != nil {
		return nil, err
	}
	z, err := s.objects.ReadAll(k, manifest.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("tx %d manifest: %w", t.ID, err)
	}
	raw, err := decoder().DecodeAll(z, nil)
	if err != nil {
		return nil, fmt.Errorf("tx %d manifest: %w: %v", t.ID, ErrBadManifest, err)
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
		return []Problem{{Path: "manifest", Reason: err.Error()}}, nil
	}
	probs, err := blit.Verify(m, s.objects, s.TreeDir(id), mode == VerifyFull, s.opts.Workers, s.hashed)
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
	if err := cas.FsyncDir(trees); err != nil {
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

// adopt makes src the new tree at dst instead of blitting one (Consume):
// src is renamed to dst, every file in relink (not its object's inode:
// deduplicated, copied, or empty) is replaced by a link to its object or
// given its object's mode, and a fast verify must then find nothing. All
// objects are published by now, so on any failure the adopted tree is
// dropped and the caller blits from the store: false means "blit". The
// verify also catches a src that changed during the commit.
func (s *Store) adopt(src, dst string, m *manifest.Manifest, relink []manifest.Entry) bool {
	if err := os.Rename(src, dst); err != nil {
		return false // another filesystem, say: blit, and remove src later
	}
	fail := func() bool { removeTree(dst); return false }
	rootfd, err := walk.OpenDirAt(unix.AT_FDCWD, dst)
	if err != nil {
		return fail()
	}
	defer unix.Close(rootfd)
	// In path order, so that files of one directory share its fd.
	slices.SortFunc(relink, func(a, b manifest.Entry) int { return strings.Compare(a.Path, b.Path) })
	dirfd, dirPath := -1, ""
	defer func() {
		if dirfd >= 0 {
			unix.Close(dirfd)
		}
	}()
	for i := range relink {
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
			if err != nil {
				return fail()
			}
			dirfd, dirPath = fd, dir
		}
		k := e.Key()
		if e.Size == 0 {
			if setEmptyAttrs(dirfd, base, k) != nil {
				return fail()
			}
			continue
		}
		const tmp = ".txboot-relink"
		unix.Unlinkat(dirfd, tmp, 0)
		if s.objects.Link(k, dirfd, tmp) != nil || unix.Renameat(dirfd, tmp, dirfd, base) != nil {
			return fail()
		}
	}
	probs, err := blit.Verify(m, s.objects, dst, false, s.opts.Workers, nil)
	if err != nil || len(probs) > 0 {
		return fail()
	}
	return true
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

// setEmptyAttrs gives an empty file in the adopted tree its manifest owner
// and mode, through a descriptor: fchmodat would follow a symlink put in
// its place.
func setEmptyAttrs(dirfd int, name string, k cas.Key) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: not a regular file", name)
	}
	if cas.NeedChown(k.UID, k.GID) {
		if err := unix.Fchown(fd, int(k.UID), int(k.GID)); err != nil {
			return err
		}
	}
	return unix.Fchmod(fd, k.Mode)
}
