// Package sealimg writes a tx's sealed metadata image: an EROFS filesystem
// in the composefs layout. It holds the whole tree's metadata (names,
// modes, owners, xattrs, symlink targets, sizes) and no file content; each
// regular file carries overlayfs's redirect to its object in the store's
// objects/ directory and the object's fs-verity digest (metacopy). Mounted
// as overlayfs's lower layer over objects/ as a data-only layer with
// verity=require, the kernel checks each file's digest on open and each
// page on read. The same manifest and digests always give the same bytes.
//
// The image, block size 4096, no compression, no checksum feature:
//
//	block 0       1024 zero bytes, the superblock (128 bytes), inodes…
//	meta area     every inode in manifest order (root first, so its nid
//	              fits the superblock's 16 bits), 32-byte aligned; an inode
//	              with its inline part never straddles a block boundary
//	data area     directory blocks too big to inline, long symlink targets
//
// Inodes: compact (32 bytes) unless the uid, gid, size or link count needs
// the extended form (64 bytes); mtime is 0 everywhere. Xattrs live in the
// inode body (no shared xattrs, no name filter). A directory's dirents are
// inline when they fit in one block with the inode, else in data blocks
// with a tail of at most half a block inline; a symlink's target is inline
// when it fits. A regular file of nonzero size is chunk-based with one
// 4-byte null block address per chunk (a hole as big as the file) plus
// trusted.overlay.redirect and trusted.overlay.metacopy, as composefs
// writes it; an empty file is a plain empty inode.
package sealimg

import (
	"bufio"
	"errors"
	"io"
	"strings"

	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/verity"
)

// FileName is the image's name inside trees/<id>/.
const FileName = "image.erofs"

// Object says where a file entry's content lives and what it hashes to.
type Object struct {
	// Redirect is the object's path inside the data-only layer (the
	// store's objects/ directory), absolute: "/ab/<object name>".
	Redirect string
	// Verity is the object's fs-verity digest.
	Verity verity.Sum
}

// ErrUnsealable: the tree holds something the layout cannot carry (an
// xattr in overlayfs's own trusted.overlay. namespace).
var ErrUnsealable = errors.New("tree cannot be sealed")

// Build writes m's image to w. obj is called once per regular file of
// nonzero size, in manifest order; empty files need no object.
func Build(w io.Writer, m *manifest.Manifest, obj func(e *manifest.Entry) (Object, error)) error {
	t, err := newTree(m, obj)
	if err != nil {
		return err
	}
	t.layout()
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := t.write(bw); err != nil {
		return err
	}
	return bw.Flush()
}

// OverlayOptions is the mount data of the sealed /usr's overlayfs: the
// image mounted at mnt as the only ordinary lower layer, objects as a
// data-only lower layer ("::"), and every file's content checked against
// the digest the image records.
func OverlayOptions(mnt, objects string) string {
	return OverlayOptionsVerity(mnt, objects, "require")
}

// OverlayOptionsVerity is OverlayOptions with overlayfs's verity= mode:
// "require" for a sealed boot, "off" where the kernel has no fs-verity
// (the digests are then not checked; tests on such hosts use it).
func OverlayOptionsVerity(mnt, objects, mode string) string {
	return "ro,lowerdir=" + escapeOption(mnt) + "::" + escapeOption(objects) +
		",metacopy=on,redirect_dir=on,verity=" + mode
}

// escapeOption escapes what overlayfs's option parser splits on (',' between
// options, ':' between layers) and the escape itself.
func escapeOption(s string) string {
	if !strings.ContainsAny(s, `:,\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == ':' || c == ',' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
