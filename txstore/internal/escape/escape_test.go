package escape

import "testing"

func TestRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		in, path, name string
	}{
		{"plain/path", "plain/path", "plain/path"},
		{"a b%c", "a%20b%25c", "a%20b%25c"},
		{"k=v,w", "k=v,w", "k%3Dv%2Cw"},
		{"\x00\x7f\n", "%00%7F%0A", "%00%7F%0A"},
		{"", "", ""},
	} {
		for _, c := range []struct {
			list bool
			want string
		}{{false, tt.path}, {true, tt.name}} {
			got := string(Append(nil, tt.in, c.list))
			if got != c.want {
				t.Errorf("Append(%q, %v) = %q, want %q", tt.in, c.list, got, c.want)
			}
			back, ok := Unescape(got)
			if !ok || back != tt.in {
				t.Errorf("Unescape(%q) = %q, %v; want %q", got, back, ok, tt.in)
			}
		}
	}
}

func TestUnescapeRejects(t *testing.T) {
	for _, s := range []string{"%", "%2", "a%2", "%2a", "%G0", "%%20"} {
		if got, ok := Unescape(s); ok {
			t.Errorf("Unescape(%q) = %q, ok; want rejected", s, got)
		}
	}
}
