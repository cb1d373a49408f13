package pkgdb

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// The fields read; others are skipped (their values are not kept).
const (
	fPackage = 1 << iota
	fStatus
	fVersion
	fArch
)

var fieldBits = map[string]int{"package": fPackage, "status": fStatus, "version": fVersion, "architecture": fArch}

// fieldBit is the bit of a field name, 0 for one not read. Case is
// folded in ASCII only, as dpkg does (Unicode folding would take
// "Pac\u212aage", with a Kelvin sign, for Package).
func fieldBit(name string) int {
	if len(name) > len("architecture") {
		return 0
	}
	return fieldBits[asciiLower(name)]
}

// asciiSpace is what dpkg takes for white space (C's isspace).
const asciiSpace = " \t\n\v\f\r"

// stanza is the fields read from one stanza.
type stanza struct {
	line                        int // its first line
	seen                        int // fieldBits present
	name, status, version, arch string
	last                        int // the field the last line belonged to (0: another)
}

func (st *stanza) set(bit int, v string) {
	switch bit {
	case fPackage:
		st.name = v
	case fStatus:
		st.status = v
	case fVersion:
		st.version = v
	case fArch:
		st.arch = v
	}
}

// Parse reads a dpkg status file and returns its present packages (see
// the package comment). An error names the line.
func Parse(r io.Reader) (Set, error) {
	p := parser{set: Set{}}
	cr := &countReader{r: io.LimitReader(r, MaxSize+1)}
	sc := bufio.NewScanner(cr)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLine+1)
	sc.Split(p.split)
	// Over MaxSize, the size is the error, not what the cut made of the
	// last line.
	tooBig := func(err error) error {
		if cr.n > MaxSize {
			return fmt.Errorf("%w: %w: more than %d bytes", ErrBad, ErrTooLarge, MaxSize)
		}
		return err
	}
	for sc.Scan() {
		p.lno++
		if err := p.line(sc.Text()); err != nil {
			return nil, tooBig(fmt.Errorf("line %d: %w", p.lno, err))
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("line %d: %w: %w: longer than %d bytes", p.lno+1, ErrBad, ErrTooLarge, MaxLine)
		}
		return nil, tooBig(err)
	}
	if p.unterminated {
		// dpkg refuses it too: a file cut short may end in a whole line.
		return nil, tooBig(fmt.Errorf("line %d: %w: no newline at the end of the file (cut short?)", p.lno, ErrBad))
	}
	if err := tooBig(p.end()); err != nil {
		return nil, err
	}
	slices.SortFunc(p.set, comparePkg)
	for i := 1; i < len(p.set); i++ {
		if comparePkg(p.set[i-1], p.set[i]) == 0 {
			return nil, fmt.Errorf("%w: package %s is listed twice", ErrBad, p.set[i].Key())
		}
	}
	return p.set, nil
}

type parser struct {
	lno          int
	unterminated bool    // the last line had no newline
	cur          *stanza // nil between stanzas
	stanzas      int
	set          Set
}

// split is bufio.ScanLines without its '\r' handling (dpkg has none),
// noting a last line without a newline.
func (p *parser) split(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		p.unterminated = true
		return len(data), data, nil
	}
	return 0, nil, nil
}

// line takes one line, newline excluded.
func (p *parser) line(s string) error {
	switch {
	case s == "":
		return p.end()
	case s[0] == ' ' || s[0] == '\t':
		return p.continuation(s)
	case s[0] == '#':
		return fmt.Errorf("%w: a line starting with '#' (dpkg's status file has no comments)", ErrBad)
	}
	name, value, ok := strings.Cut(s, ":")
	if !ok || name == "" || strings.ContainsAny(name, " \t") {
		return fmt.Errorf("%w: %q is not a field (Name: value)", ErrBad, clip(s))
	}
	if name[0] == '-' {
		return fmt.Errorf("%w: field name %q starts with '-'", ErrBad, clip(name))
	}
	if p.cur == nil {
		if p.stanzas++; p.stanzas > MaxStanzas {
			return fmt.Errorf("%w: %w: more than %d stanzas", ErrBad, ErrTooLarge, MaxStanzas)
		}
		p.cur = &stanza{line: p.lno}
	}
	bit := fieldBit(name)
	p.cur.last = bit
	if bit == 0 {
		return nil
	}
	if p.cur.seen&bit != 0 {
		return fmt.Errorf("%w: field %s repeated", ErrBad, name)
	}
	p.cur.seen |= bit
	p.cur.set(bit, strings.Trim(value, asciiSpace))
	return nil
}

// continuation takes a line continuing the previous field's value.
func (p *parser) continuation(s string) error {
	if p.cur == nil {
		return fmt.Errorf("%w: continuation line outside a stanza", ErrBad)
	}
	name := "a"
	if p.cur.last != 0 {
		name = "the " + fieldName(p.cur.last)
	}
	// dpkg refuses a blank one ("blank line in value of field"); one with
	// text makes a value two lines, which no name, version, architecture
	// or status has.
	if strings.Trim(s, " \t") == "" {
		return fmt.Errorf("%w: blank line in %s value (a stanza ends with an empty line)", ErrBad, name)
	}
	if p.cur.last != 0 {
		return fmt.Errorf("%w: %s value spans lines", ErrBad, name)
	}
	return nil
}

// end closes the current stanza, if any.
func (p *parser) end() error {
	st := p.cur
	if st == nil {
		return nil
	}
	p.cur = nil
	pkg, present, err := st.pkg()
	if err != nil {
		return fmt.Errorf("stanza at line %d: %w", st.line, err)
	}
	if present {
		p.set = append(p.set, pkg)
	}
	return nil
}

// pkg checks a stanza and returns its package, and whether it is present.
func (st *stanza) pkg() (Package, bool, error) {
	for _, bit := range []int{fPackage, fStatus} {
		if st.seen&bit == 0 {
			return Package{}, false, fmt.Errorf("%w: no %s field", ErrBad, fieldName(bit))
		}
	}
	if err := checkName(st.name); err != nil {
		return Package{}, false, err
	}
	st.name = asciiLower(st.name) // dpkg's names are case-insensitive, kept in lower case
	w := strings.FieldsFunc(st.status, func(r rune) bool { return strings.ContainsRune(asciiSpace, r) })
	if len(w) != 3 || !wants[w[0]] || (w[1] != "ok" && w[1] != "reinstreq") {
		return Package{}, false, fmt.Errorf("%w: package %s: Status %q is not \"want flag state\"", ErrBad, st.name, clip(st.status))
	}
	present, known := states[w[2]]
	if !known {
		return Package{}, false, fmt.Errorf("%w: package %s: unknown state %q", ErrBad, st.name, clip(w[2]))
	}
	if !present {
		return Package{}, false, nil
	}
	for _, bit := range []int{fVersion, fArch} {
		if st.seen&bit == 0 {
			return Package{}, false, fmt.Errorf("%w: package %s (%s) has no %s field", ErrBad, st.name, w[2], fieldName(bit))
		}
	}
	if err := checkArch(st.arch); err != nil {
		return Package{}, false, fmt.Errorf("package %s: %w", st.name, err)
	}
	if err := CheckVersion(st.version); err != nil {
		return Package{}, false, fmt.Errorf("package %s: %w", st.name, err)
	}
	return Package{Name: st.name, Arch: st.arch, Version: st.version, Status: w[2], Reinstreq: w[1] == "reinstreq"}, true, nil
}

func fieldName(bit int) string {
	switch bit {
	case fPackage:
		return "Package"
	case fStatus:
		return "Status"
	case fVersion:
		return "Version"
	}
	return "Architecture"
}

// checkName accepts what dpkg accepts as a package name: a letter or
// digit, then letters, digits and "+-._" ('_' is deprecated, still read).
func checkName(s string) error {
	if s == "" || !isAlnum(s[0]) || len(s) > 255 {
		return fmt.Errorf("%w: bad package name %q", ErrBad, clip(s))
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && !strings.ContainsRune("+-._", rune(c)) {
			return fmt.Errorf("%w: bad package name %q", ErrBad, clip(s))
		}
	}
	return nil
}

// checkArch accepts what dpkg accepts as an architecture: a letter or
// digit, then letters, digits and '-'.
func checkArch(s string) error {
	if s == "" || !isAlnum(s[0]) || len(s) > 64 {
		return fmt.Errorf("%w: bad architecture %q", ErrBad, clip(s))
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' {
			return fmt.Errorf("%w: bad architecture %q", ErrBad, clip(s))
		}
	}
	return nil
}

// asciiLower lower-cases the ASCII letters of s.
func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}
