// Package escape is the %XX escaping of manifest fields: paths, symlink
// targets and xattr names, which may hold any byte but NUL and must never
// contain the spaces (and, in an xattr list, the ',' and '=') that
// separate fields.
package escape

import "strings"

const hexUpper = "0123456789ABCDEF"

// Append appends s to b with bytes <= 0x20, 0x7f and '%' (and, for a name
// in an xattr list, ',' and '=') written as %XX in uppercase hex. It is
// hand-rolled: loading a manifest re-encodes every line on the boot path.
func Append(b []byte, s string, list bool) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c == 0x7f || c == '%' || (list && (c == ',' || c == '=')) {
			b = append(b, '%', hexUpper[c>>4], hexUpper[c&15])
		} else {
			b = append(b, c)
		}
	}
	return b
}

// Unescape reverses Append; ok is false for a truncated escape or one
// that is not two uppercase hex digits.
func Unescape(s string) (string, bool) {
	if strings.IndexByte(s, '%') < 0 {
		return s, true
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		hi, lo := unhex(s[i+1]), unhex(s[i+2])
		if hi < 0 || lo < 0 {
			return "", false
		}
		b.WriteByte(byte(hi<<4 | lo))
		i += 2
	}
	return b.String(), true
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
