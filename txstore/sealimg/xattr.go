package sealimg

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/txboot/txboot/txstore/manifest"
)

// EROFS xattr name indexes: the entry stores the name without the prefix.
const (
	xattrUser       = 1
	xattrACLAccess  = 2
	xattrACLDefault = 3
	xattrTrusted    = 4
	xattrSecurity   = 6

	ibodyHeaderSize = 12 // erofs_xattr_ibody_header, no shared xattrs
	overlayPrefix   = "trusted.overlay."
)

// metacopyLen is struct ovl_metacopy with a SHA-256 digest: version, len,
// flags, digest_algo (1 = FS_VERITY_HASH_ALG_SHA256), digest.
const metacopyLen = 4 + 32

// overlayXattrs are what make overlayfs read a file's content from its
// object and check the object's fs-verity digest.
func overlayXattrs(o Object) []manifest.Xattr {
	mc := make([]byte, metacopyLen)
	mc[1], mc[3] = metacopyLen, 1
	copy(mc[4:], o.Verity[:])
	return []manifest.Xattr{
		{Name: overlayPrefix + "metacopy", Value: mc},
		{Name: overlayPrefix + "redirect", Value: []byte(o.Redirect)},
	}
}

// xattrIndex splits name into its EROFS prefix index and suffix.
func xattrIndex(name string) (byte, string, bool) {
	switch {
	case name == "system.posix_acl_access":
		return xattrACLAccess, "", true
	case name == "system.posix_acl_default":
		return xattrACLDefault, "", true
	case strings.HasPrefix(name, "user."):
		return xattrUser, name[len("user."):], true
	case strings.HasPrefix(name, "trusted."):
		return xattrTrusted, name[len("trusted."):], true
	case strings.HasPrefix(name, "security."):
		return xattrSecurity, name[len("security."):], true
	}
	return 0, "", false
}

// encodeXattrs returns e's inode-body xattrs (its own, then extra), header
// included, or nil when there are none. An xattr in overlayfs's namespace
// is ErrUnsealable: the overlay would take it as its own.
func encodeXattrs(e *manifest.Entry, extra []manifest.Xattr) ([]byte, error) {
	xs, err := manifest.ParseXattrs(e.Xattrs)
	if err != nil {
		return nil, fmt.Errorf("sealimg: %s: %w", e.Path, err)
	}
	if len(xs)+len(extra) == 0 {
		return nil, nil
	}
	b := make([]byte, ibodyHeaderSize, ibodySize(xs)+ibodySize(extra)-ibodyHeaderSize)
	for _, x := range xs {
		if strings.HasPrefix(x.Name, overlayPrefix) {
			return nil, fmt.Errorf("sealimg: %w: %s has xattr %s", ErrUnsealable, e.Path, x.Name)
		}
		if b, err = appendXattr(b, x); err != nil {
			return nil, fmt.Errorf("sealimg: %s: %w", e.Path, err)
		}
	}
	for _, x := range extra {
		if b, err = appendXattr(b, x); err != nil {
			return nil, fmt.Errorf("sealimg: %s: %w", e.Path, err)
		}
	}
	if (len(b)-ibodyHeaderSize)/4+1 > 0xffff {
		return nil, fmt.Errorf("sealimg: %w: %s: xattrs too big", ErrUnsealable, e.Path)
	}
	return b, nil
}

// ibodySize is the header and the entries of xs: an upper bound when a
// name has no EROFS prefix (appendXattr then refuses it).
func ibodySize(xs []manifest.Xattr) int {
	n := ibodyHeaderSize
	for _, x := range xs {
		n += (4 + len(x.Name) + len(x.Value) + 3) &^ 3
	}
	return n
}

// appendXattr appends one erofs_xattr_entry, padded to 4 bytes.
func appendXattr(b []byte, x manifest.Xattr) ([]byte, error) {
	idx, suffix, ok := xattrIndex(x.Name)
	if !ok || len(suffix) > 255 || len(x.Value) > 0xffff {
		return nil, fmt.Errorf("%w: xattr %s", ErrUnsealable, x.Name)
	}
	b = append(b, byte(len(suffix)), idx)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(x.Value)))
	b = append(b, suffix...)
	b = append(b, x.Value...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b, nil
}

// icount is i_xattr_icount for an inode body of size bytes: the header
// counts as one 4-byte unit, and 12 bytes.
func icount(size int) uint16 {
	if size == 0 {
		return 0
	}
	return uint16((size-ibodyHeaderSize)/4 + 1)
}
