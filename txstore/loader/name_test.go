package loader

import (
	"errors"
	"path"
	"strings"
	"testing"
)

func globMatch(pattern, s string) bool {
	ok, err := path.Match(pattern, s)
	return err == nil && ok
}

func TestParseName(t *testing.T) {
	tests := []struct {
		in   string
		want Name
		err  error
	}{
		{"txboot-12.conf", Name{Base: "txboot-12"}, nil},
		{"txboot-12+3.conf", Name{Base: "txboot-12", Counting: true, Left: 3, LeftDigits: 1}, nil},
		{"txboot-12+2-1.conf", Name{Base: "txboot-12", Counting: true, Left: 2, Done: 1, LeftDigits: 1, DoneDigits: 1}, nil},
		{"txboot-12+0-3.conf", Name{Base: "txboot-12", Counting: true, Left: 0, Done: 3, LeftDigits: 1, DoneDigits: 1}, nil},
		{"txboot-12+03-007.conf", Name{Base: "txboot-12", Counting: true, Left: 3, Done: 7, LeftDigits: 2, DoneDigits: 3}, nil},
		{"a+b+3.conf", Name{Base: "a+b", Counting: true, Left: 3, LeftDigits: 1}, nil},
		// Not counters: systemd-boot only looks after the last '+'.
		{"a+3+b.conf", Name{Base: "a+3+b"}, nil},
		{"a+3-.conf", Name{Base: "a+3-"}, nil},
		{"a+-3.conf", Name{Base: "a+-3"}, nil},
		{"a+3-1-2.conf", Name{Base: "a+3-1-2"}, nil},
		{"a+.conf", Name{Base: "a+"}, nil},
		{"a+2147483648.conf", Name{Base: "a+2147483648"}, nil}, // > INT_MAX
		{"a+2147483647.conf", Name{Base: "a", Counting: true, Left: 2147483647, LeftDigits: 10}, nil},
		{"6.1.0-18-amd64.conf", Name{Base: "6.1.0-18-amd64"}, nil},
		{"+3.conf", Name{}, ErrBadName},
		{".conf", Name{}, ErrBadName},
		{".txboot-1.conf", Name{}, ErrBadName},
		{"txboot-1.CONF", Name{}, ErrBadName},
		{"txboot-1", Name{}, ErrBadName},
		{"txboot 1.conf", Name{}, ErrBadName},
		{"../x.conf", Name{}, ErrBadName},
		{"a/b.conf", Name{}, ErrBadName},
		{"tx~1.conf", Name{}, ErrBadName},
		{"tx\x001.conf", Name{}, ErrBadName},
		{strings.Repeat("a", 251) + ".conf", Name{}, ErrBadName},
		{strings.Repeat("a", 250) + ".conf", Name{Base: strings.Repeat("a", 250)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseName(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("ParseName(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			if err != nil {
				return
			}
			if got != tt.want {
				t.Fatalf("ParseName(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if s := got.String(); s != tt.in {
				t.Fatalf("String() = %q, want %q", s, tt.in)
			}
		})
	}
}

func TestNameHelpers(t *testing.T) {
	n := Name{Base: "TXboot-12", Counting: true, Left: 0, Done: 3, LeftDigits: 1, DoneDigits: 1}
	if !n.Bad() || n.Plain().Counting || n.Plain().String() != "TXboot-12.conf" {
		t.Fatalf("Bad/Plain wrong for %+v", n)
	}
	if n.ID() != "txboot-12.conf" {
		t.Fatalf("ID() = %q", n.ID())
	}
	tests := []struct {
		base   string
		id     uint64
		wantOK bool
	}{
		{"txboot-12", 12, true},
		{"txboot-012", 0, false},
		{"txboot-0", 0, false},
		{"txboot-", 0, false},
		{"txboot-1a", 0, false},
		{"txboot-99999999999999999999999", 0, false},
		{"other-12", 0, false},
	}
	for _, tt := range tests {
		id, ok := Name{Base: tt.base}.TxID("txboot-")
		if id != tt.id || ok != tt.wantOK {
			t.Errorf("TxID(%q) = %d, %v; want %d, %v", tt.base, id, ok, tt.id, tt.wantOK)
		}
	}
	if p := EntryPattern("TxBoot-", 12); p != "txboot-12[.+]*" {
		t.Fatalf("EntryPattern = %q", p)
	}
	if p := MenuPattern("TxBoot-"); p != "txboot-[1-9]*" {
		t.Fatalf("MenuPattern = %q", p)
	}
}

func TestEntryPatternMatches(t *testing.T) {
	// systemd-boot matches lower-cased entry IDs with a fnmatch subset;
	// path.Match implements the same "*" and "[...]" for these inputs.
	pat := EntryPattern("txboot-", 12)
	for id, want := range map[string]bool{
		"txboot-12.conf":       true, // blessed, or v258+ ID of any state
		"txboot-12+3.conf":     true, // pre-v258 ID while counting
		"txboot-12+2-1.conf":   true,
		"txboot-12+0-3.conf":   true,
		"txboot-120.conf":      false,
		"txboot-121+3.conf":    false,
		"txboot-1.conf":        false,
		"other-txboot-12.conf": false,
	} {
		if got := globMatch(pat, id); got != want {
			t.Errorf("match(%q, %q) = %v, want %v", pat, id, got, want)
		}
	}
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"txboot-12.conf", "txboot-12+3.conf", "txboot-12+2-1.conf", "a+b+03-007.conf", "+3.conf", "x.CONF"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseName(s)
		if err != nil {
			return
		}
		if got := n.String(); got != s {
			t.Fatalf("ParseName(%q).String() = %q", s, got)
		}
		if n.Base == "" || (n.Counting && (n.Left < 0 || n.Done < 0)) {
			t.Fatalf("ParseName(%q) = %+v", s, n)
		}
		// Plain is not checked: "a+5+3.conf" -> "a+5.conf" looks counted
		// again and "+0+0.conf" -> "+0.conf" is invalid. txboot bases never
		// contain '+', so Sync is not affected.
	})
}
