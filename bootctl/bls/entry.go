package bls

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits on entry files. Real entries are a few hundred bytes; the limits
// keep a damaged or hostile ESP from costing memory or time.
const (
	MaxEntrySize = 64 << 10 // bytes per file
	MaxLineLen   = 4 << 10  // bytes per line, without the line terminator
)

// Errors returned by Parse and (*Entry).Validate, for errors.Is.
var (
	ErrTooLarge     = errors.New("boot entry too large")
	ErrLineTooLong  = errors.New("boot entry line too long")
	ErrNUL          = errors.New("boot entry contains a NUL byte")
	ErrEncoding     = errors.New("boot entry is not valid UTF-8")
	ErrNoLinux      = errors.New("boot entry has no linux key")
	ErrBadPath      = errors.New("boot entry path must be absolute without .. components")
	ErrDuplicateKey = errors.New("boot entry key given twice")
	ErrBadValue     = errors.New("boot entry key or value cannot be written")
)

// KeyValue is one line of an entry whose key Entry has no field for.
type KeyValue struct {
	Key, Value string
}

// Entry is a BLS Type #1 entry. Unknown keys are kept, in file order, so a
// rewrite does not lose what another tool put there.
type Entry struct {
	Title        string
	Version      string
	MachineID    string
	SortKey      string
	Linux        string
	Initrd       []string // in order; the kernel reads microcode from the first
	Options      string   // all "options" lines joined by one space
	Architecture string
	Devicetree   string
	Extra        []KeyValue
}

// single-valued keys and the field each fills.
func (e *Entry) singleField(key string) *string {
	switch key {
	case "title":
		return &e.Title
	case "version":
		return &e.Version
	case "machine-id":
		return &e.MachineID
	case "sort-key":
		return &e.SortKey
	case "linux":
		return &e.Linux
	case "architecture":
		return &e.Architecture
	case "devicetree":
		return &e.Devicetree
	}
	return nil
}

// Parse reads an entry the way systemd-boot does: lines end at '\n' or '\r';
// leading and trailing blanks (space, tab) are dropped; '#' starts a comment
// line; the key ends at the first blank and the value starts after the blanks
// that follow; a value wrapped in double quotes loses them; a key without a
// value is ignored. Stricter than systemd-boot: single-valued keys may appear
// once, and NUL bytes, invalid UTF-8, oversized files or lines, a missing
// linux key and relative or ".." paths are errors.
func Parse(data []byte) (*Entry, error) {
	if len(data) > MaxEntrySize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), MaxEntrySize)
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, ErrNUL
	}
	if !utf8.Valid(data) {
		return nil, ErrEncoding
	}
	e := &Entry{}
	seen := make(map[string]bool)
	for lineNo := 1; len(data) > 0; lineNo++ {
		var line []byte
		if i := bytes.IndexAny(data, "\r\n"); i < 0 {
			line, data = data, nil
		} else {
			crlf := data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n'
			line, data = data[:i], data[i+1:]
			if crlf {
				// CRLF is one line break: keeps line numbers in errors right.
				data = data[1:]
			}
		}
		if len(line) > MaxLineLen {
			return nil, fmt.Errorf("%w: line %d has %d bytes, limit %d", ErrLineTooLong, lineNo, len(line), MaxLineLen)
		}
		key, value, ok := splitLine(string(line))
		if !ok {
			continue
		}
		if f := e.singleField(key); f != nil {
			if seen[key] {
				return nil, fmt.Errorf("%w: %q on line %d", ErrDuplicateKey, key, lineNo)
			}
			seen[key] = true
			*f = value
			continue
		}
		switch key {
		case "initrd":
			e.Initrd = append(e.Initrd, value)
		case "options":
			if seen[key] {
				e.Options += " " + value
			} else {
				e.Options = value
			}
			seen[key] = true
		default:
			e.Extra = append(e.Extra, KeyValue{key, value})
		}
	}
	if e.Linux == "" {
		return nil, ErrNoLinux
	}
	if err := e.checkPaths(); err != nil {
		return nil, err
	}
	return e, nil
}

// splitLine is systemd-boot's line_get_key_value for one line.
func splitLine(s string) (key, value string, ok bool) {
	s = strings.Trim(s, " \t")
	if s == "" || s[0] == '#' {
		return "", "", false
	}
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return "", "", false
	}
	key, value = s[:i], strings.TrimLeft(s[i:], " \t")
	if value[0] == '"' && value[len(value)-1] == '"' {
		if len(value) >= 2 {
			value = value[1 : len(value)-1]
		} else {
			value = ""
		}
	}
	return key, value, true
}

// checkPaths: paths are relative to the root of the partition the entry is
// on, so they must be absolute and must not climb out with "..". systemd-boot
// turns '/' into '\', so both separate components.
func (e *Entry) checkPaths() error {
	check := func(key, p string) error {
		if p == "" && key != "linux" {
			return nil
		}
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%w: %s %q", ErrBadPath, key, p)
		}
		for _, c := range strings.FieldsFunc(p, func(r rune) bool { return r == '/' || r == '\\' }) {
			if c == ".." {
				return fmt.Errorf("%w: %s %q", ErrBadPath, key, p)
			}
		}
		return nil
	}
	if err := check("linux", e.Linux); err != nil {
		return err
	}
	for _, p := range e.Initrd {
		if p == "" {
			return fmt.Errorf("%w: empty initrd", ErrBadPath)
		}
		if err := check("initrd", p); err != nil {
			return err
		}
	}
	return check("devicetree", e.Devicetree)
}

// Validate reports whether Marshal's output parses back to e: a linux path,
// safe paths, single-line valid UTF-8 values, keys that are single words, and
// the size limits.
func (e *Entry) Validate() error {
	if e.Linux == "" {
		return ErrNoLinux
	}
	if err := e.checkPaths(); err != nil {
		return err
	}
	for _, kv := range e.lines() {
		if kv.Key == "" || strings.ContainsAny(kv.Key, " \t\r\n\x00") || kv.Key[0] == '#' || !utf8.ValidString(kv.Key) {
			return fmt.Errorf("%w: key %q", ErrBadValue, kv.Key)
		}
		if strings.ContainsAny(kv.Value, "\r\n\x00") || !utf8.ValidString(kv.Value) {
			return fmt.Errorf("%w: %s %q", ErrBadValue, kv.Key, kv.Value)
		}
	}
	for _, kv := range e.Extra {
		// A known key among the unknown ones would be read back into its field.
		if e.singleField(kv.Key) != nil || kv.Key == "initrd" || kv.Key == "options" {
			return fmt.Errorf("%w: known key %q in Extra", ErrBadValue, kv.Key)
		}
	}
	out := e.Marshal()
	if len(out) > MaxEntrySize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(out), MaxEntrySize)
	}
	for _, l := range bytes.Split(out, []byte{'\n'}) {
		if len(l) > MaxLineLen {
			return fmt.Errorf("%w: %d bytes, limit %d", ErrLineTooLong, len(l), MaxLineLen)
		}
	}
	return nil
}

// lines lists what Marshal writes, in order: the known keys (empty ones
// left out), then the unknown keys as they came.
func (e *Entry) lines() []KeyValue {
	var kvs []KeyValue
	add := func(k, v string) {
		if v != "" {
			kvs = append(kvs, KeyValue{k, v})
		}
	}
	add("title", e.Title)
	add("version", e.Version)
	add("machine-id", e.MachineID)
	add("sort-key", e.SortKey)
	add("linux", e.Linux)
	for _, p := range e.Initrd {
		kvs = append(kvs, KeyValue{"initrd", p})
	}
	add("devicetree", e.Devicetree)
	add("options", e.Options)
	add("architecture", e.Architecture)
	return append(kvs, e.Extra...)
}

// Marshal encodes e deterministically: known keys in a fixed order, then the
// unknown ones in their order, one "key value" line each. Values that Parse
// would otherwise change (leading or trailing blanks, empty, or wrapped in
// quotes) are quoted. Line breaks and NULs in values become spaces so the
// output is always one line per key; Validate reports them instead.
func (e *Entry) Marshal() []byte {
	var b bytes.Buffer
	for _, kv := range e.lines() {
		v := strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == 0 {
				return ' '
			}
			return r
		}, kv.Value)
		if needsQuotes(v) {
			v = `"` + v + `"`
		}
		b.WriteString(kv.Key)
		b.WriteByte(' ')
		b.WriteString(v)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func needsQuotes(v string) bool {
	if v == "" {
		return true
	}
	blank := func(c byte) bool { return c == ' ' || c == '\t' }
	return blank(v[0]) || blank(v[len(v)-1]) || (v[0] == '"' && v[len(v)-1] == '"')
}
