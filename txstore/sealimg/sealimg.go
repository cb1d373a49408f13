// Package sealimg writes a tx's sealed metadata image: an EROFS filesystem
// in the composefs layout. It holds the whole tree's metadata (names,
// modes, owners, xattrs, symlink targets, sizes) and no file content; each
// regular file carries overlayfs's redirect to its object in the store's
// objects/ directory and the object's fs-verity digest (metacopy). Mounted
// as overlayfs's lower layer over objects/ as a data-only layer with
// verity=require, the kernel checks each file's digest on open and each
// page on read. The same manifest and digests always give the same bytes.
package sealimg

import (
	"errors"
	"io"

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
	return errors.New("sealimg: not implemented yet")
}
