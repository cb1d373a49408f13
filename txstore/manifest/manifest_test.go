package manifest_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/testkit"
	"github.com/txboot/txboot/txstore/testtree"
)

// The same tree built in different orders, at different times, with
// different mtimes must have the same digest; a one-byte change must not.
func TestDeterminism(t *testing.T) {
	files := testtree.Sample()
	reversed := make([]testtree.File, len(files))
	for i := range files {
		reversed[len(files)-1-i] = files[i]
	}
	a, b := t.TempDir(), t.TempDir()
	if err := testtree.Write(a, files, time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	if err := testtree.Write(b, reversed, time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	ma, err := manifest.Scan(a, manifest.ScanOptions{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	mb, err := manifest.Scan(b, manifest.ScanOptions{Workers: 7})
	if err != nil {
		t.Fatal(err)
	}
	if ma.Digest() != mb.Digest() {
		t.Fatalf("digests differ:\n%s\n%s", ma.Encode(), mb.Encode())
	}
	if err := os.WriteFile(filepath.Join(b, "lib/os-release"), []byte("ID=txbooT\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mc, err := manifest.Scan(b, manifest.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if mc.Digest() == ma.Digest() {
		t.Fatal("content change did not change the digest")
	}
}

func TestRoundTrip(t *testing.T) {
	d := t.TempDir()
	if err := testtree.Write(d, testtree.Sample(), time.Unix(5, 0)); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Scan(d, manifest.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	enc := m.Encode()
	m2, err := manifest.Decode(enc)
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, enc)
	}
	if string(m2.Encode()) != string(enc) {
		t.Fatal("re-encoding differs")
	}
	if !strings.Contains(string(enc), "share/doc/odd%20name%20%251") {
		t.Fatalf("escaping: %s", enc)
	}
	if k := m.Kernels(); len(k) != 1 || k[0] != "6.1.0-test" {
		t.Fatalf("kernels %v", k)
	}
}

const h64 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func TestDecodeRejects(t *testing.T) {
	hdr := manifest.Header + "\n"
	root := "d . 0755 0 0\n"
	cases := []struct{ name, in string }{
		{"empty", ""},
		{"no header", root},
		{"no root", hdr},
		{"root not first", hdr + "d a 0755 0 0\n" + root},
		{"dotdot", hdr + root + "d .. 0755 0 0\n"},
		{"dotdot inside", hdr + root + "d a 0755 0 0\nf a/../b 0644 0 0 0 " + h64 + "\n"},
		{"absolute", hdr + root + "d /etc 0755 0 0\n"},
		{"empty component", hdr + root + "d a 0755 0 0\nd a//b 0755 0 0\n"},
		{"unsorted", hdr + root + "d b 0755 0 0\nd a 0755 0 0\n"},
		{"duplicate", hdr + root + "d a 0755 0 0\nd a 0755 0 0\n"},
		{"orphan", hdr + root + "f a/b 0644 0 0 0 " + h64 + "\n"},
		{"child of symlink", hdr + root + "l a 0 0 /etc\nf a/passwd 0644 0 0 0 " + h64 + "\n"},
		{"bad mode", hdr + root + "d a 9755 0 0\n"},
		{"short mode", hdr + root + "d a 755 0 0\n"},
		{"big mode", hdr + root + "d a 17777 0 0\n"},
		{"bad hash", hdr + root + "f a 0644 0 0 0 XYZ\n"},
		{"upper hash", hdr + root + "f a 0644 0 0 0 " + strings.ToUpper(h64) + "\n"},
		{"negative size", hdr + root + "f a 0644 0 0 -1 " + h64 + "\n"},
		{"leading zero", hdr + root + "f a 0644 00 0 0 " + h64 + "\n"},
		{"bad type", hdr + root + "c a 0644 0 0\n"},
		{"empty target", hdr + root + "l a 0 0 \n"},
		{"bad escape", hdr + root + "d a%2 0755 0 0\n"},
		{"lowercase escape", hdr + root + "d a%2f 0755 0 0\n"},
		{"escaped slash escape", hdr + root + "d a%2Fb 0755 0 0\n"},
		{"no final newline", hdr + strings.TrimSuffix(root, "\n")},
		{"extra field", hdr + root + "d a 0755 0 0 x\n"},
		{"nul", hdr + root + "d a%00 0755 0 0\n"},
		// The xattrs field (v2 only).
		{"xattrs on v1", manifest.HeaderV1 + "\n" + root + "d a 0755 0 0 x:user.a=00\n"},
		{"unknown header", "txboot-manifest-v3\n" + root},
		{"empty x:", hdr + root + "d a 0755 0 0 x:\n"},
		{"no x: prefix", hdr + root + "d a 0755 0 0 user.a=00\n"},
		{"two xattr fields", hdr + root + "d a 0755 0 0 x:user.a=00 x:user.b=00\n"},
		{"unsorted xattrs", hdr + root + "d a 0755 0 0 x:user.b=00,user.a=00\n"},
		{"duplicate xattr", hdr + root + "d a 0755 0 0 x:user.a=00,user.a=00\n"},
		{"uppercase value hex", hdr + root + "d a 0755 0 0 x:user.a=0A\n"},
		{"odd value hex", hdr + root + "d a 0755 0 0 x:user.a=0\n"},
		{"no =", hdr + root + "d a 0755 0 0 x:user.a\n"},
		{"empty name", hdr + root + "d a 0755 0 0 x:=00\n"},
		{"empty item", hdr + root + "d a 0755 0 0 x:user.a=00,\n"},
		{"trailing comma", hdr + root + "d a 0755 0 0 x:user.a=,\n"},
		{"unescaped comma in name", hdr + root + "d a 0755 0 0 x:user.a,b=00\n"},
		{"needless escape", hdr + root + "d a 0755 0 0 x:user.%61=00\n"},
		{"lowercase escape", hdr + root + "d a 0755 0 0 x:user.a%2cb=00\n"},
		{"bad escape", hdr + root + "d a 0755 0 0 x:user.a%2=00\n"},
		{"other system.* name", hdr + root + "d a 0755 0 0 x:system.data=00\n"},
		{"no namespace", hdr + root + "d a 0755 0 0 x:foo=00\n"},
		{"bare namespace", hdr + root + "d a 0755 0 0 x:user.=00\n"},
		{"name too long", hdr + root + "d a 0755 0 0 x:user." + strings.Repeat("n", 251) + "=00\n"},
		{"value too big", hdr + root + "d a 0755 0 0 x:user.a=" + strings.Repeat("00", manifest.XattrValueMax+1) + "\n"},
		{"entry too big", hdr + root + "d a 0755 0 0 x:user.a=" + strings.Repeat("00", 20000) + ",user.b=" + strings.Repeat("00", 20000) + "\n"},
		{"xattrs on a file, short", hdr + root + "f a 0644 0 0 0 x:user.a=00\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := manifest.Decode([]byte(c.in)); !errors.Is(err, manifest.ErrBad) && !errors.Is(err, manifest.ErrUnsafePath) {
				t.Fatalf("accepted or wrong error: %v", err)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(manifest.HeaderV1 + "\nd . 0755 0 0\nd a 0755 0 0\nf a/b 0644 0 0 0 " + h64 + "\nl c 0 0 a/b\n"))
	f.Add([]byte(manifest.HeaderV1 + "\nd . 0755 0 0\n"))
	// v2, with xattrs on each line shape (and a symlink target that looks
	// like an xattrs field).
	f.Add([]byte(manifest.HeaderV2 + "\nd . 0755 0 0 x:system.posix_acl_default=02000000\nd a 0755 0 0\nf a/b 0644 0 0 0 " + h64 +
		" x:security.capability=0100000204000000000000000000000000000000,user.a%3Db=\nl c 0 0 x:y x:trusted.t=00\nl d 0 0 x:z\n"))
	if text, err := os.ReadFile(goldenV2Manifest); err == nil {
		f.Add(text)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := manifest.Decode(data)
		// DecodeOwned (no copy) must agree with Decode on everything.
		m2, err2 := manifest.DecodeOwned(append([]byte(nil), data...))
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("Decode: %v, DecodeOwned: %v", err, err2)
		}
		if err != nil {
			return
		}
		if string(m2.Encode()) != string(data) {
			t.Fatal("DecodeOwned differs from Decode")
		}
		// Whatever decodes is canonical and safe.
		if string(m.Encode()) != string(data) {
			t.Fatal("accepted a non-canonical manifest")
		}
		for _, e := range m.Entries {
			if err := manifest.CheckPath(e.Path); err != nil {
				t.Fatalf("accepted unsafe path %q", e.Path)
			}
			// Whatever xattrs decode parse, and re-encode to themselves.
			xs, err := manifest.ParseXattrs(e.Xattrs)
			if err != nil {
				t.Fatalf("accepted bad xattrs %q: %v", e.Xattrs, err)
			}
			if enc, err := manifest.EncodeXattrs(xs); err != nil || enc != e.Xattrs {
				t.Fatalf("xattrs %q re-encode to %q, %v", e.Xattrs, enc, err)
			}
			if m.Version == 1 && e.Xattrs != "" {
				t.Fatalf("v1 manifest with xattrs %q", e.Xattrs)
			}
		}
	})
}

// Big manifests decode in parallel chunks: a round trip must be exact and
// a defect anywhere (a chunk's first or last line, or across a chunk
// boundary) must be caught with the right line number.
func TestDecodeBig(t *testing.T) {
	m := &manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0755}}}
	for d := 0; d < 100; d++ {
		dir := fmt.Sprintf("d%03d", d)
		m.Entries = append(m.Entries, manifest.Entry{Path: dir, Type: manifest.Dir, Mode: 0755})
		for f := 0; f < 200; f++ {
			m.Entries = append(m.Entries, manifest.Entry{Path: fmt.Sprintf("%s/f%03d", dir, f), Type: manifest.File, Mode: 0644, Size: int64(f)})
		}
	}
	enc := m.Encode()
	got, err := manifest.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Encode(), enc) || len(got.Entries) != len(m.Entries) {
		t.Fatal("round trip changed the manifest")
	}
	lines := strings.SplitAfter(string(enc), "\n")
	n := len(m.Entries)
	for _, i := range []int{1, 2, n / 2, n/2 + 1, n/2 + 2, n} { // 1-based entry numbers; line = i+1
		for _, c := range []struct{ name, line, want string }{
			{"bad mode", strings.Replace(lines[i], " 0644 ", " 0x44 ", 1), "mode"},
			{"swapped", "", "malformed manifest"},
		} {
			bad := append([]string(nil), lines...)
			if c.line != "" {
				if !strings.Contains(lines[i], " 0644 ") {
					continue
				}
				bad[i] = c.line
			} else {
				if i+1 >= len(lines)-1 || i == 1 {
					continue
				}
				bad[i], bad[i+1] = bad[i+1], bad[i]
			}
			_, err := manifest.Decode([]byte(strings.Join(bad, "")))
			if !errors.Is(err, manifest.ErrBad) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("entry %d %s: err %v, want %q", i, c.name, err, c.want)
			}
			if c.line != "" && !strings.HasPrefix(err.Error(), fmt.Sprintf("line %d:", i+1)) {
				t.Errorf("entry %d %s: err %v, want line %d", i, c.name, err, i+1)
			}
		}
	}
	if _, err := manifest.Decode(enc[:len(enc)-1]); !errors.Is(err, manifest.ErrBad) {
		t.Errorf("missing final newline: err %v", err)
	}
}

// Less is bytewise, not by path component: a name that extends another
// with a byte below '/' sorts between it and its children.
func TestLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{
		{".", "a", true},
		{"a", ".", false},
		{".", ".", false},
		{"python3", "python3.13", true},
		{"python3.13", "python3/x", true},
		{"modules", "modules-load.d", true},
		{"modules-load.d", "modules/x", true},
		{"foo", "foo-bar", true},
		{"foo-bar", "foo.d", true},
		{"foo.d", "foo/x", true},
		{"foo/x", "foo.d", false},
		{"a/b", "a/b", false},
	} {
		if got := manifest.Less(c.a, c.b); got != c.less {
			t.Errorf("Less(%q, %q) = %v, want %v", c.a, c.b, got, c.less)
		}
	}
}

func TestXattrsEncode(t *testing.T) {
	big := func(n int) []byte { return make([]byte, n) }
	x := func(name string, v []byte) manifest.Xattr { return manifest.Xattr{Name: name, Value: v} }
	cases := []struct {
		name string
		in   []manifest.Xattr
		want string
		err  error
	}{
		{"none", nil, "", nil},
		{"sorted by name", []manifest.Xattr{x("user.b", []byte{1}), x("security.capability", []byte{0xab}), x("user.a", nil)},
			"security.capability=ab,user.a=,user.b=01", nil},
		{"escaped name", []manifest.Xattr{x("user.a b,c=d%", []byte("v"))}, "user.a%20b%2Cc%3Dd%25=76", nil},
		{"acls", []manifest.Xattr{x("system.posix_acl_default", []byte{2}), x("system.posix_acl_access", []byte{2})},
			"system.posix_acl_access=02,system.posix_acl_default=02", nil},
		{"duplicate", []manifest.Xattr{x("user.a", nil), x("user.a", []byte{1})}, "", manifest.ErrXattr},
		{"other system.*", []manifest.Xattr{x("system.data", nil)}, "", manifest.ErrXattr},
		{"unknown namespace", []manifest.Xattr{x("os2.x", nil)}, "", manifest.ErrXattr},
		{"name at the limit", []manifest.Xattr{x("user."+strings.Repeat("n", manifest.XattrNameMax-5), nil)},
			"user." + strings.Repeat("n", manifest.XattrNameMax-5) + "=", nil},
		{"name too long", []manifest.Xattr{x("user."+strings.Repeat("n", manifest.XattrNameMax-4), nil)}, "", manifest.ErrXattrTooBig},
		{"value too big", []manifest.Xattr{x("user.a", big(manifest.XattrValueMax+1))}, "", manifest.ErrXattrTooBig},
		{"entry too big", []manifest.Xattr{x("user.a", big(manifest.MaxXattrBytes/2)), x("user.b", big(manifest.MaxXattrBytes/2))}, "", manifest.ErrXattrTooBig},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := manifest.EncodeXattrs(c.in)
			if c.err != nil {
				if !errors.Is(err, c.err) || !errors.Is(err, manifest.ErrXattr) {
					t.Fatalf("err %v, want %v", err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
			xs, err := manifest.ParseXattrs(got)
			if err != nil {
				t.Fatal(err)
			}
			if again, _ := manifest.EncodeXattrs(xs); again != got {
				t.Fatalf("parse and encode again: %q", again)
			}
		})
	}
}

// An entry's xattrs are in its object key, so the same content with other
// xattrs is another object; without xattrs the object name is unchanged.
func TestEntryKeyXattrs(t *testing.T) {
	e := manifest.Entry{Path: "a", Type: manifest.File, Mode: 0o755}
	plain := e.Key()
	if strings.Contains(plain.Name(), ".x") || plain.Name() != plain.Hash.String()+".0555" {
		t.Fatalf("name without xattrs changed: %s", plain.Name())
	}
	e.Xattrs = "security.capability=0100000204000000000000000000000000000000"
	withCap := e.Key()
	if withCap == plain || withCap.Name() == plain.Name() || !strings.HasPrefix(withCap.Name(), plain.Name()+".x") {
		t.Fatalf("xattrs not in the key: %s vs %s", withCap.Name(), plain.Name())
	}
	if len(withCap.Name()) != len(plain.Name())+2+16 {
		t.Fatalf("suffix not .x + 16 hex digits: %s", withCap.Name())
	}
}

// A manifest without xattrs encodes as v1 exactly when marked version 1,
// and the header is the only difference.
func TestVersions(t *testing.T) {
	m := &manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0o755}}}
	v2 := string(m.Encode())
	m.Version = 1
	v1 := string(m.Encode())
	if !strings.HasPrefix(v2, manifest.HeaderV2+"\n") || !strings.HasPrefix(v1, manifest.HeaderV1+"\n") || v1[len(manifest.HeaderV1):] != v2[len(manifest.HeaderV2):] {
		t.Fatalf("v1 %q, v2 %q", v1, v2)
	}
	for _, c := range []struct {
		text string
		v    int
	}{{v1, 1}, {v2, 2}} {
		d, err := manifest.Decode([]byte(c.text))
		if err != nil || d.Version != c.v || string(d.Encode()) != c.text {
			t.Fatalf("%q: version %v, %v", c.text, d, err)
		}
	}
	if !manifest.HasHeader([]byte(v1)) || !manifest.HasHeader([]byte(v2)) || manifest.HasHeader([]byte("txboot-manifest-v3\n")) {
		t.Fatal("HasHeader")
	}
}

// BenchmarkScanXattrs scans a 10k-entry tree with no xattrs and with one
// on a third of the files: ns/entry says what reading them costs.
func BenchmarkScanXattrs(b *testing.B) {
	for _, withX := range []bool{false, true} {
		b.Run(fmt.Sprintf("xattrs=%v", withX), func(b *testing.B) {
			dir := b.TempDir()
			n := 1
			for d := 0; d < 100; d++ {
				dd := filepath.Join(dir, fmt.Sprintf("d%03d", d))
				if err := os.Mkdir(dd, 0o755); err != nil {
					b.Fatal(err)
				}
				n++
				for f := 0; f < 99; f++ {
					p := filepath.Join(dd, fmt.Sprintf("f%03d", f))
					if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
						b.Fatal(err)
					}
					n++
					if withX && f%3 == 0 {
						if err := unix.Setxattr(p, "user.bench", []byte("v"), 0); err != nil {
							testkit.Skip(b, err.Error())
						}
					}
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := manifest.Scan(dir, manifest.ScanOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/entry")
		})
	}
}

// A file whose xattrs exceed MaxXattrBytes is refused at scan time, with
// its path (ext4 cannot hold that much in one inode; tmpfs can).
func TestScanXattrTooBig(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "txboot-xattr-")
	if err != nil {
		testkit.Skipf(t, "no /dev/shm: %v", err)
	}
	defer os.RemoveAll(dir)
	f := filepath.Join(dir, "big")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	half := make([]byte, manifest.MaxXattrBytes/2)
	for _, n := range []string{"user.a", "user.b"} {
		if err := unix.Setxattr(f, n, half, 0); err != nil {
			testkit.Skipf(t, "tmpfs without big user xattrs: %v", err)
		}
	}
	_, err = manifest.Scan(dir, manifest.ScanOptions{})
	if !errors.Is(err, manifest.ErrXattrTooBig) || !errors.Is(err, manifest.ErrXattr) || !strings.Contains(err.Error(), f) ||
		!strings.Contains(err.Error(), "user.a") {
		t.Fatalf("scan: %v, want ErrXattrTooBig naming %s", err, f)
	}
	// Under the bound it is recorded.
	if err := unix.Removexattr(f, "user.b"); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Scan(dir, manifest.ScanOptions{})
	if err != nil || !strings.Contains(m.Entries[1].Xattrs, "user.a=0000") {
		t.Fatalf("scan: %v", err)
	}
	if _, err := manifest.Decode(m.Encode()); err != nil {
		t.Fatalf("a manifest with a 16 KiB xattr does not decode: %v", err)
	}
}
