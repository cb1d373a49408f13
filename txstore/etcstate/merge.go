package etcstate

import (
	"fmt"
	"slices"
	"strings"

	"github.com/txboot/txboot/txstore/internal/safefs"
	"golang.org/x/sys/unix"
)

// Conflict is a path where the administrator's version was kept although
// the tx's new /etc changed it too.
type Conflict struct {
	Path   string `json:"path"` // relative to /etc, e.g. "nginx/nginx.conf"
	Reason string `json:"reason"`
	// Beside: where the tx's version was written instead (Path +
	// BesideSuffix); "" when it is not a file or symlink (a removal, a
	// directory).
	Beside string `json:"beside,omitempty"`
}

// The three sides of a merge.
const (
	sBase = iota
	sOurs
	sTheirs
)

// Merge3 builds dst (which must not exist) as the 3-way merge of the /etc
// trees base (what ours and theirs started from; missing means empty),
// ours (the live /etc, with the administrator's edits) and theirs (the
// tx's new /etc), path by path over the union of the three:
//
//   - theirs equals base: ours (the administrator's version, or its absence);
//   - ours equals base: theirs (the package's update, removal, or type change);
//   - ours equals theirs: ours;
//   - else a conflict: ours is kept, theirs is written beside as
//     PATH.txboot-new when it is a file or symlink (replacing one already
//     there), and the path is listed.
//
// Equal means the same type, mode, owner, xattrs and content or target;
// for a directory replaced or removed, its whole subtree. Directories on
// both sides are merged entry by entry, their own metadata by the same
// rule. The output is deterministic; the markers at the tops are ignored.
// Conflicts come sorted by path. dst is durable on return (syncfs).
func Merge3(base, ours, theirs, dst string) ([]Conflict, error) {
	m := &merger{roots: [3]string{base, ours, theirs}, fds: [3]int{-1, -1, -1}}
	defer m.close()
	for i, p := range m.roots {
		t, err := scan(p, i == sBase)
		if err != nil {
			return nil, fmt.Errorf("merge: %w", err)
		}
		m.trees[i] = t
		if t[""] == nil {
			continue // a missing base
		}
		if m.fds[i], err = openRoot(p); err != nil {
			return nil, fmt.Errorf("merge: %w", err)
		}
	}
	pfd, name, err := openParent(dst)
	if err != nil {
		return nil, fmt.Errorf("merge into %s: %w", dst, err)
	}
	defer unix.Close(pfd)
	m.c = newCopier("", dst)
	if err := m.dir("", m.fds, pfd, name); err != nil {
		return nil, err
	}
	if err := syncfs(pfd, dst); err != nil {
		return nil, err
	}
	slices.SortFunc(m.conflicts, func(a, b Conflict) int { return strings.Compare(a.Path, b.Path) })
	return m.conflicts, nil
}

type merger struct {
	roots     [3]string
	trees     [3]tree
	fds       [3]int // the roots, -1 when missing
	c         *copier
	conflicts []Conflict
}

func (m *merger) close() {
	for _, fd := range m.fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func (m *merger) nodes(rel string) [3]*node {
	return [3]*node{m.trees[sBase][rel], m.trees[sOurs][rel], m.trees[sTheirs][rel]}
}

// dir makes dname in pfd as the merge of directory rel, which is a
// directory in ours and theirs (fds: each side's open directory at rel,
// -1 where it is not one).
func (m *merger) dir(rel string, fds [3]int, pfd int, dname string) error {
	n := m.nodes(rel)
	meta := m.pickMeta(rel, n)
	if err := unix.Mkdirat(pfd, dname, 0o700); err != nil {
		return fmt.Errorf("merge into %s: %w", m.c.at(rel), err)
	}
	dfd, err := openEntry(pfd, dname, unix.S_IFDIR)
	if err != nil {
		return fmt.Errorf("merge into %s: %w", m.c.at(rel), err)
	}
	defer unix.Close(dfd)
	var beside []string
	for _, name := range unionKids(n) {
		crel := join(rel, name)
		k := m.nodes(crel)
		if k[sOurs].isDir() && k[sTheirs].isDir() {
			if err := m.subdir(crel, fds, name, dfd); err != nil {
				return err
			}
			continue
		}
		side, bes := m.pick(crel, k)
		if bes {
			beside = append(beside, name)
		}
		if k[side] == nil {
			continue // removed
		}
		m.c.src = m.roots[side]
		if err := m.c.entry(fds[side], name, dfd, name, crel); err != nil {
			return fmt.Errorf("merge: %w", err)
		}
	}
	for _, name := range beside {
		if err := m.writeBeside(fds[sTheirs], name, dfd, rel); err != nil {
			return err
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[meta], &st); err != nil {
		return fmt.Errorf("merge: stat %s/%s: %w", m.roots[meta], rel, err)
	}
	if err := setMeta(dfd, &st, n[meta].xattrs); err != nil {
		return fmt.Errorf("merge into %s: %w", m.c.at(rel), err)
	}
	return nil
}

// subdir opens child name of each side that has a directory there and
// merges it.
func (m *merger) subdir(crel string, fds [3]int, name string, dfd int) error {
	k := m.nodes(crel)
	cfds := [3]int{-1, -1, -1}
	defer func() {
		for _, fd := range cfds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	for i := range cfds {
		if !k[i].isDir() {
			continue
		}
		fd, err := openEntry(fds[i], name, unix.S_IFDIR)
		if err != nil {
			return fmt.Errorf("merge: open %s/%s: %w", m.roots[i], crel, err)
		}
		cfds[i] = fd
	}
	return m.dir(crel, cfds, dfd, name)
}

// writeBeside copies theirs' name as name.txboot-new, replacing what
// the merge put there.
func (m *merger) writeBeside(tfd int, name string, dfd int, rel string) error {
	bname := name + BesideSuffix
	brel := join(rel, bname)
	if err := unix.Unlinkat(dfd, bname, 0); err != nil && err != unix.ENOENT {
		if err != unix.EISDIR {
			return fmt.Errorf("merge: replace %s: %w", m.c.at(brel), err)
		}
		if err := safefs.RemoveTree(dfd, bname); err != nil {
			return fmt.Errorf("merge: replace %s: %w", m.c.at(brel), err)
		}
	}
	m.c.src = m.roots[sTheirs]
	if err := m.c.entry(tfd, name, dfd, bname, brel); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	return nil
}

// pick decides a path that is not a directory on both ours and theirs:
// the side to take (its entry may be absent: a removal), and whether
// theirs goes beside it (a conflict).
func (m *merger) pick(rel string, k [3]*node) (int, bool) {
	b, o, t := k[sBase], k[sOurs], k[sTheirs]
	switch {
	case deepEq(t, b), deepEq(o, t):
		return sOurs, false
	case deepEq(o, b):
		return sTheirs, false
	}
	reason := fmt.Sprintf("%s here, %s in the tx's new /etc; yours kept", change(b, o), change(b, t))
	c := Conflict{Path: rel}
	switch {
	case t.besideable():
		c.Beside = rel + BesideSuffix
		reason += ", the tx's beside it as " + lastName(c.Beside)
	case t.isDir():
		reason += " (the tx's is a directory: not written beside)"
	}
	c.Reason = reason
	m.conflicts = append(m.conflicts, c)
	return sOurs, c.Beside != ""
}

// pickMeta decides the metadata of a directory on both ours and theirs.
func (m *merger) pickMeta(rel string, n [3]*node) int {
	b, o, t := n[sBase], n[sOurs], n[sTheirs]
	switch {
	case sameMeta(t, b), sameMeta(o, t):
		return sOurs
	case sameMeta(o, b):
		return sTheirs
	}
	m.conflicts = append(m.conflicts, Conflict{Path: dirPath(rel),
		Reason: fmt.Sprintf("directory %s here, %s in the tx's new /etc; yours kept", metaChange(b, o), metaChange(b, t))})
	return sOurs
}

func dirPath(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

func lastName(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// unionKids lists, sorted and once each, the children of the sides that
// are directories.
func unionKids(n [3]*node) []string {
	var out []string
	for _, x := range n {
		if x.isDir() {
			out = append(out, x.kids...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// change says how x differs from b, for a conflict's reason.
func change(b, x *node) string {
	switch {
	case b == nil && x == nil:
		return "absent"
	case b == nil:
		return "added"
	case x == nil:
		return "removed"
	case b.typ() != x.typ():
		return "replaced by " + typeName(x)
	case x.isDir():
		if sameMeta(b, x) {
			return "changed inside"
		}
		return metaChange(b, x) + " and changed inside"
	}
	var parts []string
	switch {
	case b.sum != x.sum:
		parts = append(parts, "edited")
	case b.target != x.target:
		parts = append(parts, "pointed elsewhere")
	case b.rdev != x.rdev:
		parts = append(parts, "device number changed")
	}
	if !sameMeta(b, x) {
		parts = append(parts, metaChange(b, x))
	}
	return strings.Join(parts, ", ")
}

// metaChange names what differs among mode, owner and xattrs.
func metaChange(b, x *node) string {
	switch {
	case b == nil:
		return "added"
	case x == nil:
		return "removed"
	}
	var parts []string
	if b.mode != x.mode {
		parts = append(parts, fmt.Sprintf("mode %o→%o", b.mode&0o7777, x.mode&0o7777))
	}
	if b.uid != x.uid || b.gid != x.gid {
		parts = append(parts, fmt.Sprintf("owner %d:%d→%d:%d", b.uid, b.gid, x.uid, x.gid))
	}
	if b.xattrs != x.xattrs {
		parts = append(parts, "xattrs changed")
	}
	if len(parts) == 0 {
		return "unchanged"
	}
	return strings.Join(parts, ", ")
}

func typeName(n *node) string {
	switch n.typ() {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFREG:
		return "a file"
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device node"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "something else"
}
