package blit

import (
	"fmt"
	"strings"

	"github.com/txboot/txboot/txstore/internal/walk"
	"github.com/txboot/txboot/txstore/manifest"
)

// Chunk sizes: how many entries of one directory a job handles. A huge
// directory is opened (and for verify, listed) once and its entries shared
// out in chunks so all workers stay busy. Blit's chunks are larger: every
// create in a directory takes that directory's lock, so workers filling one
// directory mostly wait for each other; other directories are better work.
const (
	verifyChunk = 128
	blitChunk   = 1024
)

// index is a manifest's directory structure: its directories and, for each,
// its children in manifest order (which is name order).
type index struct {
	m     *manifest.Manifest
	dirs  []int32 // entry index of each directory; dirs[0] is the root
	first []int32 // children of directory d are kids[first[d]:first[d+1]]
	kids  []int32 // entry indexes
	sub   []int32 // for an entry that is a directory, its directory number; else -1
}

// newIndex checks every path and that every entry's parent is a directory
// listed before it (Decode guarantees both; Blit and Verify also accept
// manifests built in memory).
func newIndex(m *manifest.Manifest) (*index, error) {
	es := m.Entries
	if len(es) == 0 || es[0].Path != "." || es[0].Type != manifest.Dir {
		return nil, fmt.Errorf("%w: no root entry", manifest.ErrBad)
	}
	ix := &index{m: m, dirs: []int32{0}, sub: make([]int32, len(es))}
	ix.sub[0] = 0
	dirNum := map[string]int32{".": 0}
	parent := make([]int32, len(es))
	count := []int32{0}
	for i := 1; i < len(es); i++ {
		e := &es[i]
		if !cleanPath(e.Path) {
			if err := manifest.CheckPath(e.Path); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %q", manifest.ErrUnsafePath, e.Path)
		}
		pp := "."
		if j := strings.LastIndexByte(e.Path, '/'); j >= 0 {
			pp = e.Path[:j]
		}
		pd, ok := dirNum[pp]
		if !ok {
			return nil, fmt.Errorf("%w: parent of %q is not a directory listed before it", manifest.ErrBad, e.Path)
		}
		parent[i] = pd
		count[pd]++
		ix.sub[i] = -1
		if e.Type == manifest.Dir {
			if _, dup := dirNum[e.Path]; dup {
				return nil, fmt.Errorf("%w: %q repeated", manifest.ErrBad, e.Path)
			}
			ix.sub[i] = int32(len(ix.dirs))
			dirNum[e.Path] = int32(len(ix.dirs))
			ix.dirs = append(ix.dirs, int32(i))
			count = append(count, 0)
		}
	}
	ix.first = make([]int32, len(ix.dirs)+1)
	for d, c := range count {
		ix.first[d+1] = ix.first[d] + c
	}
	ix.kids = make([]int32, ix.first[len(ix.dirs)])
	fill := append([]int32(nil), ix.first[:len(ix.dirs)]...)
	for i := 1; i < len(es); i++ {
		pd := parent[i]
		ix.kids[fill[pd]] = int32(i)
		fill[pd]++
	}
	return ix, nil
}

// children returns directory d's children.
func (ix *index) children(d int32) []int32 { return ix.kids[ix.first[d]:ix.first[d+1]] }

// name is the last component of an entry's path.
func name(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// cleanPath is manifest.CheckPath without allocating, for the common case.
func cleanPath(p string) bool {
	if p == "" || len(p) > manifest.MaxPathLen || p[0] == '/' {
		return false
	}
	start := 0
	for i := 0; i <= len(p); i++ {
		if i < len(p) && p[i] == 0 {
			return false
		}
		if i == len(p) || p[i] == '/' {
			c := p[start:i]
			if c == "" || c == "." || c == ".." {
				return false
			}
			start = i + 1
		}
	}
	return true
}

// job is one unit of work on one directory: open (and for verify, list)
// directory dir under parent, or handle a chunk of an open directory's
// children.
type job struct {
	dir    int32     // directory number in the index
	parent *walk.Dir // open job: the directory that holds dir
	d      *walk.Dir // chunk job: dir, already open
	kids   []int32   // chunk job: the entries to handle
	inos   []uint64  // verify chunk job: each kid's inode number from the listing
	list   bool      // verify: d is open and still to be listed
}

func (j job) Release() {
	if j.parent != nil {
		j.parent.Unref()
	}
	if j.d != nil {
		j.d.Unref()
	}
}
