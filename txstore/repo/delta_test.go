package repo

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
)

func TestApplyDelta(t *testing.T) {
	parent := []byte("H\na\nb\nc\n")
	from := manifest.Digest(parent)
	h1 := strings.Repeat("1", 64)
	cases := []struct {
		name     string
		script   string // after the header
		want     string // result; "" = an error
		to       string // digest in the header; "" = the result's
		from     string // "" = parent's
		inserted []int
		table    int
	}{
		{name: "copy all", script: "=4\n", want: "H\na\nb\nc\n"},
		{name: "copy skip insert", script: "=1\n-1\n+x\n=2\n", want: "H\nx\nb\nc\n", inserted: []int{0}},
		{name: "insert at end", script: "=4\n+d\n+e\n", want: "H\na\nb\nc\nd\ne\n", inserted: []int{3, 4}},
		{name: "skip all but header", script: "=1\n-3\n", want: "H\n"},
		{name: "table", script: "=4\no" + h1 + " 5 r 5\n", want: "H\na\nb\nc\n", table: 1},
		{name: "copy out of range", script: "=5\n"},
		{name: "skip out of range", script: "=1\n-4\n"},
		{name: "zero count", script: "=0\n=4\n"},
		{name: "leading zero", script: "=04\n"},
		{name: "negative", script: "=-1\n"},
		{name: "huge count", script: "=99999999999999999999\n"},
		{name: "unconsumed", script: "=3\n"},
		{name: "insert header", script: "+H\n-1\n=3\n"},
		{name: "wrong digest", script: "=4\n", to: "sha256:" + strings.Repeat("0", 64)},
		{name: "trailing garbage", script: "=4\ngarbage\n"},
		{name: "no final newline", script: "=4"},
		{name: "empty line", script: "=4\n\n"},
		{name: "op after table", script: "=3\no" + h1 + " 5 r 5\n=1\n"},
		{name: "bad table line", script: "=4\nozz 5 r 5\n"},
		{name: "parent mismatch", script: "=4\n", from: "sha256:" + strings.Repeat("2", 64)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			to := c.to
			if to == "" {
				want := c.want
				if want == "" { // a delta that must fail: name some digest
					want = "H\n"
				}
				to = manifest.Digest([]byte(want))
			}
			f := from
			if c.from != "" {
				f = c.from
			}
			delta := DeltaHeader + " " + f + " " + to + "\n" + c.script
			got, ins, table, err := ApplyDelta(parent, []byte(delta), f, to)
			if c.want == "" {
				if !errors.Is(err, ErrBadDelta) {
					t.Fatalf("got %q, %v; want ErrBadDelta", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want || !slices.Equal(ins, c.inserted) || len(table) != c.table {
				t.Fatalf("got %q inserted %v table %v; want %q %v %d", got, ins, table, c.want, c.inserted, c.table)
			}
		})
	}
	// Headers: empty, another version, other digests than asked for.
	to := manifest.Digest(parent)
	for _, d := range []string{"", "\n", "txboot-delta 2 " + from + " " + to + "\n=4\n",
		DeltaHeader + " " + to + " " + from + "x\n=4\n", DeltaHeader + "  " + from + " " + to + "\n=4\n"} {
		if _, _, _, err := ApplyDelta(parent, []byte(d), from, to); !errors.Is(err, ErrBadDelta) {
			t.Errorf("delta %q: %v, want ErrBadDelta", d, err)
		}
	}
}

// TestMakeDelta: the delta between two real manifests reproduces the
// target, lists as inserted exactly the changed and added entries, and
// carries only the table lines given.
func TestMakeDelta(t *testing.T) {
	ent := func(p, data string) manifest.Entry {
		return manifest.Entry{Type: manifest.File, Path: p, Mode: 0o644, Size: int64(len(data)), Hash: sha(data)}
	}
	dir := func(p string) manifest.Entry { return manifest.Entry{Type: manifest.Dir, Path: p, Mode: 0o755} }
	parent := &manifest.Manifest{Entries: []manifest.Entry{dir("."), dir("a"), ent("a/keep", "k"), ent("a/old", "o"), ent("a/change", "1"), dir("b"), ent("b/x", "x")}}
	target := &manifest.Manifest{Entries: []manifest.Entry{dir("."), dir("a"), ent("a/change", "2"), ent("a/keep", "k"), ent("a/new", "n"), dir("b"), ent("b/x", "x"), ent("c", "c")}}
	parent.Sort()
	target.Sort()
	table := []TableEntry{{Hash: sha("2").String(), Size: 1, Stored: 1}}
	d, err := MakeDelta(parent, target, table)
	if err != nil {
		t.Fatal(err)
	}
	raw, ins, tab, err := ApplyDelta(parent.Encode(), d, parent.Digest(), target.Digest())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, target.Encode()) || len(tab) != 1 || tab[0] != table[0] {
		t.Fatalf("result %q table %v", raw, tab)
	}
	var got []string
	for _, i := range ins {
		got = append(got, target.Entries[i].Path)
	}
	if want := []string{"a/change", "a/new", "c"}; !slices.Equal(got, want) {
		t.Fatalf("inserted %v, want %v (delta %q)", got, want, d)
	}
}

func FuzzApplyDelta(f *testing.F) {
	parent := []byte("H\na\nb\nc\n")
	from := manifest.Digest(parent)
	to := manifest.Digest([]byte("H\nx\nb\nc\n"))
	f.Add([]byte(DeltaHeader + " " + from + " " + to + "\n=1\n-1\n+x\n=2\n"))
	f.Add([]byte(DeltaHeader + " " + from + " " + to + "\n=4\no" + strings.Repeat("1", 64) + " 5 r 5\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, delta []byte) {
		raw, ins, _, err := ApplyDelta(parent, delta, from, to)
		if err != nil {
			if !errors.Is(err, ErrBadDelta) {
				t.Fatalf("error not ErrBadDelta: %v", err)
			}
			return
		}
		if manifest.Digest(raw) != to {
			t.Fatalf("accepted a result that is not %s", to)
		}
		n := len(lines(raw)) - 1
		for _, i := range ins {
			if i < 0 || i >= n {
				t.Fatalf("inserted index %d of %d entries", i, n)
			}
		}
	})
}

func sha(s string) cas.Hash { return cas.Hash(sha256.Sum256([]byte(s))) }
