package blit

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/walk"
	"github.com/txboot/txboot/txstore/internal/xattr"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// Hashed remembers objects whose content re-hashed clean, so that later
// full verifies sharing it (a fallback tx after the one that just failed,
// or every tx in turn) do not read them again. The zero value is ready;
// share one only while nothing can rewrite the objects (one boot, one
// command), since a remembered object is not read again.
type Hashed struct{ m sync.Map }

func (h *Hashed) known(k cas.Key) bool {
	if h == nil {
		return false
	}
	_, ok := h.m.Load(k)
	return ok
}

func (h *Hashed) add(k cas.Key) {
	if h != nil {
		h.m.Store(k, struct{}{})
	}
}

// Problem is one thing wrong with a tree, by path relative to the tree root.
type Problem struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
	// InStore: the damage is in the store's object itself (missing, wrong
	// size or mode, corrupted content), so re-blitting the tree cannot
	// repair it.
	InStore bool `json:"in_store,omitempty"`
}

func (p Problem) String() string { return p.Path + ": " + p.Reason }

// ext4's link limit; an object at it may legitimately have copies.
const maxLinks = 65000

// Verify checks dir against m. Fast (full=false) reads no file content: it
// checks every entry's presence, type, mode, owner, size, symlink target,
// xattrs (exactly, for a v2 manifest; a v1 manifest says nothing about
// them), that each file is a hardlink of its object, and that nothing
// extra is present. Full also re-hashes every distinct object (and any
// copies).
// Problems come back sorted by path; err is only for verify's own failures.
//
// Each directory is listed once (getdents) and merged with its manifest
// children, so a missing or extra entry costs no syscall; every present
// entry costs one fstatat relative to the directory fd, and a file one more
// fstatat relative to its object's fan-out directory fd; for a v2 manifest
// each entry one listxattr more (relative to a directory fd where the
// kernel has listxattrat), and a getxattr per attribute it has.
//
// good, when not nil, skips re-hashing objects it holds and learns the ones
// this call finds clean.
func Verify(m *manifest.Manifest, objs *cas.Store, dir string, full bool, workers int, good *Hashed) ([]Problem, error) {
	return VerifyAt(m, objs, unix.AT_FDCWD, dir, full, workers, good)
}

// VerifyAt is Verify of directory name in dirfd. Like every directory of
// the tree, name is not followed if it is a symlink: that is reported as
// a problem (the store's trees/<id> is opened the same way by the caller).
func VerifyAt(m *manifest.Manifest, objs *cas.Store, dirfd int, name string, full bool, workers int, good *Hashed) ([]Problem, error) {
	dir := name
	if workers <= 0 {
		workers = 2 * runtime.GOMAXPROCS(0)
	}
	ix, err := newIndex(m)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", dir, err)
	}
	v := &verifier{ix: ix, objs: objs, full: full, good: good, sched: walk.NewSched[job](), per: make([]verifyWorker, workers),
		xattrs: m.Version != 1, base: name}
	if dirfd != unix.AT_FDCWD {
		// Before Linux 6.13 (no listxattrat), symlinks, empty files and
		// copies have their xattrs read by path.
		v.base = fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
	}
	var root unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &root, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return []Problem{{Path: ".", Reason: fmt.Sprintf("tree missing: %v", err)}}, nil
	}
	v.treeDev = root.Dev
	w0 := &v.per[0]
	w0.checkDirAttrs(".", &m.Entries[0], &root)
	if root.Mode&unix.S_IFMT == unix.S_IFDIR {
		fd, err := walk.OpenDirAt(dirfd, name)
		if err != nil {
			w0.add(".", "cannot read directory: %v", err)
		} else {
			w0.checkXattrsFD(v, &m.Entries[0], fd)
			v.sched.Push(job{dir: 0, d: walk.NewDir(fd), list: true})
			if err := v.sched.Run(workers, v.run); err != nil {
				return nil, err
			}
		}
	}
	runtime.KeepAlive(objs)
	var problems []Problem
	for i := range v.per {
		problems = append(problems, v.per[i].problems...)
	}
	sort.Slice(problems, func(i, j int) bool {
		if problems[i].Path != problems[j].Path {
			return manifest.Less(problems[i].Path, problems[j].Path)
		}
		return problems[i].Reason < problems[j].Reason
	})
	return problems, nil
}

type verifier struct {
	ix      *index
	objs    *cas.Store
	full    bool
	good    *Hashed // objects known clean from earlier calls; may be nil
	sched   *walk.Sched[job]
	per     []verifyWorker
	hashed  sync.Map // cas.Key → struct{}: objects already claimed for re-hashing
	treeDev uint64   // the tree root's device: listed inode numbers are on it
	xattrs  bool     // check xattrs (v2 manifests; v1 ones say nothing of them)
	base    string   // the tree's path, for reading xattrs by path
}

func (v *verifier) path(e *manifest.Entry) string { return v.base + "/" + e.Path }

// checkXattrs compares the xattrs read (got) with want: e's, or for a file
// its key's (an access ACL without write bits, like the mode). Fast verify
// pays one listxattr for an entry without any.
func (w *verifyWorker) checkXattrs(e *manifest.Entry, want, got string, err error, inStore bool) {
	add := w.add
	if inStore {
		add = w.addStore
	}
	if err != nil {
		add(e.Path, "cannot read xattrs: %v", err)
		return
	}
	for _, d := range xattr.Diff(want, got) {
		add(e.Path, "%s", d)
	}
}

func (w *verifyWorker) checkXattrsFD(v *verifier, e *manifest.Entry, fd int) {
	if v.xattrs {
		got, err := xattr.FRead(fd)
		w.checkXattrs(e, e.Xattrs, got, err, false)
	}
}

// checkXattrsAt checks the xattrs of nm in d (not followed) against want.
func (w *verifyWorker) checkXattrsAt(v *verifier, e *manifest.Entry, want string, d *walk.Dir, nm string) {
	if v.xattrs {
		got, err := xattr.ReadAt(d.FD, nm)
		if err == xattr.ErrNoAt {
			got, err = xattr.LRead(v.path(e))
		}
		w.checkXattrs(e, want, got, err, false)
	}
}

// checkObjectXattrs checks the xattrs of the object a file is a hardlink
// of: the object's own inode, so damage is in the store.
func (w *verifyWorker) checkObjectXattrs(v *verifier, e *manifest.Entry, k cas.Key) {
	if v.xattrs {
		got, err := v.objs.Xattrs(k)
		w.checkXattrs(e, k.Xattrs, got, err, true)
	}
}

// dent is one name from a directory listing with its inode number.
type dent struct {
	name string
	ino  uint64
}

type verifyWorker struct {
	problems []Problem
	names    []dent
	_        [64]byte
}

func (w *verifyWorker) add(p, format string, a ...any) {
	w.problems = append(w.problems, Problem{Path: p, Reason: fmt.Sprintf(format, a...)})
}

// addStore records a problem of the object itself (see Problem.InStore).
func (w *verifyWorker) addStore(p, format string, a ...any) {
	w.problems = append(w.problems, Problem{Path: p, Reason: fmt.Sprintf(format, a...), InStore: true})
}

func (w *verifyWorker) checkDirAttrs(rel string, e *manifest.Entry, st *unix.Stat_t) {
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		w.add(rel, "is a symlink, not a directory (not followed)")
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		w.add(rel, "is not a directory")
		return
	}
	if st.Mode&07777 != e.Mode {
		w.add(rel, "mode %04o, want %04o", st.Mode&07777, e.Mode)
	}
	w.checkOwner(rel, e, st)
}

func (w *verifyWorker) checkOwner(rel string, e *manifest.Entry, st *unix.Stat_t) {
	// An unprivileged commit cannot chown, so only root's trees are held to it.
	if cas.IsRoot() && (st.Uid != e.UID || st.Gid != e.GID) {
		w.add(rel, "owner %d:%d, want %d:%d", st.Uid, st.Gid, e.UID, e.GID)
	}
}

func (v *verifier) run(wi int, j job) error {
	w := &v.per[wi]
	if j.d == nil { // open job
		e := &v.ix.m.Entries[v.ix.dirs[j.dir]]
		fd, err := walk.OpenDirAt(j.parent.FD, name(e.Path))
		j.parent.Unref()
		if err != nil {
			switch err {
			case unix.ENOENT, unix.ENOTDIR, unix.ELOOP: // raced; the parent saw it
			default:
				w.add(e.Path, "cannot read directory: %v", err)
			}
			return nil
		}
		w.checkXattrsFD(v, e, fd)
		return w.list(v, j.dir, walk.NewDir(fd))
	}
	if j.list {
		return w.list(v, j.dir, j.d)
	}
	defer j.d.Unref()
	for n, i := range j.kids {
		if v.sched.Failed() {
			return nil
		}
		w.check(v, j.d, i, j.inos[n])
	}
	return nil
}

// list reads directory dir (open as d; list owns that reference), reports
// extra and missing entries, and checks the present ones: all but the
// first chunk as jobs for other workers.
func (w *verifyWorker) list(v *verifier, dir int32, d *walk.Dir) error {
	e := &v.ix.m.Entries[v.ix.dirs[dir]]
	w.names = w.names[:0]
	if err := cas.ReadDir(d.FD, func(n string, ino uint64, _ uint8) { w.names = append(w.names, dent{n, ino}) }); err != nil {
		d.Unref()
		w.add(e.Path, "cannot read directory: %v", err)
		return nil
	}
	names := w.names
	sort.Slice(names, func(i, j int) bool { return names[i].name < names[j].name })
	kids := v.ix.children(dir)
	present := make([]int32, 0, len(kids))
	inos := make([]uint64, 0, len(kids))
	es := v.ix.m.Entries
	for i, k := 0, 0; i < len(names) || k < len(kids); {
		c := 0
		switch {
		case i == len(names):
			c = 1
		case k == len(kids):
			c = -1
		default:
			c = strings.Compare(names[i].name, name(es[kids[k]].Path))
		}
		switch {
		case c < 0:
			w.add(join(e.Path, names[i].name), "unexpected entry (not in the manifest)")
			i++
		case c > 0:
			w.add(es[kids[k]].Path, "missing")
			k++
		default:
			present = append(present, kids[k])
			inos = append(inos, names[i].ino)
			i++
			k++
		}
	}
	for len(present) > verifyChunk {
		v.sched.Push(job{dir: dir, d: d.Ref(), kids: present[len(present)-verifyChunk:], inos: inos[len(inos)-verifyChunk:]})
		present = present[:len(present)-verifyChunk]
		inos = inos[:len(inos)-verifyChunk]
	}
	defer d.Unref()
	for n, i := range present {
		if v.sched.Failed() {
			return nil
		}
		w.check(v, d, i, inos[n])
	}
	return nil
}

func join(dir, n string) string {
	if dir == "." {
		return n
	}
	return dir + "/" + n
}

// check verifies one entry that the directory listing showed present with
// inode number ino.
//
// A file whose listed inode is its object's inode is checked on the
// object's stat alone: the tree entry and the object are the same inode, so
// type, mode, owner and size are the same, and one fstatat per file is
// saved (on a PTI kernel a syscall costs microseconds, and fast verify is
// little else). Anything else gets the tree entry's own stat.
func (w *verifyWorker) check(v *verifier, d *walk.Dir, i int32, ino uint64) {
	e := &v.ix.m.Entries[i]
	if e.Type == manifest.File && e.Size > 0 {
		k := e.Key()
		var ost unix.Stat_t
		if err := v.objs.Stat(k, &ost); err == nil && ost.Ino == ino && ost.Dev == v.treeDev {
			if ost.Mode&unix.S_IFMT != unix.S_IFREG { // the object itself: a re-blit would link it again
				w.addStore(e.Path, "is not a regular file (nor is its object %s)", k.RelPath())
				return
			}
			w.checkFile(v, e, k, &ost, &ost, d, "")
			return
		}
	}
	nm := name(e.Path)
	var st unix.Stat_t
	if err := unix.Fstatat(d.FD, nm, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			w.add(e.Path, "missing")
		} else {
			w.add(e.Path, "cannot stat: %v", err)
		}
		return
	}
	switch e.Type {
	case manifest.Dir:
		w.checkDirAttrs(e.Path, e, &st)
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			v.sched.Push(job{dir: v.ix.sub[i], parent: d.Ref()})
		}
	case manifest.Symlink:
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			w.add(e.Path, "is not a symlink")
			return
		}
		if t, err := readlinkAt(d.FD, nm, st.Size); err != nil || t != e.Target {
			w.add(e.Path, "symlink target %q, want %q", t, e.Target)
		}
		w.checkOwner(e.Path, e, &st)
		w.checkXattrsAt(v, e, e.Xattrs, d, nm)
	case manifest.File:
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			w.add(e.Path, "is not a regular file")
			return
		}
		k := e.Key()
		if e.Size == 0 {
			w.checkAttrs(e, k, &st, false)
			w.checkXattrsAt(v, e, k.Xattrs, d, nm)
			return
		}
		var ost unix.Stat_t
		if err := v.objs.Stat(k, &ost); err != nil {
			w.checkAttrs(e, k, &st, false)
			w.addStore(e.Path, "object %s missing from the store: %v", k.RelPath(), err)
			return
		}
		w.checkFile(v, e, k, &st, &ost, d, nm)
	}
}

// checkAttrs compares a file's stat with its manifest entry.
// inStore: st is the object's own inode.
func (w *verifyWorker) checkAttrs(e *manifest.Entry, k cas.Key, st *unix.Stat_t, inStore bool) {
	add := w.add
	if inStore {
		add = w.addStore
	}
	if st.Size != e.Size {
		add(e.Path, "size %d, want %d", st.Size, e.Size)
	}
	if st.Mode&07777 != k.Mode {
		add(e.Path, "mode %04o, want %04o", st.Mode&07777, k.Mode)
	}
	if cas.IsRoot() && (st.Uid != e.UID || st.Gid != e.GID) {
		add(e.Path, "owner %d:%d, want %d:%d", st.Uid, st.Gid, e.UID, e.GID)
	}
}

// checkFile checks a non-empty file (stat st) against its object (stat
// ost); nm is its name in d, "" when st is the object's own stat.
func (w *verifyWorker) checkFile(v *verifier, e *manifest.Entry, k cas.Key, st, ost *unix.Stat_t, d *walk.Dir, nm string) {
	same := ost == st || (ost.Dev == st.Dev && ost.Ino == st.Ino)
	w.checkAttrs(e, k, st, same)
	if same {
		w.checkObjectXattrs(v, e, k)
	} else if ost.Dev != st.Dev || ost.Nlink >= maxLinks { // a legitimate copy
		w.checkXattrsAt(v, e, k.Xattrs, d, nm)
	}
	if ost.Size != e.Size && ost != st {
		w.addStore(e.Path, "object %s has size %d, want %d", k.RelPath(), ost.Size, e.Size)
	}
	if ost.Dev == st.Dev && ost.Ino == st.Ino {
		if v.full {
			if v.good.known(k) {
				return
			}
			if _, dup := v.hashed.LoadOrStore(k, struct{}{}); !dup {
				fd, err := v.objs.Open(k)
				if w.hash(e, fd, err, true) {
					v.good.add(k)
				}
			}
		}
		return
	}
	if ost.Dev == st.Dev && ost.Nlink < maxLinks {
		w.add(e.Path, "not a hardlink of object %s (replaced?)", k.RelPath())
		return
	}
	if v.full { // a legitimate copy (EXDEV/EMLINK): only content can tell
		fd, err := cas.OpenFileAt(d.FD, nm)
		w.hash(e, fd, err, false)
	}
}

// hash re-hashes an open file (closing it) against e's hash and says
// whether it matched.
func (w *verifyWorker) hash(e *manifest.Entry, fd int, err error, inStore bool) bool {
	add := w.add
	if inStore {
		add = w.addStore
	}
	if err != nil {
		add(e.Path, "cannot read content: %v", err)
		return false
	}
	h, err := cas.HashObject(fd)
	unix.Close(fd)
	switch {
	case err != nil:
		add(e.Path, "cannot read content: %v", err)
	case h != e.Hash:
		add(e.Path, "content corrupted: sha256 %s, want %s", h, e.Hash)
	default:
		return true
	}
	return false
}

// readlinkAt reads a symlink; size (from lstat) sizes the buffer.
func readlinkAt(dirfd int, nm string, size int64) (string, error) {
	n := int(size) + 1
	if n < 64 {
		n = 64
	}
	for {
		buf := make([]byte, n)
		r, err := unix.Readlinkat(dirfd, nm, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", err
		}
		if r < len(buf) {
			return string(buf[:r]), nil
		}
		n *= 2
	}
}
