package cas

import (
	"crypto/sha256"
	"errors"
	"testing"
)

func TestKeyNames(t *testing.T) {
	h := Hash(sha256.Sum256([]byte("x")))
	cases := []struct {
		k    Key
		want string
	}{
		{NewKey(h, 0o644, 0, 0), h.String() + ".0444"},
		{NewKey(h, 0o4755, 0, 0), h.String() + ".4555"},
		{NewKey(h, 0o600, 1000, 100), h.String() + ".0400.1000.100"},
	}
	for _, c := range cases {
		if c.k.Name() != c.want {
			t.Errorf("name %s want %s", c.k.Name(), c.want)
		}
		k, err := ParseName(c.want)
		if err != nil || k != c.k {
			t.Errorf("parse %s: %v %v", c.want, k, err)
		}
	}
	for _, bad := range []string{"", "x", h.String(), h.String() + ".644", h.String() + ".0644", h.String() + ".0444.0.0", h.String() + ".0444.1", "../" + h.String() + ".0444"} {
		if _, err := ParseName(bad); !errors.Is(err, ErrBadHash) {
			t.Errorf("accepted %q", bad)
		}
	}
}
