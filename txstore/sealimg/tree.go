package sealimg

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/txboot/txboot/txstore/manifest"
)

// On-disk constants (linux fs/erofs/erofs_fs.h).
const (
	blockBits    = 12
	blockSize    = 1 << blockBits
	sbOffset     = 1024
	sbSize       = 128
	slotSize     = 32 // inodes are addressed in 32-byte slots (nid)
	compactSize  = 32
	extendedSize = 64
	direntSize   = 12
	nullAddr     = 0xffffffff

	layoutFlatPlain  = 0
	layoutFlatInline = 2
	layoutChunkBased = 4

	ftReg     = 1
	ftDir     = 2
	ftSymlink = 7

	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000

	// maxChunkBits caps a chunk at 8 TiB (EROFS_CHUNK_FORMAT_BLKBITS_MASK).
	maxChunkBits = blockBits + 31
	// maxChunks bounds the null block map of one file (a 4-byte entry a
	// chunk); only a file above 8 TiB has more than one chunk.
	maxChunks = 1024
)

// dirent is one name of a directory: ".", ".." or a child.
type dirent struct {
	name string
	node int32
}

// node is one inode: a manifest entry and where it lands in the image.
type node struct {
	e        *manifest.Entry
	name     string // last path component
	mode     uint16 // S_IF* and permission bits
	nlink    uint32
	size     uint64
	xattrs   []byte   // inode-body xattrs, header included; nil for none
	dirents  []dirent // directories: sorted by name, "." and ".." included
	dirSplit []int    // directories: index of each block's first dirent
	chunkFmt uint16   // chunk-based files: chunk bits above the block's

	// Set by layout.
	extended bool
	layout   uint8
	tail     int    // bytes inline after the xattrs
	blocks   uint32 // data blocks in the data area
	blkaddr  uint32 // first data block
	nid      uint64
}

// tree is the whole image being built.
type tree struct {
	nodes     []node
	metaEnd   int64  // end of the inode area (bytes)
	dataStart uint32 // first block of the data area
	total     uint32 // blocks in the image
	chunked   bool   // some file is chunk-based
}

// newTree turns m into nodes, calling obj for each nonempty file.
func newTree(m *manifest.Manifest, obj func(e *manifest.Entry) (Object, error)) (*tree, error) {
	if len(m.Entries) == 0 || m.Entries[0].Path != "." || m.Entries[0].Type != manifest.Dir {
		return nil, fmt.Errorf("sealimg: %w: manifest does not start with its root directory", manifest.ErrBad)
	}
	t := &tree{nodes: make([]node, len(m.Entries))}
	dirs := make(map[string]int32)
	for i := range m.Entries {
		e := &m.Entries[i]
		n := &t.nodes[i]
		n.e = e
		if err := t.fill(n, obj); err != nil {
			return nil, err
		}
		if e.Type == manifest.Dir {
			dirs[e.Path] = int32(i)
		}
		if i == 0 {
			n.dirents = append(n.dirents, dirent{".", 0}, dirent{"..", 0})
			continue
		}
		if err := t.attach(int32(i), dirs); err != nil {
			return nil, err
		}
	}
	for i := range t.nodes {
		if n := &t.nodes[i]; n.e.Type == manifest.Dir {
			n.finishDir()
		}
	}
	return t, nil
}

// attach links node i into its parent directory.
func (t *tree) attach(i int32, dirs map[string]int32) error {
	n := &t.nodes[i]
	parent, name := ".", n.e.Path
	if j := strings.LastIndexByte(n.e.Path, '/'); j >= 0 {
		parent, name = n.e.Path[:j], n.e.Path[j+1:]
	}
	p, ok := dirs[parent]
	if !ok {
		return fmt.Errorf("sealimg: %w: %s has no parent directory entry before it", manifest.ErrBad, n.e.Path)
	}
	if len(name) > 255 {
		return fmt.Errorf("sealimg: %w: %s: name longer than 255 bytes", manifest.ErrBad, n.e.Path)
	}
	n.name = name
	pn := &t.nodes[p]
	pn.dirents = append(pn.dirents, dirent{name, i})
	if n.e.Type == manifest.Dir {
		pn.nlink++
		n.dirents = append(n.dirents, dirent{".", i}, dirent{"..", p})
	}
	return nil
}

// fill sets n's mode, size and xattrs from its entry.
func (t *tree) fill(n *node, obj func(e *manifest.Entry) (Object, error)) error {
	e := n.e
	var extra []manifest.Xattr
	n.nlink = 1
	switch e.Type {
	case manifest.Dir:
		n.mode, n.nlink = sIFDIR|uint16(e.Mode&0o7777), 2
	case manifest.Symlink:
		n.mode, n.size = sIFLNK|0o777, uint64(len(e.Target))
	case manifest.File:
		n.mode, n.size = sIFREG|uint16(e.Mode&0o7777), uint64(e.Size)
		if e.Size > 0 {
			o, err := obj(e)
			if err != nil {
				return fmt.Errorf("sealimg: object of %s: %w", e.Path, err)
			}
			extra = overlayXattrs(o)
			if err := n.setChunks(); err != nil {
				return err
			}
			t.chunked = true
		}
	default:
		return fmt.Errorf("sealimg: %w: %s has type %q", manifest.ErrUnsupported, e.Path, e.Type)
	}
	x, err := encodeXattrs(e, extra)
	if err != nil {
		return err
	}
	n.xattrs = x
	return nil
}

// setChunks picks the fewest chunks that cover the file: one, up to 8 TiB.
func (n *node) setChunks() error {
	cb := max(bits.Len64(n.size-1), blockBits)
	cb = min(cb, maxChunkBits)
	count := (n.size + 1<<cb - 1) >> cb
	if count > maxChunks {
		return fmt.Errorf("sealimg: %w: %s is %d bytes", ErrUnsealable, n.e.Path, n.size)
	}
	n.chunkFmt = uint16(cb - blockBits)
	n.tail = int(count) * 4
	return nil
}

// finishDir sorts a directory's names and splits them into blocks: each
// block holds its dirents (12 bytes each) then their names, unterminated.
func (n *node) finishDir() {
	slices.SortFunc(n.dirents, func(a, b dirent) int { return strings.Compare(a.name, b.name) })
	used := 0
	n.dirSplit = append(n.dirSplit[:0], 0)
	for i, d := range n.dirents {
		l := direntSize + len(d.name)
		if used+l > blockSize {
			n.dirSplit = append(n.dirSplit, i)
			used = 0
		}
		used += l
	}
	n.size = uint64(len(n.dirSplit)-1)*blockSize + uint64(used)
}

// lastDirBlock is the size of a directory's last (possibly partial) block.
func (n *node) lastDirBlock() int {
	return int(n.size - uint64(len(n.dirSplit)-1)*blockSize)
}
