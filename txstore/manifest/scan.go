package manifest

import (
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/txboot/txboot/txstore/cas"
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
	sc := &scanner{base: dir, opts: opts}
	sc.cond = sync.NewCond(&sc.mu)
	root := &dirRef{fd: rootfd}
	root.refs.Store(1)
	sc.push(job{kind: jobList, d: root, rel: "."})

	results := make([][]Entry, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			results[w] = sc.work()
		}(w)
	}
	wg.Wait()
	if sc.err != nil {
		return nil, sc.err
	}
	n := 1
	for _, r := range results {
		n += len(r)
	}
	entries := make([]Entry, 1, n)
	entries[0] = Entry{Path: ".", Type: Dir, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid}
	for _, r := range results {
		entries = append(entries, r...)
	}
	sortEntries(entries[1:])
	return &Manifest{Entries: entries}, nil
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

// dirRef is an open directory shared by the jobs that use it; the last
// user closes it.
type dirRef struct {
	fd   int
	refs atomic.Int32
}

func (d *dirRef) ref() *dirRef { d.refs.Add(1); return d }

func (d *dirRef) unref() {
	if d.refs.Add(-1) == 0 {
		unix.Close(d.fd)
	}
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
	parent *dirRef // jobOpen: the directory holding name
	name   string  // jobOpen
	d      *dirRef // jobList, jobChunk
	rel    string  // the directory's manifest path ("." for the root)
	ents   []dent  // jobChunk
}

type scanner struct {
	base string
	opts ScanOptions

	mu     sync.Mutex
	cond   *sync.Cond
	stack  []job // LIFO: depth-first keeps few directories open at once
	active int
	err    error
	stop   atomic.Bool // set with err: running jobs give up early
}

func (sc *scanner) push(j job) {
	sc.mu.Lock()
	sc.stack = append(sc.stack, j)
	sc.mu.Unlock()
	sc.cond.Signal()
}

func (sc *scanner) fail(err error) {
	sc.mu.Lock()
	if sc.err == nil {
		sc.err = err
	}
	sc.stop.Store(true)
	sc.mu.Unlock()
	sc.cond.Broadcast()
}

func (sc *scanner) failed() bool { return sc.stop.Load() }

// work runs jobs until none are left (or one failed) and returns the
// entries this worker found.
func (sc *scanner) work() []Entry {
	w := &worker{sc: sc, buf: make([]byte, 4096)}
	for {
		sc.mu.Lock()
		for len(sc.stack) == 0 && sc.active > 0 && sc.err == nil {
			sc.cond.Wait()
		}
		if sc.err != nil || len(sc.stack) == 0 {
			// Drop what is left so every directory gets closed.
			rest := sc.stack
			sc.stack = nil
			sc.mu.Unlock()
			sc.cond.Broadcast()
			for _, j := range rest {
				j.release()
			}
			return w.out
		}
		j := sc.stack[len(sc.stack)-1]
		sc.stack = sc.stack[:len(sc.stack)-1]
		sc.active++
		sc.mu.Unlock()

		if err := w.run(j); err != nil {
			sc.fail(err)
		}

		sc.mu.Lock()
		sc.active--
		idle := sc.active == 0 && len(sc.stack) == 0
		sc.mu.Unlock()
		if idle {
			sc.cond.Broadcast()
		}
	}
}

// release drops the directory references an unrun job holds.
func (j job) release() {
	switch j.kind {
	case jobOpen:
		j.parent.unref()
	case jobList, jobChunk:
		j.d.unref()
	}
}

type worker struct {
	sc  *scanner
	out []Entry
	buf []byte // readlink buffer
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
		fd, err := openDirAt(j.parent.fd, j.name)
		j.parent.unref()
		if err != nil {
			return fmt.Errorf("read dir %s: %w", w.abs(j.rel), err)
		}
		d := &dirRef{fd: fd}
		d.refs.Store(1)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			d.unref()
			return fmt.Errorf("lstat %s: %w", w.abs(j.rel), err)
		}
		if err := checkLen(j.rel); err != nil {
			d.unref()
			return err
		}
		w.out = append(w.out, Entry{Path: j.rel, Type: Dir, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid})
		return w.list(d, j.rel)
	case jobList:
		return w.list(j.d, j.rel)
	default:
		defer j.d.unref()
		return w.entries(j.d, j.rel, j.ents)
	}
}

// list reads directory d (owning one reference to it), shares out all but
// the first chunk of its entries as jobs and handles the first itself.
func (w *worker) list(d *dirRef, rel string) error {
	var ents []dent
	err := cas.ReadDir(d.fd, func(name string, _ uint64, typ uint8) {
		ents = append(ents, dent{name, typ})
	})
	if err != nil {
		d.unref()
		return fmt.Errorf("read dir %s: %w", w.abs(rel), err)
	}
	for len(ents) > chunkSize {
		last := ents[len(ents)-chunkSize:]
		ents = ents[:len(ents)-chunkSize]
		w.sc.push(job{kind: jobChunk, d: d.ref(), rel: rel, ents: last})
	}
	defer d.unref()
	return w.entries(d, rel, ents)
}

// entries handles one chunk of directory d's entries.
func (w *worker) entries(d *dirRef, rel string, ents []dent) error {
	for _, de := range ents {
		if w.sc.failed() {
			return nil
		}
		p := join(rel, de.name)
		if err := checkLen(p); err != nil {
			return err
		}
		switch de.typ {
		case unix.DT_DIR:
			w.sc.push(job{kind: jobOpen, parent: d.ref(), name: de.name, rel: p})
		case unix.DT_REG:
			if err := w.file(d.fd, de.name, p); err != nil {
				return err
			}
		default: // symlinks, and anything else or unknown: lstat first
			var st unix.Stat_t
			if err := unix.Fstatat(d.fd, de.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("lstat %s: %w", w.abs(p), err)
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				w.sc.push(job{kind: jobOpen, parent: d.ref(), name: de.name, rel: p})
			case unix.S_IFREG:
				if err := w.file(d.fd, de.name, p); err != nil {
					return err
				}
			case unix.S_IFLNK:
				t, err := w.readlink(d.fd, de.name)
				if err != nil {
					return fmt.Errorf("readlink %s: %w", w.abs(p), err)
				}
				w.out = append(w.out, Entry{Path: p, Type: Symlink, UID: st.Uid, GID: st.Gid, Target: t})
			default:
				return unsupported(w.abs(p), st.Mode)
			}
		}
	}
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
	h, err := cas.HashFD(fd, st.Size)
	if err != nil {
		return fmt.Errorf("read %s: %w", w.abs(p), err)
	}
	e := Entry{Path: p, Type: File, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid, Size: st.Size, Hash: h}
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

func openDirAt(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}
