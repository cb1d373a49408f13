package pkgdb

import (
	"fmt"
	"strings"
)

// MaxVersion bounds a version string (dpkg has no limit; Debian's longest
// are under 100 bytes).
const MaxVersion = 256

// CheckVersion accepts a Debian version as dpkg reads it:
// [epoch:]upstream[-revision], the epoch digits, upstream made of letters,
// digits and ".+~-:", the revision of letters, digits and ".+~". Anything
// else (white space, '=', '/') could not be handed to apt as name=version.
// An upstream version that does not start with a digit is only a warning
// for dpkg, and is accepted.
func CheckVersion(v string) error {
	bad := func(why string) error { return fmt.Errorf("%w: version %q: %s", ErrBad, clip(v), why) }
	if v == "" || len(v) > MaxVersion {
		return bad("empty or too long")
	}
	epoch, rest, hasEpoch := strings.Cut(v, ":")
	if !hasEpoch {
		rest = v
	} else if epoch == "" || strings.Trim(epoch, "0123456789") != "" {
		return bad("the epoch is not a number")
	}
	upstream, revision := rest, ""
	if i := strings.LastIndexByte(rest, '-'); i >= 0 {
		upstream, revision = rest[:i], rest[i+1:]
		if revision == "" {
			return bad("empty revision")
		}
	}
	if upstream == "" {
		return bad("empty upstream version")
	}
	for i := 0; i < len(upstream); i++ {
		if c := upstream[i]; !isAlnum(c) && !strings.ContainsRune(".+~-:", rune(c)) {
			return bad(fmt.Sprintf("character %q", upstream[i:i+1]))
		}
	}
	for i := 0; i < len(revision); i++ {
		if c := revision[i]; !isAlnum(c) && !strings.ContainsRune(".+~", rune(c)) {
			return bad(fmt.Sprintf("character %q in the revision", revision[i:i+1]))
		}
	}
	return nil
}

// CompareVersions orders two Debian versions as dpkg --compare-versions
// does: < 0 when a is older, 0 when equal, > 0 when newer. The versions
// should pass CheckVersion; anything else still gives a consistent order.
func CompareVersions(a, b string) int {
	ae, au, ar := splitVersion(a)
	be, bu, br := splitVersion(b)
	if c := compareNumbers(ae, be); c != 0 {
		return c
	}
	if c := compareFragment(au, bu); c != 0 {
		return c
	}
	return compareFragment(ar, br)
}

// splitVersion splits epoch (digits, "0" when absent), upstream and
// revision ("" when absent).
func splitVersion(v string) (epoch, upstream, revision string) {
	epoch = "0"
	if e, rest, ok := strings.Cut(v, ":"); ok {
		epoch, v = e, rest
	}
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		return epoch, v[:i], v[i+1:]
	}
	return epoch, v, ""
}

// compareNumbers compares digit strings of any length.
func compareNumbers(a, b string) int {
	a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

// order is dpkg's weight of a character in a non-digit run: '~' before
// the end, the end before letters, letters before everything else.
func order(c byte, end bool) int {
	switch {
	case end:
		return 0
	case c == '~':
		return -1
	case isDigit(c):
		return 0
	case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z':
		return int(c)
	}
	return int(c) + 256
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// compareFragment is dpkg's verrevcmp: alternate non-digit runs, compared
// by order, and digit runs, compared as numbers.
func compareFragment(a, b string) int {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		for (i < len(a) && !isDigit(a[i])) || (j < len(b) && !isDigit(b[j])) {
			ac := order(byteAt(a, i), i >= len(a))
			bc := order(byteAt(b, j), j >= len(b))
			if ac != bc {
				return ac - bc
			}
			i, j = i+1, j+1
		}
		si := i
		for i < len(a) && isDigit(a[i]) {
			i++
		}
		sj := j
		for j < len(b) && isDigit(b[j]) {
			j++
		}
		if c := compareNumbers(a[si:i], b[sj:j]); c != 0 {
			return c
		}
	}
	return 0
}

func byteAt(s string, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}
