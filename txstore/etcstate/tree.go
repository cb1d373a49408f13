package etcstate

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/txboot/txboot/txstore/internal/safefs"
	"github.com/txboot/txboot/txstore/internal/xattr"
	"golang.org/x/sys/unix"
)

// node is one entry of a scanned tree: what makes its identity (type and
// mode, owner, xattrs, content hash, symlink target or device number),
// and for a directory its sorted children and a hash over its whole
// subtree (deep), so two subtrees compare in one step.
type node struct {
	mode     uint32 // st_mode: type and permission bits
	uid, gid uint32
	rdev     uint64
	xattrs   string   // canonical encoding (package xattr)
	sum      [32]byte // regular file: SHA-256 of the content
	target   string   // symlink
	kids     []string // directory: child names, sorted
	id, deep [32]byte // identity of the entry itself; of its subtree
}

func (n *node) typ() uint32 { return n.mode & unix.S_IFMT }
func (n *node) isDir() bool { return n != nil && n.typ() == unix.S_IFDIR }

// besideable: a regular file or a symlink, which a conflict writes beside.
func (n *node) besideable() bool {
	return n != nil && (n.typ() == unix.S_IFREG || n.typ() == unix.S_IFLNK)
}

// sameMeta: same type, mode, owner and xattrs.
func sameMeta(a, b *node) bool {
	return a != nil && b != nil && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.xattrs == b.xattrs
}

// deepEq: both absent, or equal subtrees.
func deepEq(a, b *node) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.deep == b.deep
}

// tree is a scanned tree: rel path ("" for the root) → node.
type tree map[string]*node

// scanner walks a tree by directory fds (O_NOFOLLOW), counting entries.
type scanner struct {
	root  string
	t     tree
	count int
	buf   []byte
}

// scan reads the tree at root (a directory; its marker skipped). A
// missing root is an error unless missingOK, then an empty tree.
func scan(root string, missingOK bool) (tree, error) {
	fd, err := openRoot(root)
	if missingOK && errors.Is(err, unix.ENOENT) {
		return tree{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	s := &scanner{root: root, t: tree{}, buf: make([]byte, 64<<10)}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", root, err)
	}
	n := &node{}
	if err := s.fill(n, &st, fd, -1, "", ""); err != nil {
		return nil, err
	}
	return s.t, nil
}

// openRoot opens a tree's top directory, not following it if it is a
// symlink.
func openRoot(p string) (int, error) {
	for {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", p, err)
		}
		return fd, nil
	}
}

// fill completes n for the entry rel (stat st), open as fd for a
// directory or regular file, else reached as name in parent pfd.
func (s *scanner) fill(n *node, st *unix.Stat_t, fd, pfd int, name, rel string) error {
	n.mode, n.uid, n.gid = st.Mode, st.Uid, st.Gid
	var err error
	switch n.typ() {
	case unix.S_IFDIR:
		if n.xattrs, err = xattr.FRead(fd); err == nil {
			err = s.dir(n, fd, rel)
		}
	case unix.S_IFREG:
		if n.xattrs, err = xattr.FRead(fd); err == nil {
			n.sum, err = s.hash(fd, st.Size)
		}
	case unix.S_IFLNK:
		if n.target, err = readlink(pfd, name); err == nil {
			n.xattrs, err = xattrsAt(pfd, name)
		}
	default: // devices, FIFOs, sockets: their identity is the node itself
		n.rdev = st.Rdev
		n.xattrs, err = xattrsAt(pfd, name)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", s.path(rel), err)
	}
	n.id = identity(n)
	n.deep = n.id
	if n.isDir() {
		h := sha256.New()
		h.Write(n.id[:])
		for _, k := range n.kids {
			h.Write([]byte(k))
			h.Write([]byte{0})
			d := s.t[join(rel, k)].deep
			h.Write(d[:])
		}
		h.Sum(n.deep[:0])
	}
	s.t[rel] = n
	return nil
}

func (s *scanner) path(rel string) string {
	if rel == "" {
		return s.root
	}
	return s.root + "/" + rel
}

// dir scans the children of the open directory fd.
func (s *scanner) dir(n *node, fd int, rel string) error {
	if depth(rel) >= maxDepth {
		return fmt.Errorf("%w: deeper than %d directories", ErrTooBig, maxDepth)
	}
	ents, err := safefs.List(fd)
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	for _, e := range ents {
		if rel == "" && skipTop(e.Name) {
			continue
		}
		if s.count++; s.count > MaxEntries {
			return fmt.Errorf("%w: more than %d entries", ErrTooBig, MaxEntries)
		}
		n.kids = append(n.kids, e.Name)
	}
	slices.Sort(n.kids)
	for _, k := range n.kids {
		if err := s.child(fd, k, join(rel, k)); err != nil {
			return err
		}
	}
	return nil
}

func (s *scanner) child(pfd int, name, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat %s: %w", s.path(rel), err)
	}
	n := &node{}
	t := st.Mode & unix.S_IFMT
	if t != unix.S_IFDIR && t != unix.S_IFREG {
		return s.fill(n, &st, -1, pfd, name, rel)
	}
	fd, err := openEntry(pfd, name, t)
	if err != nil {
		return fmt.Errorf("open %s: %w", s.path(rel), err)
	}
	defer unix.Close(fd)
	// The open one is what is read: stat it again (it may have changed
	// since the listing).
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", s.path(rel), err)
	}
	return s.fill(n, &st, fd, pfd, name, rel)
}

// openEntry opens a directory or regular file name of pfd without
// following a symlink (and without blocking, should it have become a FIFO).
func openEntry(pfd int, name string, t uint32) (int, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY
	if t == unix.S_IFDIR {
		flags |= unix.O_DIRECTORY
	}
	for {
		fd, err := unix.Openat(pfd, name, flags, 0)
		if err != unix.EINTR {
			if err == nil && t == unix.S_IFREG {
				var st unix.Stat_t
				if serr := unix.Fstat(fd, &st); serr != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
					unix.Close(fd)
					return -1, fmt.Errorf("changed while read: no longer a regular file")
				}
			}
			return fd, err
		}
	}
}

func (s *scanner) hash(fd int, size int64) ([32]byte, error) {
	var sum [32]byte
	if size > MaxFileSize {
		return sum, fmt.Errorf("%w: %d bytes (at most %d)", ErrTooBig, size, MaxFileSize)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.LimitReader(fdReader{fd}, MaxFileSize+1), s.buf)
	if err != nil {
		return sum, err
	}
	if n > MaxFileSize {
		return sum, fmt.Errorf("%w: over %d bytes", ErrTooBig, MaxFileSize)
	}
	h.Sum(sum[:0])
	return sum, nil
}

// fdReader reads a descriptor it does not own.
type fdReader struct{ fd int }

func (r fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(r.fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// identity hashes what makes an entry itself (not its children).
func identity(n *node) [32]byte {
	h := sha256.New()
	var b [28]byte
	binary.LittleEndian.PutUint32(b[0:], n.mode)
	binary.LittleEndian.PutUint32(b[4:], n.uid)
	binary.LittleEndian.PutUint32(b[8:], n.gid)
	binary.LittleEndian.PutUint64(b[12:], n.rdev)
	binary.LittleEndian.PutUint64(b[20:], uint64(len(n.xattrs)))
	h.Write(b[:])
	h.Write([]byte(n.xattrs))
	h.Write(n.sum[:])
	h.Write([]byte(n.target))
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// readlink reads a symlink's target, bounded.
func readlink(pfd int, name string) (string, error) {
	buf := make([]byte, maxTarget+1)
	n, err := unix.Readlinkat(pfd, name, buf)
	if err != nil {
		return "", fmt.Errorf("readlink: %w", err)
	}
	if n > maxTarget {
		return "", fmt.Errorf("%w: symlink target over %d bytes", ErrTooBig, maxTarget)
	}
	return string(buf[:n]), nil
}

// procPath names entry name of the open directory pfd by a path that
// no symlink on the way can redirect: the kernel resolves the fd's link.
func procPath(pfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + name
}

// xattrsAt reads the xattrs of an entry that has no descriptor of its
// own (a symlink, a device node), without following it.
func xattrsAt(pfd int, name string) (string, error) {
	x, err := xattr.ReadAt(pfd, name)
	if errors.Is(err, xattr.ErrNoAt) { // before Linux 6.13
		return xattr.LRead(procPath(pfd, name))
	}
	return x, err
}

func join(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

func depth(rel string) int {
	if rel == "" {
		return 0
	}
	d := 1
	for i := 0; i < len(rel); i++ {
		if rel[i] == '/' {
			d++
		}
	}
	return d
}

// Equal reports whether the trees at a and b have the same entries, each
// with the same type, mode, owner, xattrs and content or target (times
// are not compared; the markers at the top are ignored).
func Equal(a, b string) (bool, error) {
	ta, err := scan(a, false)
	if err != nil {
		return false, err
	}
	tb, err := scan(b, false)
	if err != nil {
		return false, err
	}
	return ta[""].deep == tb[""].deep, nil
}
