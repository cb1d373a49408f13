package manifest_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/manifest"
)

const (
	h1 = "1111111111111111111111111111111111111111111111111111111111111111"
	h2 = "2222222222222222222222222222222222222222222222222222222222222222"
)

// decodeLines builds a manifest from its entry lines (header added).
func decodeLines(t *testing.T, header string, lines ...string) *manifest.Manifest {
	t.Helper()
	m, err := manifest.Decode([]byte(header + "\n" + strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDiff(t *testing.T) {
	a := decodeLines(t, manifest.HeaderV2,
		"d . 0755 0 0",
		"d bin 0755 0 0",
		"f bin/a 0755 0 0 3 "+h1,
		"f bin/b 0644 0 0 3 "+h1,
		"l bin/c 0 0 a",
		"f bin/d 0644 0 0 3 "+h1+" x:user.k=01",
		"f bin/e 0644 0 0 3 "+h1,
		"d bin/gone 0755 0 0",
		"f bin/gone/x 0644 0 0 3 "+h1,
		"f bin/same 0644 0 0 3 "+h1,
		"d lib 0755 0 0",
		"f lib/t 0644 0 0 3 "+h1,
	)
	b := decodeLines(t, manifest.HeaderV2,
		"d . 0700 0 0",
		"d bin 0755 0 0",
		"f bin/a 0755 0 0 4 "+h2,
		"f bin/b 0600 1 0 3 "+h1,
		"l bin/c 0 0 b",
		"f bin/d 0644 0 0 3 "+h1+" x:user.k=02",
		"f bin/e 4755 0 0 3 "+h2,
		"f bin/same 0644 0 0 3 "+h1,
		"d bin/z 0755 0 0",
		"d lib 0755 0 0",
		"d lib/t 0755 0 0",
		"f new 0644 0 0 3 "+h1,
	)
	want := []manifest.FileChange{
		{Path: ".", Kind: manifest.Changed, What: "mode"},
		{Path: "bin/a", Kind: manifest.Changed, What: "content"},
		{Path: "bin/b", Kind: manifest.Changed, What: "mode,owner"},
		{Path: "bin/c", Kind: manifest.Changed, What: "target"},
		{Path: "bin/d", Kind: manifest.Changed, What: "xattrs"},
		{Path: "bin/e", Kind: manifest.Changed, What: "content,mode"},
		{Path: "bin/gone", Kind: manifest.Removed},
		{Path: "bin/gone/x", Kind: manifest.Removed},
		{Path: "bin/z", Kind: manifest.Added},
		{Path: "lib/t", Kind: manifest.Changed, What: "type"},
		{Path: "new", Kind: manifest.Added},
	}
	if got := manifest.Diff(a, b); !reflect.DeepEqual(got, want) {
		t.Errorf("Diff:\n%+v\nwant\n%+v", got, want)
	}
	// The other way round: added and removed swap, changes stay.
	back := manifest.Diff(b, a)
	if len(back) != len(want) || back[6].Kind != manifest.Added || back[8].Kind != manifest.Removed || back[10].Kind != manifest.Removed {
		t.Errorf("Diff back: %+v", back)
	}
	if got := manifest.Diff(a, a); got == nil || len(got) != 0 {
		t.Errorf("Diff with itself: %#v", got)
	}
	// Against nothing but the root, everything else is added.
	root := decodeLines(t, manifest.HeaderV2, "d . 0755 0 0")
	if got := manifest.Diff(root, a); len(got) != len(a.Entries)-1 || got[0].Path != "bin" || got[0].Kind != manifest.Added {
		t.Errorf("Diff from the root alone: %+v", got)
	}
}

// A v1 manifest says nothing about xattrs: against v2 they are not a
// change, everything else is.
func TestDiffV1(t *testing.T) {
	v1 := decodeLines(t, manifest.HeaderV1, "d . 0755 0 0", "f a 0644 0 0 3 "+h1, "f b 0644 0 0 3 "+h1)
	v2 := decodeLines(t, manifest.HeaderV2, "d . 0755 0 0", "f a 0644 0 0 3 "+h1+" x:user.k=01", "f b 0644 0 0 3 "+h2+" x:user.k=01")
	want := []manifest.FileChange{{Path: "b", Kind: manifest.Changed, What: "content"}}
	if got := manifest.Diff(v1, v2); !reflect.DeepEqual(got, want) {
		t.Errorf("v1 against v2: %+v", got)
	}
}
