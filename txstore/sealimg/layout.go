package sealimg

import "github.com/txboot/txboot/txstore/manifest"

func align(x, a int64) int64 { return (x + a - 1) / a * a }

// layout places every inode in the meta area, in manifest order, then
// numbers the data blocks that follow it.
func (t *tree) layout() {
	pos := int64(sbOffset + sbSize)
	for i := range t.nodes {
		n := &t.nodes[i]
		n.plan()
		total := int64(n.headerSize() + len(n.xattrs) + n.tail)
		pos = align(pos, slotSize)
		// The kernel wants an inline tail (and a symlink's whole inode) in
		// one block; starting any inode that would straddle on a fresh
		// block also keeps every extended inode's 64 bytes in one block.
		if pos%blockSize+total > blockSize {
			pos = align(pos, blockSize)
		}
		n.nid = uint64(pos / slotSize)
		pos += total
	}
	t.metaEnd = pos
	t.dataStart = uint32(align(pos, blockSize) / blockSize)
	next := t.dataStart
	for i := range t.nodes {
		if n := &t.nodes[i]; n.blocks > 0 {
			n.blkaddr = next
			next += n.blocks
		}
	}
	t.total = next
}

// plan picks n's inode form and data layout.
func (n *node) plan() {
	n.extended = n.e.UID > 0xffff || n.e.GID > 0xffff || n.nlink > 0xffff || n.size > 0xffffffff
	isz := n.headerSize() + len(n.xattrs)
	switch {
	case n.e.Type == manifest.Dir:
		last := n.lastDirBlock()
		full := uint32(len(n.dirSplit) - 1)
		if last <= blockSize/2 && isz+last <= blockSize {
			n.layout, n.tail, n.blocks = layoutFlatInline, last, full
		} else {
			n.layout, n.tail, n.blocks = layoutFlatPlain, 0, full+1
		}
	case n.e.Type == manifest.Symlink:
		if isz+int(n.size) <= blockSize {
			n.layout, n.tail = layoutFlatInline, int(n.size)
		} else {
			n.layout, n.blocks = layoutFlatPlain, uint32(align(int64(n.size), blockSize)/blockSize)
		}
	case n.size > 0: // a regular file; setChunks set the tail
		n.layout = layoutChunkBased
	default:
		n.layout = layoutFlatPlain
	}
}

func (n *node) headerSize() int {
	if n.extended {
		return extendedSize
	}
	return compactSize
}
