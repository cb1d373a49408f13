package sealimg

import (
	"encoding/binary"
	"io"

	"github.com/txboot/txboot/txstore/manifest"
)

const (
	sbMagic              = 0xe0f5e1e2
	featureIncompatChunk = 0x4 // EROFS_FEATURE_INCOMPAT_CHUNKED_FILE
)

var le = binary.LittleEndian

// write writes the laid-out image: block 0 and the meta area from one
// buffer, then the data blocks in node order (the order layout numbered
// them in).
func (t *tree) write(w io.Writer) error {
	meta := make([]byte, int64(t.dataStart)*blockSize)
	t.putSuper(meta[sbOffset : sbOffset+sbSize])
	for i := range t.nodes {
		t.putInode(meta, int32(i))
	}
	if _, err := w.Write(meta); err != nil {
		return err
	}
	blk := make([]byte, blockSize)
	for i := range t.nodes {
		n := &t.nodes[i]
		for b := range n.blocks {
			clear(blk)
			t.dataBlock(blk, n, int(b))
			if _, err := w.Write(blk); err != nil {
				return err
			}
		}
	}
	return nil
}

// putSuper fills the superblock. No checksum feature, zero uuid and
// build time: nothing in the image depends on when or where it was built.
func (t *tree) putSuper(b []byte) {
	le.PutUint32(b[0:], sbMagic)
	b[12] = blockBits
	le.PutUint16(b[14:], uint16(t.nodes[0].nid))
	le.PutUint64(b[16:], uint64(len(t.nodes)))
	le.PutUint32(b[36:], t.total)
	// meta_blkaddr and xattr_blkaddr stay 0: nids count from byte 0 and
	// there are no shared xattrs.
	if t.chunked {
		le.PutUint32(b[80:], featureIncompatChunk)
	}
}

// putInode writes node i's inode, xattrs and inline tail at its nid.
func (t *tree) putInode(meta []byte, i int32) {
	n := &t.nodes[i]
	b := meta[n.nid*slotSize:]
	format := uint16(n.layout) << 1
	iu := n.iu()
	le.PutUint16(b[2:], icount(len(n.xattrs)))
	le.PutUint16(b[4:], n.mode)
	if n.extended {
		le.PutUint16(b[0:], format|1)
		le.PutUint64(b[8:], n.size)
		le.PutUint32(b[16:], iu)
		le.PutUint32(b[20:], uint32(i)+1)
		le.PutUint32(b[24:], n.e.UID)
		le.PutUint32(b[28:], n.e.GID)
		le.PutUint32(b[44:], n.nlink)
	} else {
		le.PutUint16(b[0:], format)
		le.PutUint16(b[6:], uint16(n.nlink))
		le.PutUint32(b[8:], uint32(n.size))
		le.PutUint32(b[16:], iu)
		le.PutUint32(b[20:], uint32(i)+1)
		le.PutUint16(b[24:], uint16(n.e.UID))
		le.PutUint16(b[26:], uint16(n.e.GID))
	}
	b = b[n.headerSize():]
	copy(b, n.xattrs)
	t.putTail(b[len(n.xattrs):len(n.xattrs)+n.tail], n)
}

// iu is the inode's i_u: the first data block, or the chunk format.
func (n *node) iu() uint32 {
	switch {
	case n.layout == layoutChunkBased:
		return uint32(n.chunkFmt)
	case n.blocks > 0:
		return n.blkaddr
	}
	return nullAddr
}

// putTail writes the inline part: a symlink's target, a directory's last
// block, or a file's null block map (every chunk a hole).
func (t *tree) putTail(b []byte, n *node) {
	switch {
	case len(b) == 0:
	case n.e.Type == manifest.Symlink:
		copy(b, n.e.Target)
	case n.e.Type == manifest.Dir:
		t.dirBlock(b, n, len(n.dirSplit)-1)
	default:
		for j := range b {
			b[j] = 0xff
		}
	}
}

// dataBlock fills data block k of n.
func (t *tree) dataBlock(b []byte, n *node, k int) {
	if n.e.Type == manifest.Symlink {
		copy(b, n.e.Target[min(k*blockSize, len(n.e.Target)):])
		return
	}
	t.dirBlock(b, n, k)
}

// dirBlock writes directory n's dirent block k: the dirents, then their
// names (each name's length is up to the next one's nameoff; the last
// runs to the block's end or the first NUL).
func (t *tree) dirBlock(b []byte, n *node, k int) {
	lo, hi := n.dirSplit[k], len(n.dirents)
	if k+1 < len(n.dirSplit) {
		hi = n.dirSplit[k+1]
	}
	ents := n.dirents[lo:hi]
	off := len(ents) * direntSize
	for j, d := range ents {
		c := &t.nodes[d.node]
		e := b[j*direntSize:]
		le.PutUint64(e[0:], c.nid)
		le.PutUint16(e[8:], uint16(off))
		e[10] = fileType(c.e.Type)
		off += copy(b[off:], d.name)
	}
}

func fileType(t manifest.Type) byte {
	switch t {
	case manifest.Dir:
		return ftDir
	case manifest.Symlink:
		return ftSymlink
	}
	return ftReg
}
