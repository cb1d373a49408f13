package bls

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseFull(t *testing.T) {
	e, err := Parse(readTestdata(t, "full.conf"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Entry{
		Title:        "Debian GNU/Linux 12 (bookworm)",
		Version:      "6.1.0-18-amd64",
		MachineID:    "0123456789abcdef0123456789abcdef",
		SortKey:      "debian",
		Linux:        "/0123456789abcdef0123456789abcdef/6.1.0-18-amd64/linux",
		Initrd:       []string{"/0123456789abcdef0123456789abcdef/6.1.0-18-amd64/intel-ucode.img", "/0123456789abcdef0123456789abcdef/6.1.0-18-amd64/initrd.img-6.1.0-18-amd64"},
		Options:      "root=UUID=1234 ro quiet splash",
		Architecture: "x64",
		Devicetree:   "/dtbs/board.dtb",
		Extra:        []KeyValue{{"x-vendor-key", "some value"}, {"efi-extra", "  quoted with blanks  "}, {"x-vendor-key", "second"}},
	}
	if !reflect.DeepEqual(e, want) {
		t.Fatalf("Parse =\n%+v\nwant\n%+v", e, want)
	}
	if got, golden := e.Marshal(), readTestdata(t, "full.golden"); !bytes.Equal(got, golden) {
		t.Fatalf("Marshal =\n%s\nwant\n%s", got, golden)
	}
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseCRLF(t *testing.T) {
	// systemd-boot ends lines at '\r' as well as '\n'.
	e, err := Parse(readTestdata(t, "crlf.conf"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Entry{Title: "CRLF entry", Linux: "/vmlinuz", Options: "a", Initrd: []string{"/initrd"}}
	if !reflect.DeepEqual(e, want) {
		t.Fatalf("Parse = %+v, want %+v", e, want)
	}
}

func TestParse(t *testing.T) {
	long := strings.Repeat("x", MaxLineLen)
	tests := []struct {
		name string
		in   string
		want *Entry
		err  error
	}{
		{"minimal", "linux /k\n", &Entry{Linux: "/k"}, nil},
		{"no trailing newline", "linux /k", &Entry{Linux: "/k"}, nil},
		{"tabs and blanks", "\t linux\t \t/k  \t\n", &Entry{Linux: "/k"}, nil},
		{"comment and blank", "# c\n\n   # indented\nlinux /k\n", &Entry{Linux: "/k"}, nil},
		{"key without value ignored", "title\nlinux /k\n", &Entry{Linux: "/k"}, nil},
		{"quoted", "title \"a b\"\nlinux /k\n", &Entry{Title: "a b", Linux: "/k"}, nil},
		{"single quote char", "title \"\nlinux /k\n", &Entry{Linux: "/k"}, nil},
		{"half quoted", "title \"a b\nlinux /k\n", &Entry{Title: "\"a b", Linux: "/k"}, nil},
		{"options joined", "options a\nlinux /k\noptions  b c \n", &Entry{Linux: "/k", Options: "a b c"}, nil},
		{"backslash path", "linux \\efi\\k\n", nil, ErrBadPath},
		{"line at limit", "linux /k\nx " + long[2:] + "\n", &Entry{Linux: "/k", Extra: []KeyValue{{"x", long[2:]}}}, nil},
		{"line too long", "linux /k\nx " + long[1:] + "\n", nil, ErrLineTooLong},
		{"too large", "linux /k\n" + strings.Repeat("# comment\n", MaxEntrySize/10), nil, ErrTooLarge},
		{"NUL", "linux /k\x00\n", nil, ErrNUL},
		{"bad UTF-8", "title \xff\nlinux /k\n", nil, ErrEncoding},
		{"no linux", "title x\n", nil, ErrNoLinux},
		{"empty", "", nil, ErrNoLinux},
		{"relative linux", "linux vmlinuz\n", nil, ErrBadPath},
		{"dotdot linux", "linux /a/../b\n", nil, ErrBadPath},
		{"dotdot backslash", "linux /a\\..\\b\n", nil, ErrBadPath},
		{"relative initrd", "linux /k\ninitrd i\n", nil, ErrBadPath},
		{"dotdot devicetree", "linux /k\ndevicetree /../d\n", nil, ErrBadPath},
		{"dotdot in name ok", "linux /a/..b/k\n", &Entry{Linux: "/a/..b/k"}, nil},
		{"duplicate title", "title a\ntitle b\nlinux /k\n", nil, ErrDuplicateKey},
		{"duplicate linux", "linux /a\nlinux /b\n", nil, ErrDuplicateKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("Parse error = %v, want %v", err, tt.err)
			}
			if err == nil && !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMarshalQuoting(t *testing.T) {
	tests := []struct {
		value string
		line  string
	}{
		{"plain", "x-k plain"},
		{"", `x-k ""`},
		{" lead", `x-k " lead"`},
		{"trail\t", "x-k \"trail\t\""},
		{`"quoted"`, `x-k ""quoted""`},
		{`"`, `x-k """`},
		{`"open`, `x-k "open`},
		{`close"`, `x-k close"`},
		{"in\"side", "x-k in\"side"},
	}
	for _, tt := range tests {
		e := &Entry{Linux: "/k", Extra: []KeyValue{{"x-k", tt.value}}}
		out := e.Marshal()
		if want := "linux /k\n" + tt.line + "\n"; string(out) != want {
			t.Errorf("Marshal(%q) = %q, want %q", tt.value, out, want)
			continue
		}
		back, err := Parse(out)
		if err != nil || !reflect.DeepEqual(back, e) {
			t.Errorf("round trip of %q: %+v, %v", tt.value, back, err)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		e    Entry
		err  error
	}{
		{"ok", Entry{Linux: "/k", Title: "t", Initrd: []string{"/i"}}, nil},
		{"no linux", Entry{Title: "t"}, ErrNoLinux},
		{"newline in title", Entry{Linux: "/k", Title: "a\nb"}, ErrBadValue},
		{"CR in options", Entry{Linux: "/k", Options: "a\rb"}, ErrBadValue},
		{"bad utf8", Entry{Linux: "/k", Title: "\xff"}, ErrBadValue},
		{"blank in key", Entry{Linux: "/k", Extra: []KeyValue{{"a b", "v"}}}, ErrBadValue},
		{"empty key", Entry{Linux: "/k", Extra: []KeyValue{{"", "v"}}}, ErrBadValue},
		{"comment key", Entry{Linux: "/k", Extra: []KeyValue{{"#x", "v"}}}, ErrBadValue},
		{"known key in extra", Entry{Linux: "/k", Extra: []KeyValue{{"title", "v"}}}, ErrBadValue},
		{"empty initrd", Entry{Linux: "/k", Initrd: []string{""}}, ErrBadPath},
		{"long line", Entry{Linux: "/k", Options: strings.Repeat("o", MaxLineLen)}, ErrLineTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.e.Validate(); !errors.Is(err, tt.err) {
				t.Fatalf("Validate = %v, want %v", err, tt.err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"full.conf", "crlf.conf", "full.golden"} {
		f.Add(readTestdata(f, name))
	}
	f.Add([]byte("linux /k\ntitle \"\"x\"\"\noptions  \" a \"\n"))
	f.Add([]byte("linux \"/k \"\r\r\ninitrd /i\ninitrd /j\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Parse(data)
		if err != nil {
			return
		}
		out := e.Marshal()
		back, err := Parse(out)
		if verr := e.Validate(); verr != nil {
			// Joining options lines or quoting can push a line or the file
			// past the limits; then Parse must be the one that says so.
			if err == nil {
				t.Fatalf("Validate = %v but Parse(Marshal) succeeded", verr)
			}
			return
		}
		if err != nil {
			t.Fatalf("Parse(Marshal(e)) = %v\n%q", err, out)
		}
		if !reflect.DeepEqual(back, e) {
			t.Fatalf("round trip differs:\n%+v\n%+v\n%q", e, back, out)
		}
		if again := back.Marshal(); !bytes.Equal(again, out) {
			t.Fatalf("Marshal not stable:\n%q\n%q", out, again)
		}
	})
}
