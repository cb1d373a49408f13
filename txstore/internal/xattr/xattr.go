// Package xattr is the canonical encoding of a file's extended attributes
// (as recorded in a v2 manifest and in an object's key) and the syscalls
// that read and set them. It sits below both manifest and cas, which share
// it.
//
// Encoding: comma-separated name=value items, sorted bytewise by name,
// names unique; the name escaped like manifest paths (bytes <= 0x20, 0x7f,
// '%') plus ',' and '=' as %XX (uppercase hex); the value in lowercase hex
// (may be empty). "" means no xattrs.
package xattr

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/txboot/txboot/txstore/internal/escape"
)

// Bounds. ext4 keeps an inode's xattrs in one block (4 KiB usually), so
// MaxBytes per entry is generous; it keeps a manifest line bounded.
const (
	NameMax  = 255      // XATTR_NAME_MAX
	ValueMax = 65536    // XATTR_SIZE_MAX
	MaxBytes = 32 << 10 // names + values of one entry
	// MaxEncoded bounds an encoded list: each name byte escaped (3 bytes),
	// each value byte as 2 hex digits, plus '=' and ',' per item (an item
	// has at least a 5-byte name, "user.", so at most MaxBytes/5 items).
	MaxEncoded = 3*MaxBytes + 2*MaxBytes/5
)

// Errors.
var (
	// ErrXattr: an extended attribute that cannot be recorded or restored
	// (unsupported namespace, too big, the filesystem refused it).
	ErrXattr = errors.New("extended attribute")
	// ErrTooBig: over NameMax, ValueMax or MaxBytes.
	ErrTooBig = fmt.Errorf("%w too big", ErrXattr)
	// ErrSyntax: an encoded list that is not canonical.
	ErrSyntax = errors.New("malformed xattr list")
)

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Allowed reports whether name is an attribute txboot records: security.*,
// trusted.*, user.* and the two POSIX ACLs. Any other system.* name (or an
// unknown namespace) is refused rather than silently dropped.
func Allowed(name string) bool {
	switch {
	case strings.HasPrefix(name, "security."), strings.HasPrefix(name, "trusted."), strings.HasPrefix(name, "user."):
		return len(name) > strings.IndexByte(name, '.')+1
	case name == ACLAccess, name == ACLDefault:
		return true
	}
	return false
}

// The POSIX ACL attribute names.
const (
	ACLAccess  = "system.posix_acl_access"
	ACLDefault = "system.posix_acl_default"
)

// check validates one attribute against Allowed and the bounds.
func check(x *Xattr) error {
	if !Allowed(x.Name) || strings.IndexByte(x.Name, 0) >= 0 {
		return fmt.Errorf("%w %q: unsupported namespace (txboot records security.*, trusted.*, user.* and POSIX ACLs)", ErrXattr, x.Name)
	}
	if len(x.Name) > NameMax {
		return fmt.Errorf("%w: name %q is %d bytes (at most %d)", ErrTooBig, x.Name, len(x.Name), NameMax)
	}
	if len(x.Value) > ValueMax {
		return fmt.Errorf("%w: %s value is %d bytes (at most %d)", ErrTooBig, x.Name, len(x.Value), ValueMax)
	}
	return nil
}

// Encode returns the canonical encoding of xs (sorted here; xs is not
// modified). Names must be unique, allowed and within the bounds.
func Encode(xs []Xattr) (string, error) {
	if len(xs) == 0 {
		return "", nil
	}
	s := slices.Clone(xs)
	slices.SortFunc(s, func(a, b Xattr) int { return strings.Compare(a.Name, b.Name) })
	total, largest := 0, 0
	for i := range s {
		if err := check(&s[i]); err != nil {
			return "", err
		}
		if i > 0 && s[i].Name == s[i-1].Name {
			return "", fmt.Errorf("%w %q: listed twice", ErrXattr, s[i].Name)
		}
		total += len(s[i].Name) + len(s[i].Value)
		if len(s[i].Value) > len(s[largest].Value) {
			largest = i
		}
	}
	if total > MaxBytes {
		return "", fmt.Errorf("%w: %d bytes of names and values, at most %d (the largest, %s, has %d)",
			ErrTooBig, total, MaxBytes, s[largest].Name, len(s[largest].Value))
	}
	var b []byte
	for i := range s {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendName(b, s[i].Name)
		b = append(b, '=')
		b = hex.AppendEncode(b, s[i].Value)
	}
	return string(b), nil
}

func appendName(b []byte, s string) []byte { return escape.Append(b, s, true) }

func unescapeName(s string) (string, error) {
	u, ok := escape.Unescape(s)
	if !ok {
		return "", fmt.Errorf("%w: bad escape in %q", ErrSyntax, s)
	}
	return u, nil
}

// Parse decodes a canonical list ("" is none). Anything Encode would not
// produce byte for byte (order, duplicates, case of hex, escapes, bounds)
// is ErrSyntax (or ErrXattr for a bad name or size).
func Parse(s string) ([]Xattr, error) {
	if s == "" {
		return nil, nil
	}
	if len(s) > MaxEncoded {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooBig, len(s))
	}
	var xs []Xattr
	for _, item := range strings.Split(s, ",") {
		n, v, ok := strings.Cut(item, "=")
		if !ok || n == "" {
			return nil, fmt.Errorf("%w: item %q is not name=value", ErrSyntax, item)
		}
		name, err := unescapeName(n)
		if err != nil {
			return nil, err
		}
		val, err := hex.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("%w: value of %q is not hex", ErrSyntax, name)
		}
		xs = append(xs, Xattr{Name: name, Value: val})
	}
	enc, err := Encode(xs)
	if err != nil {
		return nil, err
	}
	if enc != s {
		return nil, fmt.Errorf("%w: not in canonical form (sorted, unique, lowercase hex, minimal escapes)", ErrSyntax)
	}
	return xs, nil
}

// Diff describes how got differs from want (both canonical encodings):
// "NAME missing", "NAME differs", "extra xattr NAME", in name order.
func Diff(want, got string) []string {
	if want == got {
		return nil
	}
	w, err1 := Parse(want)
	g, err2 := Parse(got)
	if err1 != nil || err2 != nil {
		return []string{fmt.Sprintf("xattrs %q, want %q", got, want)}
	}
	var out []string
	for i, j := 0, 0; i < len(w) || j < len(g); {
		switch {
		case j == len(g) || (i < len(w) && w[i].Name < g[j].Name):
			out = append(out, w[i].Name+" missing")
			i++
		case i == len(w) || g[j].Name < w[i].Name:
			out = append(out, "extra xattr "+g[j].Name)
			j++
		default:
			if !bytes.Equal(w[i].Value, g[j].Value) {
				out = append(out, w[i].Name+" differs")
			}
			i++
			j++
		}
	}
	return out
}

// ForObject is the list an object gets for a file recorded with list enc:
// objects have their write bits stripped (cas.NewKey), and an access ACL
// mirrors the mode in its owner, mask (or owning group, without a mask)
// and other entries, so their write bits go too (chmod would strip them
// anyway). Anything else is unchanged.
func ForObject(enc string) string {
	if !strings.Contains(enc, ACLAccess+"=") {
		return enc
	}
	xs, err := Parse(enc)
	if err != nil {
		return enc // not canonical: left for the caller's checks to refuse
	}
	for i := range xs {
		if xs[i].Name == ACLAccess {
			xs[i].Value = stripACLWrite(xs[i].Value)
		}
	}
	out, err := Encode(xs)
	if err != nil {
		return enc
	}
	return out
}

// ACL entry tags (linux/posix_acl.h) and the raw layout: a 4-byte version,
// then 8-byte entries (le16 tag, le16 perm, le32 id).
const (
	aclUserObj  = 0x01
	aclGroupObj = 0x04
	aclMask     = 0x10
	aclOther    = 0x20
	aclWrite    = 0x02
)

func stripACLWrite(v []byte) []byte {
	if len(v) < 4 || (len(v)-4)%8 != 0 {
		return v // not an ACL the kernel would take: setting it will fail
	}
	out := append([]byte(nil), v...)
	hasMask := false
	for i := 4; i < len(out); i += 8 {
		hasMask = hasMask || binary.LittleEndian.Uint16(out[i:]) == aclMask
	}
	for i := 4; i < len(out); i += 8 {
		switch tag := binary.LittleEndian.Uint16(out[i:]); {
		case tag == aclUserObj, tag == aclMask, tag == aclOther, tag == aclGroupObj && !hasMask:
			perm := binary.LittleEndian.Uint16(out[i+2:])
			binary.LittleEndian.PutUint16(out[i+2:], perm&^aclWrite)
		}
	}
	return out
}
