package manifest_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/manifest"
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
	f.Add([]byte(manifest.Header + "\nd . 0755 0 0\nd a 0755 0 0\nf a/b 0644 0 0 0 " + h64 + "\nl c 0 0 a/b\n"))
	f.Add([]byte(manifest.Header + "\nd . 0755 0 0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := manifest.Decode(data)
		if err != nil {
			return
		}
		// Whatever decodes is canonical and safe.
		if string(m.Encode()) != string(data) {
			t.Fatal("accepted a non-canonical manifest")
		}
		for _, e := range m.Entries {
			if err := manifest.CheckPath(e.Path); err != nil {
				t.Fatalf("accepted unsafe path %q", e.Path)
			}
		}
	})
}
