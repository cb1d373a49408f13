package sealimg

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/testkit"
)

// clone copies m so a case can change its entries.
func clone(m *manifest.Manifest) *manifest.Manifest {
	return &manifest.Manifest{Version: m.Version, Entries: append([]manifest.Entry(nil), m.Entries...)}
}

// entry returns m's entry at path p.
func entry(t testing.TB, m *manifest.Manifest, p string) *manifest.Entry {
	t.Helper()
	for i := range m.Entries {
		if m.Entries[i].Path == p {
			return &m.Entries[i]
		}
	}
	t.Fatalf("no entry %s", p)
	return nil
}

func xattrs(t testing.TB, xs ...manifest.Xattr) string {
	t.Helper()
	s, err := manifest.EncodeXattrs(xs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hashOf is a stand-in content hash for entries that exist only in the
// manifest.
func hashOf(s string) cas.Hash { return cas.Hash(sha256.Sum256([]byte(s))) }

// extras adds what a non-root scan cannot make and what no test should
// write to disk: a 5 GiB file, ids above 65535, every xattr namespace, a
// value that spans blocks, and a directory of subdirectories.
func extras(t testing.TB, m *manifest.Manifest) *manifest.Manifest {
	m = clone(m)
	add := func(e manifest.Entry) { m.Entries = append(m.Entries, e) }
	add(manifest.Entry{Path: "huge", Type: manifest.File, Mode: 0o644, Size: 5 << 30, Hash: hashOf("huge")})
	add(manifest.Entry{Path: "ids", Type: manifest.Dir, Mode: 0o2755, UID: 1 << 20, GID: 70000})
	add(manifest.Entry{Path: "ids/f", Type: manifest.File, Mode: 0o4711, UID: 65536, GID: 3, Size: 9, Hash: hashOf("f")})
	add(manifest.Entry{Path: "ids/l", Type: manifest.Symlink, UID: 3, GID: 1 << 31, Target: "../huge"})
	add(manifest.Entry{Path: "xa", Type: manifest.File, Mode: 0o755, Size: 1, Hash: hashOf("xa"), Xattrs: xattrs(t,
		manifest.Xattr{Name: "security.capability", Value: vfsCap()},
		manifest.Xattr{Name: "system.posix_acl_access", Value: []byte{2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff}},
		manifest.Xattr{Name: "trusted.a", Value: []byte("t")},
		manifest.Xattr{Name: "user.b", Value: nil})})
	add(manifest.Entry{Path: "xbig", Type: manifest.Dir, Mode: 0o755, Xattrs: xattrs(t,
		manifest.Xattr{Name: "user.big", Value: bytes.Repeat([]byte{7}, 20000)},
		manifest.Xattr{Name: "system.posix_acl_default", Value: []byte{2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff}})})
	add(manifest.Entry{Path: "xbig/l", Type: manifest.Symlink, Target: strings.Repeat("t", 4095),
		Xattrs: xattrs(t, manifest.Xattr{Name: "trusted.x", Value: []byte("1")})}) // the kernel hides user.* on symlinks
	for i := range 300 {
		add(manifest.Entry{Path: fmt.Sprintf("subdirs/%03d", i), Type: manifest.Dir, Mode: 0o755})
	}
	add(manifest.Entry{Path: "subdirs", Type: manifest.Dir, Mode: 0o755})
	add(manifest.Entry{Path: "plain", Type: manifest.Dir, Mode: 0o755})
	for i := range 120 { // the last dirent block is over half full: not inlined
		add(manifest.Entry{Path: fmt.Sprintf("plain/%040d", i), Type: manifest.File, Mode: 0o644})
	}
	m.Sort()
	return m
}

func TestDeterministic(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, treeSpec{root: os.Geteuid() == 0})
	base := extras(t, scan(t, src))
	want := build(t, base, fakeObjects)
	if again := build(t, extras(t, scan(t, src)), fakeObjects); !bytes.Equal(again, want) {
		t.Fatal("two builds of the same tree differ")
	}
	otherDigest := func(e *manifest.Entry) (Object, error) {
		o, err := fakeObjects(e)
		o.Verity[31] ^= 1
		return o, err
	}
	for _, c := range []struct {
		name   string
		change func(m *manifest.Manifest)
		obj    func(*manifest.Entry) (Object, error)
	}{
		{"mode", func(m *manifest.Manifest) { entry(t, m, "bin/su").Mode = 0o755 }, nil},
		{"dir mode", func(m *manifest.Manifest) { entry(t, m, "a").Mode = 0o700 }, nil},
		{"uid", func(m *manifest.Manifest) { entry(t, m, "ids/f").UID = 65537 }, nil},
		{"xattr", func(m *manifest.Manifest) {
			entry(t, m, "sizes/f2").Xattrs = xattrs(t, manifest.Xattr{Name: "user.note", Value: []byte("hellp")})
		}, nil},
		{"target", func(m *manifest.Manifest) { entry(t, m, "bin/short").Target = "sv" }, nil},
		{"size", func(m *manifest.Manifest) { entry(t, m, "huge").Size++ }, nil},
		{"content", func(m *manifest.Manifest) { entry(t, m, "sizes/f1").Hash[0] ^= 1 }, nil},
		{"verity digest", func(*manifest.Manifest) {}, otherDigest},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := clone(base)
			c.change(m)
			obj := c.obj
			if obj == nil {
				obj = fakeObjects
			}
			if bytes.Equal(build(t, m, obj), want) {
				t.Errorf("changing the %s left the image unchanged", c.name)
			}
		})
	}
}

func TestFsck(t *testing.T) {
	if _, err := exec.LookPath("fsck.erofs"); err != nil {
		testkit.Skip(t, "fsck.erofs not installed (erofs-utils)")
	}
	src := t.TempDir()
	makeTree(t, src, treeSpec{root: os.Geteuid() == 0})
	scanned := scan(t, src)
	only := func(es ...manifest.Entry) *manifest.Manifest {
		root := manifest.Entry{Path: ".", Type: manifest.Dir, Mode: 0o755}
		return &manifest.Manifest{Version: 2, Entries: append([]manifest.Entry{root}, es...)}
	}
	for _, c := range []struct {
		name string
		m    *manifest.Manifest
	}{
		{"empty root", only()},
		{"one empty file", only(manifest.Entry{Path: "e", Type: manifest.File, Mode: 0o600})},
		{"scanned tree", scanned},
		{"with extras", extras(t, scanned)},
	} {
		t.Run(c.name, func(t *testing.T) {
			fsck(t, writeImage(t, build(t, c.m, fakeObjects)), "--extract")
		})
	}
}

// TestLayouts checks that the trees the fsck and mount tests use hold every
// inode form and layout the writer makes.
func TestLayouts(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, treeSpec{})
	tr, err := newTree(extras(t, scan(t, src)), fakeObjects)
	if err != nil {
		t.Fatal(err)
	}
	tr.layout()
	seen := map[string]bool{}
	for _, n := range tr.nodes {
		k := fmt.Sprintf("%c layout %d", n.e.Type, n.layout)
		if n.blocks > 0 {
			k += " +blocks"
		}
		seen[k] = true
		seen[fmt.Sprintf("extended %c", n.e.Type)] = seen[fmt.Sprintf("extended %c", n.e.Type)] || n.extended
	}
	for _, k := range []string{"d layout 2", "d layout 2 +blocks", "d layout 0 +blocks", "l layout 2", "l layout 0 +blocks",
		"f layout 4", "f layout 0", "extended d", "extended f", "extended l"} {
		if !seen[k] {
			t.Errorf("no inode with %s", k)
		}
	}
}

func TestUnsealable(t *testing.T) {
	for _, name := range []string{"trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.metacopy"} {
		t.Run(name, func(t *testing.T) {
			m := &manifest.Manifest{Version: 2, Entries: []manifest.Entry{
				{Path: ".", Type: manifest.Dir, Mode: 0o755},
				{Path: "d", Type: manifest.Dir, Mode: 0o755, Xattrs: xattrs(t, manifest.Xattr{Name: name, Value: []byte("y")})},
			}}
			err := Build(&bytes.Buffer{}, m, fakeObjects)
			if !errors.Is(err, ErrUnsealable) || !strings.Contains(err.Error(), `d has xattr `+name) {
				t.Fatalf("Build: %v, want ErrUnsealable naming d and %s", err, name)
			}
		})
	}
}

func TestObjectError(t *testing.T) {
	boom := errors.New("boom")
	m := &manifest.Manifest{Version: 2, Entries: []manifest.Entry{
		{Path: ".", Type: manifest.Dir, Mode: 0o755},
		{Path: "f", Type: manifest.File, Mode: 0o644, Size: 1, Hash: hashOf("f")},
	}}
	err := Build(&bytes.Buffer{}, m, func(*manifest.Entry) (Object, error) { return Object{}, boom })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "object of f") {
		t.Fatalf("Build: %v, want boom naming f", err)
	}
}

func TestOverlayOptions(t *testing.T) {
	for _, c := range []struct{ mnt, obj, want string }{
		{"/run/x", "/o", "ro,lowerdir=/run/x::/o,metacopy=on,redirect_dir=on,verity=require"},
		{`/a:b,c\d`, "/o:", `ro,lowerdir=/a\:b\,c\\d::/o\:,metacopy=on,redirect_dir=on,verity=require`},
	} {
		if got := OverlayOptions(c.mnt, c.obj); got != c.want {
			t.Errorf("OverlayOptions(%q, %q) = %q, want %q", c.mnt, c.obj, got, c.want)
		}
	}
}

// synthetic is a /usr-like manifest of n entries: directories of 16
// names, a tenth of the rest symlinks, files of a few KiB.
func synthetic(n int) *manifest.Manifest {
	es := []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0o755}}
	dir := "."
	for i := 1; len(es) < n; i++ {
		p := fmt.Sprintf("%s/entry-%07d", dir, i)[len(dir)+1:]
		if dir != "." {
			p = dir + "/" + p
		}
		switch {
		case i%16 == 0:
			es = append(es, manifest.Entry{Path: p, Type: manifest.Dir, Mode: 0o755})
			dir = p
			if strings.Count(dir, "/") > 4 {
				dir = "."
			}
		case i%10 == 3:
			es = append(es, manifest.Entry{Path: p, Type: manifest.Symlink, Target: "../lib/x86_64-linux-gnu/libfoo.so.1"})
		default:
			es = append(es, manifest.Entry{Path: p, Type: manifest.File, Mode: 0o644, Size: int64(i%9000 + 1), Hash: hashOf(p)})
		}
	}
	m := &manifest.Manifest{Version: 2, Entries: es}
	m.Sort()
	return m
}

func BenchmarkBuild(b *testing.B) {
	m := synthetic(125_000)
	var n countWriter
	for b.Loop() {
		n = 0
		if err := Build(&n, m, fakeObjects); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n), "image-bytes")
	b.ReportMetric(float64(n)/float64(len(m.Entries)), "bytes/entry")
}

// countWriter counts what Build writes, so the benchmark times the build
// and not a growing buffer.
type countWriter int

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}
