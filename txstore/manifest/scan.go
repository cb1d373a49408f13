package manifest

import (
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/walk"
	"github.com/txboot/txboot/txstore/internal/xattr"
	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// FileFunc is called once per regular file after it is hashed, from a worker
// goroutine; the commit path uses it to stage new objects while other files
// are still hashing. st is the stat taken before the content was read (a
// fresh pointer per file); during the call, cas.Store.Stage(path, …, st)
// reads from the descriptor the scanner still holds instead of reopening.
type FileFunc func(e *Entry, path string, st *unix.Stat_t) error

// ScanOptions tune Scan.
type ScanOptions struct {
	Workers int      // default 2×GOMAXPROCS: hashing overlaps with I/O
	OnFile  FileFunc // optional
	// OnEntry, if set, sees every entry as it is built (the root too),
	// from worker goroutines, before OnFile: it may change the entry's
	// xattrs (an overlayfs upper directory's reader drops overlayfs' own)
	// or refuse it with an error, which ends the scan.
	OnEntry func(e *Entry) error
	// OnOther, if set, is called for an entry that is not a directory,
	// regular file or symlink (p its manifest path, st its lstat) instead
	// of refusing it; the entry is left out of the manifest. Its error
	// ends the scan. (An overlayfs whiteout is a character device.)
	OnOther func(p string, st *unix.Stat_t) error
	// OnVerity, if set, gets each regular file's fs-verity digest (of the
	// Size bytes its Hash covers, holes read as zeros), computed from the
	// same read as the hash, from worker goroutines after OnEntry and
	// before OnFile: a commit's image needs it, and reading every file
	// again for it cost as much as the scan.
	OnVerity func(e *Entry, sum verity.Sum)
}

// chunkSize is how many entries of one directory a job handles: a huge
// directory is listed once and its entries shared out in chunks.
const chunkSize = 128

// Scan walks dir (which becomes the manifest root ".") and hashes every
// regular file in parallel. Symlinks are recorded, never followed.
//
// The walk is a set of per-directory jobs run by Workers goroutines: a job
// opens its directory relative to its parent's fd, lists it with getdents,
// and handles each entry with syscalls relative to the directory fd
// (regular files: openat, fstat, read, close; symlinks: fstatat,
// readlinkat), hashing each file in the same job as its stat.
func Scan(dir string, opts ScanOptions) (*Manifest, error) {
	workers := opts.Workers
	if workers <= 0 {
		workers = 2 * runtime.GOMAXPROCS(0)
	}
	rootfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOTDIR {
			return nil, fmt.Errorf("scan %s: not a directory", dir)
		}
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(rootfd, &st); err != nil {
		unix.Close(rootfd)
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	rootX, err := readXattrs(rootfd, dir)
	if err != nil {
		unix.Close(rootfd)
		return nil, err
	}
	sc := &scanner{base: dir, opts: opts, sched: walk.NewSched[job]()}
	root := Entry{Path: ".", Type: Dir, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid, Xattrs: rootX}
	if err := sc.onEntry(&root); err != nil {
		unix.Close(rootfd)
		return nil, err
	}
	sc.sched.Push(job{kind: jobList, d: walk.NewDir(rootfd), rel: "."})
	ws := make([]worker, workers)
	for w := range ws {
		ws[w] = worker{sc: sc, buf: make([]byte, 4096)}
		if opts.OnVerity != nil {
			ws[w].vh = verity.NewHasher()
		}
	}
	if err := sc.sched.Run(workers, func(w int, j job) error { return ws[w].run(j) }); err != nil {
		return nil, err
	}
	n := 1
	for _, w := range ws {
		n += len(w.out)
	}
	entries := make([]Entry, 1, n)
	entries[0] = root
	for _, w := range ws {
		entries = append(entries, w.out...)
	}
	sortEntries(entries[1:])
	return &Manifest{Version: 2, Entries: entries}, nil
}

// readXattrs reads the xattrs of open file fd (path, for messages). A
// file without any costs one flistxattr.
func readXattrs(fd int, path string) (string, error) {
	x, err := xattr.FRead(fd)
	if err != nil {
		return "", fmt.Errorf("scan %s: %w", path, err)
	}
	return x, nil
}

// sortEntries sorts bytewise by path (the root is kept apart, first). It
// sorts indexes rather than moving ~100-byte entries around.
func sortEntries(es []Entry) {
	idx := make([]int32, len(es))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(a, b int32) int { return strings.Compare(es[a].Path, es[b].Path) })
	sorted := make([]Entry, len(es))
	for i, j := range idx {
		sorted[i] = es[j]
	}
	copy(es, sorted)
}

type jobKind uint8

const (
	jobOpen  jobKind = iota // open directory name under parent, then list it
	jobList                 // list the already open directory d
	jobChunk                // handle ents of the listed directory d
)

type dent struct {
	name string
	typ  uint8
}

type job struct {
	kind   jobKind
	parent *walk.Dir // jobOpen: the directory holding name
	name   string    // jobOpen
	d      *walk.Dir // jobList, jobChunk
	rel    string    // the directory's manifest path ("." for the root)
	ents   []dent    // jobChunk
}

type scanner struct {
	base  string
	opts  ScanOptions
	sched *walk.Sched[job]
}

func (sc *scanner) onEntry(e *Entry) error {
	if sc.opts.OnEntry == nil {
		return nil
	}
	return sc.opts.OnEntry(e)
}

// Release drops the directory references an unrun job holds.
func (j job) Release() {
	switch j.kind {
	case jobOpen:
		j.parent.Unref()
	case jobList, jobChunk:
		j.d.Unref()
	}
}

type worker struct {
	sc  *scanner
	out []Entry
	buf []byte         // readlink buffer
	vh  *verity.Hasher // with OnVerity: reused for every file
	_   [64]byte       // workers sit side by side in a slice: no shared cache line
}

func (w *worker) abs(rel string) string {
	if rel == "." {
		return w.sc.base
	}
	return filepath.Join(w.sc.base, rel)
}

func join(rel, name string) string {
	if rel == "." {
		return name
	}
	return rel + "/" + name
}

func (w *worker) run(j job) error {
	switch j.kind {
	case jobOpen:
		fd, err := walk.OpenDirAt(j.parent.FD, j.name)
		j.parent.Unref()
		if err != nil {
			return fmt.Errorf("read dir %s: %w", w.abs(j.rel), err)
		}
		d := walk.NewDir(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			d.Unref()
			return fmt.Errorf("lstat %s: %w", w.abs(j.rel), err)
		}
		if err := checkLen(j.rel); err != nil {
			d.Unref()
			return err
		}
		x, err := readXattrs(fd, w.abs(j.rel))
		if err != nil {
			d.Unref()
			return err
		}
		e := Entry{Path: j.rel, Type: Dir, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid, Xattrs: x}
		if err := w.sc.onEntry(&e); err != nil {
			d.Unref()
			return err
		}
		w.out = append(w.out, e)
		return w.list(d, j.rel)
	case jobList:
		return w.list(j.d, j.rel)
	default:
		defer j.d.Unref()
		return w.entries(j.d, j.rel, j.ents)
	}
}

// list reads directory d (owning one reference to it), shares out all but
// the first chunk of its entries as jobs and handles the first itself.
func (w *worker) list(d *walk.Dir, rel string) error {
	var ents []dent
	err := cas.ReadDir(d.FD, func(name string, _ uint64, typ uint8) {
		ents = append(ents, dent{name, typ})
	})
	if err != nil {
		d.Unref()
		return fmt.Errorf("read dir %s: %w", w.abs(rel), err)
	}
	for len(ents) > chunkSize {
		last := ents[len(ents)-chunkSize:]
		ents = ents[:len(ents)-chunkSize]
		w.sc.sched.Push(job{kind: jobChunk, d: d.Ref(), rel: rel, ents: last})
	}
	defer d.Unref()
	return w.entries(d, rel, ents)
}

// entries handles one chunk of directory d's entries.
func (w *worker) entries(d *walk.Dir, rel string, ents []dent) error {
	for _, de := range ents {
		if w.sc.sched.Failed() {
			return nil
		}
		p := join(rel, de.name)
		if err := checkLen(p); err != nil {
			return err
		}
		switch de.typ {
		case unix.DT_DIR:
			w.sc.sched.Push(job{kind: jobOpen, parent: d.Ref(), name: de.name, rel: p})
		case unix.DT_REG:
			if err := w.file(d.FD, de.name, p); err != nil {
				return err
			}
		default: // symlinks, and anything else or unknown: lstat first
			if err := w.other(d, de.name, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// other handles an entry of directory d whose type getdents did not say
// is a directory or regular file: it lstats it first.
func (w *worker) other(d *walk.Dir, name, p string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(d.FD, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("lstat %s: %w", w.abs(p), err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		w.sc.sched.Push(job{kind: jobOpen, parent: d.Ref(), name: name, rel: p})
		return nil
	case unix.S_IFREG:
		return w.file(d.FD, name, p)
	case unix.S_IFLNK:
		return w.symlink(d.FD, name, p, &st)
	}
	if w.sc.opts.OnOther != nil {
		return w.sc.opts.OnOther(p, &st)
	}
	return unsupported(w.abs(p), st.Mode)
}

// symlink records the symlink name of directory dirfd (never followed).
func (w *worker) symlink(dirfd int, name, p string, st *unix.Stat_t) error {
	t, err := w.readlink(dirfd, name)
	if err != nil {
		return fmt.Errorf("readlink %s: %w", w.abs(p), err)
	}
	// A symlink has no descriptor to read xattrs through.
	x, err := xattr.ReadAt(dirfd, name)
	if err == xattr.ErrNoAt {
		x, err = xattr.LRead(w.abs(p))
	}
	if err != nil {
		return fmt.Errorf("scan %s: %w", w.abs(p), err)
	}
	e := Entry{Path: p, Type: Symlink, UID: st.Uid, GID: st.Gid, Target: t, Xattrs: x}
	if err := w.sc.onEntry(&e); err != nil {
		return err
	}
	w.out = append(w.out, e)
	return nil
}

func unsupported(p string, mode uint32) error {
	return fmt.Errorf("%w: %s (mode %o): /usr may hold only directories, regular files and symlinks", ErrUnsupported, p, mode)
}

// file opens, stats and hashes one regular file, then hands it to OnFile
// while the descriptor is still open (lent to cas.Stage).
func (w *worker) file(dirfd int, name, p string) error {
	fd, err := cas.OpenFileAt(dirfd, name)
	if err != nil {
		return fmt.Errorf("open %s: %w", w.abs(p), err)
	}
	defer unix.Close(fd)
	st := new(unix.Stat_t) // one per file: OnFile may key on the pointer
	if err := unix.Fstat(fd, st); err != nil {
		return fmt.Errorf("fstat %s: %w", w.abs(p), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR || st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return fmt.Errorf("%s changed while it was being scanned", w.abs(p))
		}
		return unsupported(w.abs(p), st.Mode)
	}
	h, err := w.hash(fd, st.Size)
	if err != nil {
		return fmt.Errorf("read %s: %w", w.abs(p), err)
	}
	x, err := readXattrs(fd, w.abs(p))
	if err != nil {
		return err
	}
	e := Entry{Path: p, Type: File, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid, Size: st.Size, Hash: h, Xattrs: x}
	if err := w.sc.onEntry(&e); err != nil {
		return err
	}
	if w.vh != nil {
		w.sc.opts.OnVerity(&e, w.vh.Sum())
	}
	if w.sc.opts.OnFile != nil {
		abs := w.abs(p)
		release := cas.LendFD(st, abs, fd)
		err := w.sc.opts.OnFile(&e, abs, st)
		release()
		if err != nil {
			return err
		}
	}
	w.out = append(w.out, e)
	return nil
}

// hash hashes size bytes of fd, and gives them to the worker's verity
// hasher too when OnVerity wants digests.
func (w *worker) hash(fd int, size int64) (cas.Hash, error) {
	if w.vh == nil {
		return cas.HashFD(fd, size)
	}
	w.vh.Reset()
	return cas.HashFDTee(fd, size, w.vh)
}

func (w *worker) readlink(dirfd int, name string) (string, error) {
	for {
		n, err := unix.Readlinkat(dirfd, name, w.buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", err
		}
		if n < len(w.buf) {
			return string(w.buf[:n]), nil
		}
		w.buf = make([]byte, 2*len(w.buf))
	}
}

// checkLen applies CheckPath's length limit; the other rules hold by
// construction (names from getdents are never empty, ".", ".." or
// contain '/' or NUL).
func checkLen(p string) error {
	if len(p) > MaxPathLen {
		return CheckPath(p)
	}
	return nil
}
