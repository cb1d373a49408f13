// Package manifest is the canonical, deterministic description of one tree.
//
// Encoding (text, one entry a line, sorted bytewise by path, root first):
//
//	txboot-manifest-v2
//	d <path> <mode> <uid> <gid>[ <xattrs>]
//	f <path> <mode> <uid> <gid> <size> <sha256>[ <xattrs>]
//	l <path> <uid> <gid> <target>[ <xattrs>]
//
// Paths are relative to the tree root ("." is the root itself); paths and
// targets escape bytes <= 0x20, 0x7f and '%' as %XX so fields never contain
// spaces. Modes are 4 octal digits (permission, setuid, setgid, sticky).
// The optional last field, present only when the entry has at least one
// extended attribute, is "x:" and the canonical list (see Xattrs): names
// escaped like paths plus ',' and '=', values in lowercase hex, sorted by
// name. Recorded are security.*, trusted.*, user.* and the POSIX ACLs
// (raw kernel bytes); any other attribute is refused at scan time.
//
// Version 1 (header txboot-manifest-v1) is the same without the xattrs
// field; it still decodes, to the same bytes and digest, and says nothing
// about xattrs (verify does not check them for it).
// Nothing else about a file (times, inode numbers, order of creation) is
// recorded, so the same tree always has the same encoding and digest.
// Device nodes, FIFOs and sockets are rejected: /usr has no business holding
// them, and refusing them keeps every tree blittable by hardlinks.
package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/escape"
	"github.com/txboot/txboot/txstore/internal/xattr"
)

// Headers: the first line of a manifest of each version.
const (
	HeaderV1 = "txboot-manifest-v1"
	HeaderV2 = "txboot-manifest-v2"
	// Header is the current version's, the one Encode writes by default.
	Header = HeaderV2
)

// HasHeader reports whether text starts with a known header line (newline
// included). Both headers have the same length.
func HasHeader(text []byte) bool {
	return len(text) > len(HeaderV2) && text[len(HeaderV2)] == '\n' &&
		(string(text[:len(HeaderV2)]) == HeaderV2 || string(text[:len(HeaderV1)]) == HeaderV1)
}

// Xattr bounds, per entry (see xattr.NameMax &c.): a name at most
// XattrNameMax bytes, a value at most XattrValueMax, and names plus values
// at most MaxXattrBytes (ext4 keeps an inode's xattrs in one block anyway).
const (
	XattrNameMax  = xattr.NameMax
	XattrValueMax = xattr.ValueMax
	MaxXattrBytes = xattr.MaxBytes
)

// Limits that keep a hostile or damaged manifest from exhausting memory.
// A 125k-entry /usr encodes to about 20 MB (some 160 bytes a line) and
// decodes to 13 MB of Entry values (104 bytes each; xattrs are substrings
// of the text). MaxSize holds some 840k entries of that kind, and
// MaxEntries 2M short ones: 6 and 16 times that tree. A manifest at both
// limits then needs about 340 MiB (text and entries) to decode, against
// 1.7 GiB under the former 1 GiB / 8M limits, so a small device fails it
// cleanly instead of being killed for memory.
const (
	MaxPathLen = 4096
	MaxEntries = 2 << 20
	MaxSize    = 128 << 20
	// MaxLineLen bounds one line, newline excluded: an escaped path and an
	// escaped symlink target (3 bytes a byte at most), plus the fields, plus
	// the xattrs field at its largest.
	MaxLineLen = 6*MaxPathLen + 256 + 3 + xattr.MaxEncoded
)

// Type of an entry.
type Type byte

const (
	Dir     Type = 'd'
	File    Type = 'f'
	Symlink Type = 'l'
)

// Entry is one path in a tree.
type Entry struct {
	Path   string // "." for the root, else "a/b/c"
	Type   Type
	Mode   uint32 // 07777 bits; unused for symlinks
	UID    uint32
	GID    uint32
	Size   int64    // files only
	Hash   cas.Hash // files only
	Target string   // symlinks only
	// Xattrs is the canonical encoded list (EncodeXattrs), "" for none.
	Xattrs string
}

// Key is the CAS object a file entry is hardlinked to. Its xattrs are part
// of it: they live in the inode every tree linking the object shares. Like
// the mode, an access ACL loses its write bits (see xattr.ForObject).
func (e *Entry) Key() cas.Key {
	k := cas.NewKey(e.Hash, e.Mode, e.UID, e.GID)
	k.Xattrs = xattr.ForObject(e.Xattrs)
	return k
}

// Manifest is a whole tree, entries in canonical order.
type Manifest struct {
	// Version is the format: Decode sets 1 or 2, Scan 2. Encode writes v1
	// only for 1 (such a manifest must have no xattrs), else v2.
	Version int
	Entries []Entry
}

// Xattr is one extended attribute.
type Xattr = xattr.Xattr

// EncodeXattrs returns the canonical list of xs for Entry.Xattrs (sorted
// here); an unsupported name, a duplicate or an over-bound size is an error
// wrapping ErrXattr (ErrXattrTooBig for sizes).
func EncodeXattrs(xs []Xattr) (string, error) { return xattr.Encode(xs) }

// ParseXattrs decodes Entry.Xattrs; anything not canonical is ErrBad.
func ParseXattrs(s string) ([]Xattr, error) {
	xs, err := xattr.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBad, err)
	}
	return xs, nil
}

// Errors.
var (
	ErrBad         = errors.New("malformed manifest")
	ErrUnsafePath  = errors.New("unsafe path")
	ErrUnsupported = errors.New("unsupported file type")
	// ErrXattr: an extended attribute txboot cannot record (a system.*
	// name other than the POSIX ACLs) or restore.
	ErrXattr = xattr.ErrXattr
	// ErrXattrTooBig: over XattrNameMax, XattrValueMax or MaxXattrBytes;
	// also an ErrXattr.
	ErrXattrTooBig = xattr.ErrTooBig
)

// Less is the canonical order: the root first, then bytewise by path, which
// puts every directory before its contents.
func Less(a, b string) bool {
	if a == "." || b == "." {
		return a == "." && b != "."
	}
	return a < b
}

// Sort puts entries in canonical order.
func (m *Manifest) Sort() {
	sort.Slice(m.Entries, func(i, j int) bool { return Less(m.Entries[i].Path, m.Entries[j].Path) })
}

// CheckPath rejects anything that could escape a tree: absolute paths,
// empty, "." or ".." components, NUL bytes, overlong paths.
func CheckPath(p string) error {
	if p == "." {
		return nil
	}
	if p == "" || len(p) > MaxPathLen || p[0] == '/' || strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("%w: %q", ErrUnsafePath, p)
	}
	// Walk the components without allocating: decoding 100k+ entries
	// calls this for every one of them.
	for rest := p; ; {
		c := rest
		i := strings.IndexByte(rest, '/')
		if i >= 0 {
			c, rest = rest[:i], rest[i+1:]
		}
		if c == "" || c == "." || c == ".." {
			return fmt.Errorf("%w: %q", ErrUnsafePath, p)
		}
		if i < 0 {
			return nil
		}
	}
}

func appendEscaped(b []byte, s string) []byte { return escape.Append(b, s, false) }

func unescape(s string) (string, error) {
	u, ok := escape.Unescape(s)
	if !ok {
		return "", fmt.Errorf("%w: bad escape in %q", ErrBad, s)
	}
	return u, nil
}

// Encode returns the canonical encoding. Entries must be in canonical order.
func (m *Manifest) Encode() []byte {
	b := make([]byte, 0, len(Header)+1+len(m.Entries)*120)
	if m.Version == 1 {
		b = append(b, HeaderV1...)
	} else {
		b = append(b, HeaderV2...)
	}
	b = append(b, '\n')
	for i := range m.Entries {
		b = appendEntry(b, &m.Entries[i])
	}
	return b
}

// appendEntry appends e's line, newline included. It is hand-rolled rather
// than fmt-based because loading a manifest re-encodes every line to check
// it is canonical, and that sits on the boot path.
func appendEntry(b []byte, e *Entry) []byte {
	b = append(b, byte(e.Type), ' ')
	b = appendEscaped(b, e.Path)
	switch e.Type {
	case Dir, File:
		b = append(b, ' ', '0'+byte(e.Mode>>9&7), '0'+byte(e.Mode>>6&7), '0'+byte(e.Mode>>3&7), '0'+byte(e.Mode&7), ' ')
		b = strconv.AppendUint(b, uint64(e.UID), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(e.GID), 10)
		if e.Type == File {
			b = append(b, ' ')
			b = strconv.AppendInt(b, e.Size, 10)
			b = append(b, ' ')
			b = hex.AppendEncode(b, e.Hash[:])
		}
	case Symlink:
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(e.UID), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(e.GID), 10)
		b = append(b, ' ')
		b = appendEscaped(b, e.Target)
	}
	if e.Xattrs != "" {
		b = append(b, " x:"...)
		b = append(b, e.Xattrs...)
	}
	return append(b, '\n')
}

// Digest is "sha256:<hex>" of the canonical encoding.
func Digest(encoded []byte) string {
	sum := sha256.Sum256(encoded)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Digest of this manifest.
func (m *Manifest) Digest() string { return Digest(m.Encode()) }

func parseUint32(s string, base int) (uint32, error) {
	v, err := strconv.ParseUint(s, base, 32)
	return uint32(v), err
}

// Decode parses and validates a manifest. It accepts only the canonical
// encoding: sorted, unique, every parent a directory listed before its
// children, safe paths, and bytes that re-encode identically.
func Decode(data []byte) (*Manifest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes is over the limit", ErrBad, len(data))
	}
	// One string for the whole text: every path is a substring of it, so
	// decoding allocates per entry only what it must (escaped paths).
	return decode(string(data))
}

// DecodeOwned is Decode for a buffer the caller hands over: the manifest's
// strings share its memory, so it must never be modified afterwards. It
// saves copying a manifest of tens of MB on the boot path.
func DecodeOwned(data []byte) (*Manifest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes is over the limit", ErrBad, len(data))
	}
	if len(data) == 0 {
		return decode("")
	}
	return decode(unsafe.String(&data[0], len(data)))
}

func decode(text string) (*Manifest, error) {
	version := 2
	switch {
	case strings.HasPrefix(text, HeaderV2+"\n"):
	case strings.HasPrefix(text, HeaderV1+"\n"):
		version = 1
	default:
		return nil, fmt.Errorf("%w: missing header %q (or %q)", ErrBad, HeaderV2, HeaderV1)
	}
	text = text[len(HeaderV2)+1:]
	if text != "" && text[len(text)-1] != '\n' {
		return nil, fmt.Errorf("line %d: %w: not in canonical form (no final newline)", strings.Count(text, "\n")+2, ErrBad)
	}
	n := strings.Count(text, "\n")
	if n > MaxEntries {
		return nil, fmt.Errorf("%w: more than %d entries", ErrBad, MaxEntries)
	}
	m := &Manifest{Version: version, Entries: make([]Entry, n)}
	// Lines decode independently, so big manifests (this is on the boot
	// path) are decoded in parallel chunks; the checks that relate lines
	// to each other run after, in order.
	chunks := 1
	if n >= 8192 {
		chunks = min(runtime.GOMAXPROCS(0), 8)
	}
	errs := make([]error, chunks)
	var wg sync.WaitGroup
	start, first := 0, 0
	for c := 0; c < chunks; c++ {
		end, last := len(text), n
		if c < chunks-1 {
			last = n / chunks * (c + 1)
			end = start + nthLineEnd(text[start:], last-first)
		}
		wg.Add(1)
		go func(c int, part string, first int) {
			defer wg.Done()
			errs[c] = decodeLines(part, m.Entries[first:], first+2, version)
		}(c, text[start:end], first)
		start, first = end, last
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: no root entry", ErrBad)
	}
	if e := &m.Entries[0]; e.Path != "." || e.Type != Dir {
		return nil, fmt.Errorf("line 2: %w: first entry must be the root directory", ErrBad)
	}
	dirs := map[string]struct{}{".": {}}
	for i := 1; i < n; i++ {
		e := &m.Entries[i]
		if !Less(m.Entries[i-1].Path, e.Path) {
			return nil, fmt.Errorf("line %d: %w: %q out of order or repeated", i+2, ErrBad, e.Path)
		}
		parent := "."
		if j := strings.LastIndexByte(e.Path, '/'); j >= 0 {
			parent = e.Path[:j]
		}
		if _, ok := dirs[parent]; !ok {
			return nil, fmt.Errorf("line %d: %w: parent of %q is not a directory listed before it", i+2, ErrBad, e.Path)
		}
		if e.Type == Dir {
			dirs[e.Path] = struct{}{}
		}
	}
	return m, nil
}

// nthLineEnd is the offset just past the k-th newline of text.
func nthLineEnd(text string, k int) int {
	off := 0
	for ; k > 0; k-- {
		off += strings.IndexByte(text[off:], '\n') + 1
	}
	return off
}

// decodeLines decodes newline-terminated lines into out, checking each one
// re-encodes to itself; line is the first one's number for messages.
func decodeLines(text string, out []Entry, line, version int) error {
	var scratch []byte
	for i := 0; text != ""; i, line = i+1, line+1 {
		nl := strings.IndexByte(text, '\n')
		s := text[:nl]
		text = text[nl+1:]
		if len(s) > MaxLineLen {
			return fmt.Errorf("line %d: %w: line too long", line, ErrBad)
		}
		e, err := decodeLine(s, version)
		if err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
		scratch = appendEntry(scratch[:0], &e)
		if string(scratch[:len(scratch)-1]) != s {
			return fmt.Errorf("line %d: %w: not in canonical form", line, ErrBad)
		}
		out[i] = e
	}
	return nil
}

// fields splits s at single spaces into at most len(f) fields without
// allocating; n > len(f) means there were too many.
func fields(s string, f *[8]string) (n int) {
	for {
		i := strings.IndexByte(s, ' ')
		if n == len(f) {
			return n + 1
		}
		if i < 0 {
			f[n] = s
			return n + 1
		}
		f[n] = s[:i]
		s = s[i+1:]
		n++
	}
}

func decodeLine(s string, version int) (Entry, error) {
	var e Entry
	var f [8]string
	n := fields(s, &f)
	if n < 2 || len(f[0]) != 1 {
		return e, fmt.Errorf("%w: %q", ErrBad, s)
	}
	// The xattrs field is told apart by the field count (a symlink target
	// may itself start with "x:"), and only v2 has it.
	if version >= 2 && n == plainFields(Type(f[0][0]))+1 {
		x, ok := strings.CutPrefix(f[n-1], "x:")
		if !ok {
			return e, fmt.Errorf("%w: wrong field count in %q", ErrBad, s)
		}
		if x == "" {
			return e, fmt.Errorf("%w: empty xattr list in %q", ErrBad, s)
		}
		if _, err := xattr.Parse(x); err != nil {
			return e, fmt.Errorf("%w: %w in %q", ErrBad, err, s)
		}
		e.Xattrs = x
		n--
	}
	e.Type = Type(f[0][0])
	p, err := unescape(f[1])
	if err != nil {
		return e, err
	}
	if err := CheckPath(p); err != nil {
		return e, err
	}
	e.Path = p
	bad := func(what string) (Entry, error) { return e, fmt.Errorf("%w: %s in %q", ErrBad, what, s) }
	switch e.Type {
	case Dir, File:
		if (e.Type == Dir && n != 5) || (e.Type == File && n != 7) {
			return bad("wrong field count")
		}
		if len(f[2]) != 4 {
			return bad("mode")
		}
		if e.Mode, err = parseUint32(f[2], 8); err != nil || e.Mode > 07777 {
			return bad("mode")
		}
		if e.UID, err = parseUint32(f[3], 10); err != nil {
			return bad("uid")
		}
		if e.GID, err = parseUint32(f[4], 10); err != nil {
			return bad("gid")
		}
		if e.Type == File {
			if e.Size, err = strconv.ParseInt(f[5], 10, 64); err != nil || e.Size < 0 {
				return bad("size")
			}
			if e.Hash, err = cas.ParseHash(f[6]); err != nil {
				return bad("hash")
			}
		}
	case Symlink:
		if n != 5 {
			return bad("wrong field count")
		}
		if e.UID, err = parseUint32(f[2], 10); err != nil {
			return bad("uid")
		}
		if e.GID, err = parseUint32(f[3], 10); err != nil {
			return bad("gid")
		}
		if e.Target, err = unescape(f[4]); err != nil {
			return e, err
		}
		if e.Target == "" || len(e.Target) > MaxPathLen || strings.IndexByte(e.Target, 0) >= 0 {
			return bad("symlink target")
		}
		if e.Path == "." {
			return bad("root must be a directory")
		}
	default:
		return bad("type")
	}
	return e, nil
}

// plainFields is how many fields a line of type t has without xattrs.
func plainFields(t Type) int {
	if t == File {
		return 7
	}
	return 5
}

// Kernels lists the versions V with a regular file lib/modules/V/vmlinuz,
// the layout txboot (like moss and Fedora) uses to ship kernels in /usr.
func (m *Manifest) Kernels() []string {
	var out []string
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Type != File || !strings.HasPrefix(e.Path, "lib/modules/") || !strings.HasSuffix(e.Path, "/vmlinuz") {
			continue
		}
		v := strings.TrimSuffix(strings.TrimPrefix(e.Path, "lib/modules/"), "/vmlinuz")
		if v != "" && !strings.Contains(v, "/") {
			out = append(out, v)
		}
	}
	return out
}

// Stats summarises a manifest.
func (m *Manifest) Stats() (entries int, bytes int64) {
	for i := range m.Entries {
		if m.Entries[i].Type == File {
			bytes += m.Entries[i].Size
		}
	}
	return len(m.Entries), bytes
}
