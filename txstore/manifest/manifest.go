// Package manifest is the canonical, deterministic description of one tree.
//
// Encoding (text, one entry a line, sorted bytewise by path, root first):
//
//	txboot-manifest-v1
//	d <path> <mode> <uid> <gid>
//	f <path> <mode> <uid> <gid> <size> <sha256>
//	l <path> <uid> <gid> <target>
//
// Paths are relative to the tree root ("." is the root itself); paths and
// targets escape bytes <= 0x20, 0x7f and '%' as %XX so fields never contain
// spaces. Modes are 4 octal digits (permission, setuid, setgid, sticky).
// Nothing else about a file (times, inode numbers, order of creation) is
// recorded, so the same tree always has the same encoding and digest.
// Device nodes, FIFOs and sockets are rejected: /usr has no business holding
// them, and refusing them keeps every tree blittable by hardlinks.
package manifest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/txboot/txboot/txstore/cas"
)

// Header is the first line of every v1 manifest.
const Header = "txboot-manifest-v1"

// Limits that keep a hostile manifest from exhausting memory.
const (
	MaxPathLen = 4096
	MaxEntries = 8 << 20
	MaxSize    = 1 << 30
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
}

// Key is the CAS object a file entry is hardlinked to.
func (e *Entry) Key() cas.Key { return cas.NewKey(e.Hash, e.Mode, e.UID, e.GID) }

// Manifest is a whole tree, entries in canonical order.
type Manifest struct {
	Entries []Entry
}

// Errors.
var (
	ErrBad         = errors.New("malformed manifest")
	ErrUnsafePath  = errors.New("unsafe path")
	ErrUnsupported = errors.New("unsupported file type")
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
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." {
			return fmt.Errorf("%w: %q", ErrUnsafePath, p)
		}
	}
	return nil
}

func escape(b *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c == 0x7f || c == '%' {
			fmt.Fprintf(b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
}

func unescape(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%w: bad escape in %q", ErrBad, s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil || strings.ToUpper(s[i+1:i+3]) != s[i+1:i+3] {
			return "", fmt.Errorf("%w: bad escape in %q", ErrBad, s)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// Encode returns the canonical encoding. Entries must be in canonical order.
func (m *Manifest) Encode() []byte {
	var b bytes.Buffer
	b.Grow(len(m.Entries) * 120)
	b.WriteString(Header)
	b.WriteByte('\n')
	for i := range m.Entries {
		e := &m.Entries[i]
		b.WriteByte(byte(e.Type))
		b.WriteByte(' ')
		escape(&b, e.Path)
		switch e.Type {
		case Dir:
			fmt.Fprintf(&b, " %04o %d %d", e.Mode, e.UID, e.GID)
		case File:
			fmt.Fprintf(&b, " %04o %d %d %d %s", e.Mode, e.UID, e.GID, e.Size, e.Hash)
		case Symlink:
			fmt.Fprintf(&b, " %d %d ", e.UID, e.GID)
			escape(&b, e.Target)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
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
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 6*MaxPathLen+256)
	if !sc.Scan() || sc.Text() != Header {
		return nil, fmt.Errorf("%w: missing header %q", ErrBad, Header)
	}
	m := &Manifest{}
	dirs := map[string]bool{}
	line := 1
	for sc.Scan() {
		line++
		if len(m.Entries) >= MaxEntries {
			return nil, fmt.Errorf("%w: more than %d entries", ErrBad, MaxEntries)
		}
		e, err := decodeLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if len(m.Entries) == 0 {
			if e.Path != "." || e.Type != Dir {
				return nil, fmt.Errorf("line %d: %w: first entry must be the root directory", line, ErrBad)
			}
		} else {
			prev := m.Entries[len(m.Entries)-1].Path
			if !Less(prev, e.Path) {
				return nil, fmt.Errorf("line %d: %w: %q out of order or repeated", line, ErrBad, e.Path)
			}
			parent := "."
			if i := strings.LastIndexByte(e.Path, '/'); i >= 0 {
				parent = e.Path[:i]
			}
			if !dirs[parent] {
				return nil, fmt.Errorf("line %d: %w: parent of %q is not a directory listed before it", line, ErrBad, e.Path)
			}
		}
		if e.Type == Dir {
			dirs[e.Path] = true
		}
		m.Entries = append(m.Entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: line %d: %v", ErrBad, line+1, err)
	}
	if len(m.Entries) == 0 {
		return nil, fmt.Errorf("%w: no root entry", ErrBad)
	}
	if !bytes.Equal(m.Encode(), data) {
		return nil, fmt.Errorf("%w: not in canonical form", ErrBad)
	}
	return m, nil
}

func decodeLine(s string) (Entry, error) {
	var e Entry
	f := strings.Split(s, " ")
	if len(f) < 2 || len(f[0]) != 1 {
		return e, fmt.Errorf("%w: %q", ErrBad, s)
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
		if (e.Type == Dir && len(f) != 5) || (e.Type == File && len(f) != 7) {
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
		if len(f) != 5 {
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
