package pkgdb

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"

	"github.com/txboot/txboot/txstore/records"
)

// dump is a Set as the golden files hold it: one package a line, then the
// native architecture and AptArgs.
func dump(s Set) string {
	var b strings.Builder
	for _, p := range s {
		fmt.Fprintf(&b, "%s %s %s", p.Key(), p.Version, p.Status)
		if p.Reinstreq {
			b.WriteString(" reinstreq")
		}
		if p.Broken() {
			b.WriteString(" broken")
		}
		b.WriteString("\n")
	}
	native := s.Native()
	fmt.Fprintf(&b, "native %s\n", native)
	for _, a := range s.AptArgs(native) {
		fmt.Fprintf(&b, "apt %s\n", a)
	}
	return b.String()
}

// The golden files are checked by hand, and by TestDpkgQuery against
// dpkg itself: trixie.status is an excerpt of a Debian 13 status file as
// debootstrap left it; edge.status holds the cases a real file may have.
func TestGolden(t *testing.T) {
	for _, name := range []string{"trixie", "edge"} {
		t.Run(name, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", name+".status"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			s, err := Parse(f)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join("testdata", name+".golden"))
			if err != nil {
				t.Fatal(err)
			}
			if got := dump(s); got != string(want) {
				t.Errorf("got\n%s\nwant\n%s", got, want)
			}
		})
	}
}

// TestDpkgQuery: on the golden files, the packages and states dpkg-query
// lists are the Set's (where dpkg is installed).
func TestDpkgQuery(t *testing.T) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		testkit.Skip(t, "no dpkg-query here (package dpkg)")
	}
	for _, name := range []string{"trixie", "edge"} {
		admin := t.TempDir()
		data, err := os.ReadFile(filepath.Join("testdata", name+".status"))
		if err != nil {
			t.Fatal(err)
		}
		os.Mkdir(filepath.Join(admin, "updates"), 0o755)
		os.Mkdir(filepath.Join(admin, "info"), 0o755)
		os.WriteFile(filepath.Join(admin, "status"), data, 0o644)
		out, err := exec.Command("dpkg-query", "--admindir="+admin, "-W", "-f", "${Package}:${Architecture} ${Version} ${db:Status-Status} ${db:Status-Eflag}\n").Output()
		if err != nil {
			t.Fatalf("%s: dpkg-query: %v", name, err)
		}
		var want []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(l)
			if len(f) == 4 && states[f[2]] {
				want = append(want, l)
			}
		}
		s, err := Parse(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range s {
			flag := "ok"
			if p.Reinstreq {
				flag = "reinstreq"
			}
			got = append(got, fmt.Sprintf("%s %s %s %s", p.Key(), p.Version, p.Status, flag))
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got\n%s\ndpkg-query says\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

func TestParseErrors(t *testing.T) {
	const ok = "Package: a1\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n"
	cases := []struct {
		name, in, msg string
	}{
		{"comment", "# generated\n" + ok, "line 1: malformed dpkg status: a line starting with '#'"},
		{"comment inside", "Package: a1\n#x\n", "line 2: malformed"},
		{"no colon", ok + "Garbage\n", "line 5: malformed dpkg status: \"Garbage\" is not a field"},
		{"space before colon", "Package : a1\n", "is not a field"},
		{"empty name", ": x\n", "is not a field"},
		{"hyphen name", "-Foo: x\n" + ok, "starts with '-'"},
		{"leading continuation", " x\n" + ok, "line 1: malformed dpkg status: continuation line outside a stanza"},
		{"continuation after blank", ok + "\n x\n", "line 6:"},
		{"multi-line version", "Package: a1\nVersion: 1\n 2\n", "line 3: malformed dpkg status: the Version value spans lines"},
		{"blank continuation", "Package: a1\nDescription: x\n \t\n", "line 3: malformed dpkg status: blank line in a value"},
		{"blank continuation of ours", "Package: a1\nVersion: 1\n \n", "blank line in the Version value"},
		{"repeated field", ok + "version: 2\n", "line 5: malformed dpkg status: field version repeated"},
		{"no package", "Status: install ok installed\n", "stanza at line 1: malformed dpkg status: no Package field"},
		{"no status", "Package: a1\n", "no Status field"},
		{"bad name", strings.Replace(ok, "a1", "a/1", 1), "bad package name \"a/1\""},
		{"name with hyphen first", strings.Replace(ok, "a1", "-a1", 1), "bad package name"},
		{"name with colon", strings.Replace(ok, "a1", "a1:amd64", 1), "bad package name"},
		{"short status", strings.Replace(ok, "ok installed", "installed", 1), "is not \"want flag state\""},
		{"bad want", strings.Replace(ok, "install ok", "want ok", 1), "is not \"want flag state\""},
		{"bad flag", strings.Replace(ok, " ok ", " hold ", 1), "is not \"want flag state\""},
		{"bad state", strings.Replace(ok, "ok installed", "ok broken", 1), "unknown state \"broken\""},
		{"no version", strings.Replace(ok, "Version: 1\n", "", 1), "package a1 (installed) has no Version field"},
		{"no arch", strings.Replace(ok, "Architecture: all\n", "", 1), "has no Architecture field"},
		{"bad arch", strings.Replace(ok, "Architecture: all", "Architecture: a_b", 1), "bad architecture \"a_b\""},
		{"version space", strings.Replace(ok, "Version: 1", "Version: 1 2", 1), "version \"1 2\""},
		{"version equals", strings.Replace(ok, "Version: 1", "Version: 1=2", 1), `character "="`},
		{"version empty upstream", strings.Replace(ok, "Version: 1", "Version: 1:-1", 1), "empty upstream version"},
		{"version epoch", strings.Replace(ok, "Version: 1", "Version: x:1", 1), "epoch is not a number"},
		{"version revision", strings.Replace(ok, "Version: 1", "Version: 1-", 1), "empty revision"},
		{"version revision char", strings.Replace(ok, "Version: 1", "Version: 1-a~b_c", 1), "in the revision"},
		{"unicode case", "Pac\u212aage: a1\n" + ok[len("Package: a1\n"):], "no Package field"},
		{"unicode space", strings.Replace(ok, "install ok", "install\u00a0ok", 1), "is not \"want flag state\""},
		{"unicode trailing space", strings.Replace(ok, "Version: 1", "Version: 1\u00a0", 1), `version "1\u00a0": character "\xc2"`},
		{"no final newline", strings.TrimSuffix(ok, "\n"), "line 4: malformed dpkg status: no newline at the end"},
		{"duplicate", ok + "\n" + ok, "package a1:all is listed twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.in))
			if err == nil || !errors.Is(err, ErrBad) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want ErrBad with %q", err, c.msg)
			}
		})
	}
}

func TestParseBounds(t *testing.T) {
	long := "Package: a1\nDescription: " + strings.Repeat("x", MaxLine) + "\n"
	if _, err := Parse(strings.NewReader(long)); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "line 2:") {
		t.Errorf("long line: %v", err)
	}
	// Just under the line bound is fine.
	fine := "Package: a1\nStatus: purge ok not-installed\nX: " + strings.Repeat("x", MaxLine-3) + "\n"
	if _, err := Parse(strings.NewReader(fine)); err != nil {
		t.Errorf("line at the bound: %v", err)
	}
	var many bytes.Buffer
	many.Grow(MaxStanzas * 48)
	for i := 0; i <= MaxStanzas; i++ {
		fmt.Fprintf(&many, "Package: p%d\nStatus: purge ok not-installed\n\n", i)
	}
	if _, err := Parse(&many); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "stanzas") {
		t.Errorf("too many stanzas: %v", err)
	}
	// Over MaxSize: the size is the error, even where the cut falls in
	// the middle of a field.
	stanza := "Package: p\nStatus: purge ok not-installed\nDescription: " + strings.Repeat("d", 4000) + "\n\n"
	if _, err := Parse(&repeatReader{s: stanza, left: MaxSize + int64(len(stanza))}); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("too large: %v", err)
	}
}

// repeatReader reads s over and over, left bytes in all, without holding
// them in memory.
type repeatReader struct {
	s    string
	off  int
	left int64
}

func (r *repeatReader) Read(b []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(b) && r.left > 0 {
		c := copy(b[n:min(len(b), n+int(min(r.left, int64(len(r.s)))))], r.s[r.off:])
		r.off = (r.off + c) % len(r.s)
		n += c
		r.left -= int64(c)
	}
	return n, nil
}

func TestAptArgs(t *testing.T) {
	s := Set{
		{Name: "a", Arch: "all", Version: "1", Status: "installed"},
		{Name: "b", Arch: "amd64", Version: "1:2.0-1", Status: "installed"},
		{Name: "b", Arch: "i386", Version: "1:2.0-1", Status: "installed"},
		{Name: "c", Arch: "amd64", Version: "3", Status: "unpacked"},
	}
	cases := []struct {
		native string
		want   []string
	}{
		{"amd64", []string{"a=1", "b=1:2.0-1", "b:i386=1:2.0-1"}},
		{"i386", []string{"a=1", "b:amd64=1:2.0-1", "b=1:2.0-1"}},
		{"", []string{"a=1", "b:amd64=1:2.0-1", "b:i386=1:2.0-1"}},
	}
	for _, c := range cases {
		if got := s.AptArgs(c.native); !reflect.DeepEqual(got, c.want) {
			t.Errorf("native %q: %q, want %q", c.native, got, c.want)
		}
	}
	if got := (Set{}).AptArgs("amd64"); got == nil || len(got) != 0 {
		t.Errorf("empty set: %#v", got)
	}
	if p, ok := s.Find("b", "i386"); !ok || p.Arch != "i386" {
		t.Errorf("Find b:i386: %+v %v", p, ok)
	}
	if _, ok := s.Find("b", "arm64"); ok {
		t.Error("Find b:arm64 found something")
	}
	if got := s.Broken(); len(got) != 1 || got[0].Name != "c" {
		t.Errorf("Broken: %+v", got)
	}
}

func TestDiff(t *testing.T) {
	pkg := func(name, arch, version string) Package {
		return Package{Name: name, Arch: arch, Version: version, Status: "installed"}
	}
	from := Set{pkg("a", "all", "1"), pkg("b", "amd64", "1.0"), pkg("b", "i386", "1.0"), pkg("c", "amd64", "2")}
	to := Set{pkg("b", "amd64", "1.1"), pkg("b", "i386", "1.0"), pkg("c", "amd64", "2"), pkg("d", "amd64", "0.1")}
	want := []records.PkgChange{
		{Name: "a", Arch: "all", Old: "1"},
		{Name: "b", Arch: "amd64", Old: "1.0", New: "1.1"},
		{Name: "d", Arch: "amd64", New: "0.1"},
	}
	if got := Diff(from, to); !reflect.DeepEqual(got, want) {
		t.Errorf("Diff: %+v\nwant %+v", got, want)
	}
	// Unsorted input is sorted first, and left as it was.
	rev := Set{to[3], to[2], to[1], to[0]}
	if got := Diff(from, rev); !reflect.DeepEqual(got, want) || rev[0].Name != "d" {
		t.Errorf("Diff unsorted: %+v", got)
	}
	if got := Diff(to, to); got == nil || len(got) != 0 {
		t.Errorf("Diff of a set with itself: %#v", got)
	}
	if got := Diff(nil, Set{pkg("x", "all", "1")}); len(got) != 1 || got[0].New != "1" {
		t.Errorf("Diff from nothing: %+v", got)
	}
	kinds := map[records.PkgChange]string{
		{Old: "", New: "1"}:       "installed",
		{Old: "1", New: ""}:       "removed",
		{Old: "1", New: "1.1"}:    "upgraded",
		{Old: "1:0", New: "9"}:    "downgraded",
		{Old: "1.0", New: "1.00"}: "changed",
	}
	for c, want := range kinds {
		if got := ChangeKind(c); got != want {
			t.Errorf("ChangeKind(%+v) = %s, want %s", c, got, want)
		}
	}
}

// TestCompareVersions: cases from Debian policy 5.6.12 and dpkg's own
// tests (t-version.c).
func TestCompareVersions(t *testing.T) {
	ascending := []string{"~~", "~~a", "~", "0", "0a", "0.1", "0.1-0.1", "1.0~rc1", "1.0", "1.0-1", "1.0-1+b1", "1.0a", "1.0+dfsg", "1.0.1",
		"1.2", "1.10", "2.41-12", "2.41-12+deb13u5", "2.41-13", "0:3", "1:0", "1:1.3.dfsg+really1.3.1-1+deb13u1", "2:0.1", "10:0"}
	for i := range ascending {
		for j := range ascending {
			got := CompareVersions(ascending[i], ascending[j])
			if sign(got) != sign(i-j) {
				t.Errorf("CompareVersions(%q, %q) = %d, want sign %d", ascending[i], ascending[j], got, sign(i-j))
			}
		}
	}
	equal := [][2]string{{"1.0", "1.00"}, {"0:1.0", "1.0"}, {"1.0", "1.0-0"}, {"00:1", "1"}, {"1.001", "1.1"}}
	for _, e := range equal {
		if got := CompareVersions(e[0], e[1]); got != 0 {
			t.Errorf("CompareVersions(%q, %q) = %d, want 0", e[0], e[1], got)
		}
	}
	// Epochs and digit runs beyond 64 bits compare as numbers.
	if CompareVersions("99999999999999999999999:1", "99999999999999999999998:2") <= 0 {
		t.Error("big epochs")
	}
	if CompareVersions("1.99999999999999999999999", "1.100000000000000000000000") >= 0 {
		t.Error("big digit runs")
	}
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}
