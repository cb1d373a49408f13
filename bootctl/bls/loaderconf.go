package bls

import (
	"bytes"
	"strings"
)

// SetLoaderDefault returns loader.conf content with exactly one `default`
// line, "default <pattern>", in place of the first one (appended when there
// is none). Every other line, comments, blank lines and line endings are kept
// byte for byte. Lines are split at '\n' and '\r' as systemd-boot does, so a
// `default` hidden behind a lone '\r' is found too.
func SetLoaderDefault(conf []byte, pattern string) []byte {
	var out bytes.Buffer
	done := false
	for rest := conf; len(rest) > 0; {
		seg := rest
		if i := bytes.IndexAny(rest, "\r\n"); i >= 0 {
			j := i + 1
			if rest[i] == '\r' && j < len(rest) && rest[j] == '\n' {
				j++
			}
			seg = rest[:j]
		}
		rest = rest[len(seg):]
		body := bytes.TrimRight(seg, "\r\n")
		if !isDefaultLine(string(body)) {
			out.Write(seg)
			continue
		}
		if done {
			// A later `default` would win in systemd-boot: drop it.
			continue
		}
		done = true
		out.WriteString("default " + pattern)
		out.Write(seg[len(body):])
		if len(seg) == len(body) {
			out.WriteByte('\n')
		}
	}
	if !done {
		if b := out.Bytes(); len(b) > 0 && b[len(b)-1] != '\n' && b[len(b)-1] != '\r' {
			out.WriteByte('\n')
		}
		out.WriteString("default " + pattern + "\n")
	}
	return out.Bytes()
}

// isDefaultLine: the first word, after leading blanks, is "default".
func isDefaultLine(line string) bool {
	line = strings.TrimLeft(line, " \t")
	key, _, _ := strings.Cut(line, " ")
	key, _, _ = strings.Cut(key, "\t")
	return key == "default"
}

// LoaderDefault returns the value of the last `default` line (the one
// systemd-boot uses), or "" if there is none.
func LoaderDefault(conf []byte) string {
	var v string
	for _, l := range strings.FieldsFunc(string(conf), func(r rune) bool { return r == '\r' || r == '\n' }) {
		if k, val, ok := splitLine(l); ok && k == "default" {
			v = val
		}
	}
	return v
}
