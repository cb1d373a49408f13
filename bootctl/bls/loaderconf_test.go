package bls

import (
	"bytes"
	"strings"
	"testing"
)

func TestSetLoaderDefault(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "default p\n"},
		{"append", "timeout 3\n", "timeout 3\ndefault p\n"},
		{"append no newline", "timeout 3", "timeout 3\ndefault p\n"},
		{"replace in place", "timeout 3\ndefault old\neditor no\n", "timeout 3\ndefault p\neditor no\n"},
		{"drop later defaults", "default a\ntimeout 3\n\tdefault b\n", "default p\ntimeout 3\n"},
		{"keep CRLF", "timeout 3\r\ndefault a\r\n", "timeout 3\r\ndefault p\r\n"},
		{"default behind CR", "timeout 3\rdefault a", "timeout 3\rdefault p\n"},
		{"comment kept", "#default a\n", "#default a\ndefault p\n"},
		{"similar key kept", "defaults x\ndefault-x y\n", "defaults x\ndefault-x y\ndefault p\n"},
		{"key without value", "default\n", "default p\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(SetLoaderDefault([]byte(tt.in), "p"))
			if got != tt.want {
				t.Fatalf("SetLoaderDefault(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if d := LoaderDefault([]byte(got)); d != "p" {
				t.Fatalf("LoaderDefault = %q", d)
			}
		})
	}
}

func FuzzSetLoaderDefault(f *testing.F) {
	f.Add(readTestdata(f, "loader.conf"), "txboot-[1-9]*")
	f.Add([]byte("default a\r\ndefault b\rtimeout 1"), "x")
	f.Fuzz(func(t *testing.T, conf []byte, pattern string) {
		if pattern == "" || strings.ContainsAny(pattern, " \t\r\n\"") {
			return // patterns are entry-name globs
		}
		out := SetLoaderDefault(conf, pattern)
		if again := SetLoaderDefault(out, pattern); !bytes.Equal(again, out) {
			t.Fatalf("not idempotent:\n%q\n%q", out, again)
		}
		if d := LoaderDefault(out); d != pattern {
			t.Fatalf("LoaderDefault = %q, want %q in %q", d, pattern, out)
		}
		// Every line but `default` ones survives, in order.
		if got, want := nonDefault(out), nonDefault(conf); got != want {
			t.Fatalf("other lines changed:\n%q\n%q", want, got)
		}
	})
}

func nonDefault(conf []byte) string {
	var b strings.Builder
	for _, l := range strings.FieldsFunc(string(conf), func(r rune) bool { return r == '\r' || r == '\n' }) {
		if !isDefaultLine(l) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
