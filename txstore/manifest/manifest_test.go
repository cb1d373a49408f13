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
