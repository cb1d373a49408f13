package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// checkText rejects a value meant for one line of list/status/log output:
// a newline or other control character there would forge extra rows.
func checkText(flagName, s string) error {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				return usagef("%s must be UTF-8 text: invalid byte 0x%02x at offset %d", flagName, s[i], i)
			}
		}
		if unicode.IsControl(r) {
			return usagef("%s must be one line of text: control character %U at offset %d", flagName, r, i)
		}
	}
	return nil
}

// printable escapes control characters and invalid UTF-8 for terminal
// output, so a record written before checkText existed (or by another
// tool) stays on its own row. Other text, backslashes included, is kept.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsControl(r):
			q := strconv.QuoteRune(r) // '\n', '\x1b', '\u0085'
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// rangeFlag is a flag.Func for an integer in lo..hi (hi < 0: no upper
// bound), so an out-of-range value is a usage error at parse time instead
// of being silently replaced by a default.
func rangeFlag(p *int, lo, hi int, msg string) func(string) error {
	return func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || (hi >= 0 && n > hi) {
			return errors.New(msg)
		}
		*p = n
		return nil
	}
}
