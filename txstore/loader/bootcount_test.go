package loader

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseBootCountPath(t *testing.T) {
	tests := []struct {
		in   string
		dir  string
		name string
		err  error
	}{
		{`\loader\entries\txboot-12+2-1.conf`, "loader/entries", "txboot-12+2-1.conf", nil},
		{`/loader/entries/txboot-12+3.conf`, "loader/entries", "txboot-12+3.conf", nil},
		{`\txboot-1.conf`, "", "txboot-1.conf", nil},
		{`loader\entries\a.conf`, "", "", ErrBadBootCountPath},
		{`\loader\..\a.conf`, "", "", ErrBadBootCountPath},
		{`\loader\\a.conf`, "", "", ErrBadBootCountPath},
		{`\loader\entries\`, "", "", ErrBadBootCountPath},
		{`\EFI\Linux\uki+3.efi`, "", "", ErrBadBootCountPath},
		{"", "", "", ErrBadBootCountPath},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			dir, n, err := ParseBootCountPath(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error = %v, want %v", err, tt.err)
			}
			if err == nil && (dir != tt.dir || n.String() != tt.name) {
				t.Fatalf("= %q, %q", dir, n.String())
			}
		})
	}
}

func FuzzParseBootCountPath(f *testing.F) {
	f.Add(`\loader\entries\txboot-12+2-1.conf`)
	f.Add(`/a/b.conf`)
	f.Fuzz(func(t *testing.T, p string) {
		dir, n, err := ParseBootCountPath(p)
		if err != nil {
			return
		}
		if strings.Contains(dir, `\`) || slices.Contains(strings.Split(dir, "/"), "..") {
			t.Fatalf("dir %q from %q", dir, p)
		}
		if _, err := ParseName(n.String()); err != nil {
			t.Fatalf("name %q does not reparse: %v", n.String(), err)
		}
		if dir != "" {
			if back, n2, err := ParseBootCountPath("/" + dir + "/" + n.String()); err != nil || back != dir || n2 != n {
				t.Fatalf("reparse: %q %+v %v", back, n2, err)
			}
		}
	})
}
