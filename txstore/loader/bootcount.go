package loader

import (
	"errors"
	"fmt"
	"strings"
)

// ErrBadBootCountPath reports a LoaderBootCountPath value that does not name
// an entry file.
var ErrBadBootCountPath = errors.New("invalid LoaderBootCountPath")

// ParseBootCountPath splits a LoaderBootCountPath value such as
// `\loader\entries\txboot-12+2-1.conf` into the directory relative to the
// ESP ("loader/entries") and the parsed entry file name.
func ParseBootCountPath(p string) (dir string, name Name, err error) {
	s := strings.ReplaceAll(p, `\`, "/")
	if !strings.HasPrefix(s, "/") {
		return "", Name{}, fmt.Errorf("%w: %q is not absolute", ErrBadBootCountPath, p)
	}
	parts := strings.Split(strings.TrimPrefix(s, "/"), "/")
	for _, c := range parts[:len(parts)-1] {
		if c == "" || c == "." || c == ".." {
			return "", Name{}, fmt.Errorf("%w: %q", ErrBadBootCountPath, p)
		}
	}
	name, err = ParseName(parts[len(parts)-1])
	if err != nil {
		return "", Name{}, fmt.Errorf("%w: %w", ErrBadBootCountPath, err)
	}
	return strings.Join(parts[:len(parts)-1], "/"), name, nil
}
