package pkgdb

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse: any input either fails with ErrBad or gives a Set that is
// sorted, unique, and whose every field passes the checks, so that each
// AptArgs line is one plain "name[:arch]=version" word. Seeds: the golden
// files here and testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"testdata/trixie.status", "testdata/edge.status"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(oneStanza))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBad) {
				t.Fatalf("error is not ErrBad: %v", err)
			}
			return
		}
		for i := range s {
			p := &s[i]
			if i > 0 && comparePkg(s[i-1], *p) >= 0 {
				t.Fatalf("not sorted and unique at %s", p.Key())
			}
			if checkName(p.Name) != nil || checkArch(p.Arch) != nil || CheckVersion(p.Version) != nil {
				t.Fatalf("unchecked package %+v", p)
			}
			if _, present := states[p.Status]; !present {
				t.Fatalf("state %q", p.Status)
			}
		}
		for _, a := range s.AptArgs(s.Native()) {
			if strings.ContainsAny(a, " \t\n\r/") || strings.Count(a, "=") != 1 {
				t.Fatalf("apt argument %q", a)
			}
		}
		again, err := Parse(bytes.NewReader(data))
		if err != nil || !reflect.DeepEqual(s, again) {
			t.Fatalf("not deterministic: %v", err)
		}
		if d := Diff(s, s); len(d) != 0 {
			t.Fatalf("Diff of a set with itself: %v", d)
		}
	})
}
