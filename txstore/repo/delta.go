package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"github.com/txboot/txboot/txstore/manifest"
)

// ErrBadDelta: a manifest delta is malformed, does not fit its parent, or
// does not produce the digest it names.
var ErrBadDelta = errors.New("bad manifest delta")

// DeltaHeader starts every delta's text.
const DeltaHeader = "txboot-delta 1"

// DeltaPath is "deltas/<to hex>-<from hex>.zst": the delta that turns the
// manifest of tx digest from into the one of to.
func DeltaPath(to, from string) (string, error) {
	if err := checkHex(to); err != nil {
		return "", err
	}
	if err := checkHex(from); err != nil {
		return "", err
	}
	return "deltas/" + to + "-" + from + ".zst", nil
}

// A delta (zstd text, uncompressed form below) is a position-based line
// script against the parent's canonical manifest encoding, then the object
// table lines of the contents the parent does not use:
//
//	txboot-delta 1 sha256:<from> sha256:<to>
//	=N          copy the next N parent lines
//	-N          skip the next N parent lines
//	+LINE       insert LINE (a manifest line, without its newline)
//	oTABLELINE  an object table line ("<hex> <size> <r|z> <stored>")
//
// N is a canonical decimal ≥ 1. The script must consume the parent exactly;
// table lines come last, sorted by hash. The result's SHA-256 must be the
// "to" digest: it is checked before anything parses the result.

// MakeDelta returns the delta text from parent to target (both canonical
// manifests, entries in canonical order) with table: the object table
// lines for the contents target uses and parent does not. It checks its
// own work by applying it.
func MakeDelta(parent, target *manifest.Manifest, table []TableEntry) ([]byte, error) {
	praw, traw := parent.Encode(), target.Encode()
	from, to := manifest.Digest(praw), manifest.Digest(traw)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s %s\n", DeltaHeader, from, to)
	var op byte
	var run int
	flush := func() {
		if run > 0 {
			b.WriteByte(op)
			b.WriteString(strconv.Itoa(run))
			b.WriteByte('\n')
		}
		run = 0
	}
	emit := func(o byte) {
		if o != op {
			flush()
			op = o
		}
		run++
	}
	emit('=') // the header line
	pl, tl := lines(praw)[1:], lines(traw)[1:]
	i, j := 0, 0
	for i < len(pl) || j < len(tl) {
		switch {
		case i < len(pl) && j < len(tl) && parent.Entries[i].Path == target.Entries[j].Path:
			if bytes.Equal(pl[i], tl[j]) {
				emit('=')
			} else {
				emit('-')
				flush()
				op = 0
				b.WriteByte('+')
				b.Write(tl[j])
				b.WriteByte('\n')
			}
			i++
			j++
		case j >= len(tl) || (i < len(pl) && manifest.Less(parent.Entries[i].Path, target.Entries[j].Path)):
			emit('-')
			i++
		default:
			flush()
			op = 0
			b.WriteByte('+')
			b.Write(tl[j])
			b.WriteByte('\n')
			j++
		}
	}
	flush()
	text, err := EncodeTable(table)
	if err != nil {
		return nil, err
	}
	for _, l := range lines(text) {
		b.WriteByte('o')
		b.Write(l)
		b.WriteByte('\n')
	}
	out := b.Bytes()
	got, _, _, err := ApplyDelta(praw, out, from, to)
	if err != nil || !bytes.Equal(got, traw) {
		return nil, fmt.Errorf("%w: made a delta that does not reproduce %s: %v", ErrBadDelta, to, err)
	}
	return out, nil
}

// lines splits text at newlines (each line without its newline; a final
// newline ends the last line rather than starting an empty one).
func lines(text []byte) [][]byte {
	var out [][]byte
	for len(text) > 0 {
		i := bytes.IndexByte(text, '\n')
		if i < 0 {
			out = append(out, text)
			break
		}
		out = append(out, text[:i])
		text = text[i+1:]
	}
	return out
}

// ApplyDelta applies delta (uncompressed text) to parent (the canonical
// manifest bytes of digest from) and returns the result, checked to hash
// to digest to; the entry indexes of the result that came from inserted
// lines (only their objects can be new to a store that has the parent);
// and the delta's object table. Everything is checked strictly: the
// header must name from and to, counts must stay inside the parent and
// consume it exactly, the result must stay within manifest.MaxSize, table
// lines must parse as ParseTable's and come last.
func ApplyDelta(parent, delta []byte, from, to string) (raw []byte, inserted []int, table []TableEntry, err error) {
	fail := func(line int, format string, a ...any) ([]byte, []int, []TableEntry, error) {
		return nil, nil, nil, fmt.Errorf("%w: line %d: %s", ErrBadDelta, line, fmt.Sprintf(format, a...))
	}
	if _, err := DigestHex(from); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: from %w", ErrBadDelta, err)
	}
	if _, err := DigestHex(to); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: to %w", ErrBadDelta, err)
	}
	if len(parent) > 0 && parent[len(parent)-1] != '\n' {
		return nil, nil, nil, fmt.Errorf("%w: parent manifest does not end in a newline", ErrBadDelta)
	}
	if manifest.Digest(parent) != from {
		return nil, nil, nil, fmt.Errorf("%w: parent manifest is not %s", ErrBadDelta, from)
	}
	pl := lines(parent)
	head := DeltaHeader + " " + from + " " + to + "\n"
	if !bytes.HasPrefix(delta, []byte(head)) {
		first := delta
		if i := bytes.IndexByte(first, '\n'); i >= 0 {
			first = first[:i]
		}
		return fail(1, "header %q, want %q", clip(string(first)), head[:len(head)-1])
	}
	rest := delta[len(head):]
	out := make([]byte, 0, len(parent)+len(rest))
	var tableText []byte
	pos := 0  // next parent line
	outN := 0 // result lines so far
	for n := 2; len(rest) > 0; n++ {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return fail(n, "no final newline")
		}
		l := rest[:i]
		rest = rest[i+1:]
		if len(l) == 0 {
			return fail(n, "empty line")
		}
		if tableText != nil && l[0] != 'o' {
			return fail(n, "%q after the object table", clip(string(l)))
		}
		switch l[0] {
		case '=', '-':
			c, ok := parseSize(string(l[1:]))
			if !ok || c < 1 {
				return fail(n, "bad count %q", clip(string(l)))
			}
			if c > int64(len(pl)-pos) {
				return fail(n, "%q: only %d parent lines left", clip(string(l)), len(pl)-pos)
			}
			if l[0] == '=' {
				for _, x := range pl[pos : pos+int(c)] {
					out = append(append(out, x...), '\n')
				}
				outN += int(c)
			}
			pos += int(c)
		case '+':
			out = append(append(out, l[1:]...), '\n')
			if outN == 0 {
				return fail(n, "the header line cannot be inserted")
			}
			inserted = append(inserted, outN-1) // entry index: line 0 is the header
			outN++
		case 'o':
			if tableText == nil {
				tableText = []byte{}
			}
			tableText = append(append(tableText, l[1:]...), '\n')
		default:
			return fail(n, "unknown operation %q", clip(string(l)))
		}
		if len(out) > manifest.MaxSize {
			return fail(n, "result larger than %d bytes", manifest.MaxSize)
		}
	}
	if pos != len(pl) {
		return nil, nil, nil, fmt.Errorf("%w: %d parent lines left unconsumed", ErrBadDelta, len(pl)-pos)
	}
	sum := sha256.Sum256(out)
	if d := "sha256:" + hex.EncodeToString(sum[:]); d != to {
		return nil, nil, nil, fmt.Errorf("%w: result is %s, want %s", ErrBadDelta, d, to)
	}
	if len(tableText) > 0 {
		if table, err = ParseTable(tableText); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: %w", ErrBadDelta, err)
		}
	}
	return out, inserted, table, nil
}
