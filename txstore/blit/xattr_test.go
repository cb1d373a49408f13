package blit

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/xattr"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/testkit"
)

var capDacReadSearch = []byte{1, 0, 0, 2, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// rawACL is the kernel's xattr encoding of a POSIX ACL: version 2, then
// tag, perm, id per entry.
func rawACL(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

const noID = 0xffffffff

// u::rwx u:1000:r-x g::r-x m::r-x o::r-x
var dirDefaultACL = rawACL([3]uint32{1, 7, noID}, [3]uint32{2, 5, 1000}, [3]uint32{4, 5, noID}, [3]uint32{0x10, 5, noID}, [3]uint32{0x20, 5, noID})

// u::rw- u:1000:rw- g::r-- m::rw- o::--- (on a 0660 file), and with the
// write bits that mirror the mode stripped (a 0440 file): u::r-- m::r--.
var (
	fileAccessACL   = rawACL([3]uint32{1, 6, noID}, [3]uint32{2, 6, 1000}, [3]uint32{4, 4, noID}, [3]uint32{0x10, 6, noID}, [3]uint32{0x20, 0, noID})
	fileAccessACLRO = rawACL([3]uint32{1, 4, noID}, [3]uint32{2, 6, 1000}, [3]uint32{4, 4, noID}, [3]uint32{0x10, 4, noID}, [3]uint32{0x20, 0, noID})
)

type xnode struct {
	path, data, link string
	dir              bool
	mode             uint32
	xattrs           map[string][]byte
}

// xattrTree has every kind of xattr on every kind of entry, and "etc/plain",
// a directory made before its parent got a default ACL (so it has none):
// blitted after the ACL is set, it would inherit a copy unless blit removes
// it. "etc/empty" is an empty file (created fresh by blit, not linked).
var xattrTree = []xnode{
	{path: ".", dir: true, mode: 0o755, xattrs: map[string][]byte{"user.root": []byte("r")}},
	{path: "bin", dir: true, mode: 0o755},
	{path: "bin/cat", data: "cat", mode: 0o555, xattrs: map[string][]byte{"security.capability": capDacReadSearch}},
	{path: "bin/cat2", data: "cat", mode: 0o555}, // same content, no capability: another object
	{path: "bin/dog", link: "cat", xattrs: map[string][]byte{"security.txboot": []byte("label"), "trusted.t": {0}}},
	{path: "etc", dir: true, mode: 0o755, xattrs: map[string][]byte{"system.posix_acl_default": dirDefaultACL, "user.dir": []byte("d")}},
	{path: "etc/acl", data: "acl", mode: 0o440, xattrs: map[string][]byte{"system.posix_acl_access": fileAccessACLRO, "user.x": []byte("x")}},
	// Writable: in the tree, like its mode, its ACL loses its write bits.
	{path: "etc/acl-w", data: "acl-w", mode: 0o660, xattrs: map[string][]byte{"system.posix_acl_access": fileAccessACL}},
	{path: "etc/empty", data: "", mode: 0o444, xattrs: map[string][]byte{"user.e": nil}},
	{path: "etc/plain", dir: true, mode: 0o750},
	{path: "lib", dir: true, mode: 0o755},
	{path: "lib/t", data: "trusted", mode: 0o444, xattrs: map[string][]byte{"trusted.overlay.x": []byte("y")}},
}

// writeXattrTree makes the tree in dir: entries first, then xattrs deepest
// first (a default ACL set early would be inherited), then modes.
func writeXattrTree(t *testing.T, dir string) {
	t.Helper()
	for _, n := range xattrTree {
		p := filepath.Join(dir, n.path)
		var err error
		switch {
		case n.path == ".":
		case n.dir:
			err = os.Mkdir(p, 0o700)
		case n.link != "":
			err = os.Symlink(n.link, p)
		default:
			err = os.WriteFile(p, []byte(n.data), 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := len(xattrTree) - 1; i >= 0; i-- {
		n := xattrTree[i]
		p := filepath.Join(dir, n.path)
		for name, v := range n.xattrs {
			if err := unix.Lsetxattr(p, name, v, 0); err != nil {
				t.Fatalf("setxattr %s %s: %v", p, name, err)
			}
		}
		if n.link == "" {
			if err := unix.Chmod(p, n.mode); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// readXattrs reads every entry's xattrs straight from the filesystem.
func readXattrs(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range xattrTree {
		x, err := xattr.LRead(filepath.Join(dir, n.path))
		if err != nil {
			t.Fatal(err)
		}
		out[n.path] = x
	}
	return out
}

// storeObjects puts every non-empty file of m (scanned from src) in objs.
func storeObjects(t *testing.T, m *manifest.Manifest, src string, objs *cas.Store) {
	t.Helper()
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Type != manifest.File || e.Size == 0 {
			continue
		}
		k := e.Key()
		if has, err := objs.Has(k); err != nil || has {
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		tmp, err := objs.Stage(filepath.Join(src, e.Path), k, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := objs.Publish(tmp, k); err != nil {
			t.Fatal(err)
		}
	}
}

func newStore(t *testing.T) *cas.Store {
	t.Helper()
	d := t.TempDir()
	objs := &cas.Store{Dir: d + "/objects", TmpDir: d + "/tmp"}
	for _, p := range []string{objs.Dir, objs.TmpDir} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { objs.Close() })
	return objs
}

func problems(t *testing.T, m *manifest.Manifest, objs *cas.Store, dir string, full bool) []string {
	t.Helper()
	probs, err := Verify(m, objs, dir, full, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range probs {
		out = append(out, p.String())
	}
	return out
}

// A tree comes out exactly as it went in: scan → store → blit gives every
// entry the same xattrs (none added, none lost), the blitted tree rescans
// to the same digest and verifies clean; then damage to xattrs is found.
func TestXattrRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "needs root: security.capability, trusted.*")
	}
	t.Run("xattrat", testXattrRoundTrip)
	t.Run("by-path", func(t *testing.T) { // a kernel before 6.13
		defer xattr.ForceNoAt()()
		testXattrRoundTrip(t)
	})
}

func testXattrRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o700); err != nil {
		t.Fatal(err)
	}
	writeXattrTree(t, src)
	m, err := manifest.Scan(src, manifest.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Encode()), " x:security.capability=01000002") {
		t.Fatalf("scan lost the capability:\n%s", m.Encode())
	}
	objs := newStore(t)
	storeObjects(t, m, src, objs)
	dst := filepath.Join(t.TempDir(), "tree")
	if _, err := Blit(m, objs, dst, 2); err != nil {
		t.Fatal(err)
	}
	want, got := readXattrs(t, src), readXattrs(t, dst)
	if stripped := xattr.ForObject(want["etc/acl-w"]); got["etc/acl-w"] != stripped || stripped == want["etc/acl-w"] {
		t.Errorf("etc/acl-w: ACL %q in the tree, want its write bits stripped (%q)", got["etc/acl-w"], stripped)
	}
	delete(got, "etc/acl-w")
	delete(want, "etc/acl-w")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("blitted xattrs\n%q\nwant\n%q", got, want)
	}
	if got["etc/plain"] != "" {
		t.Fatalf("etc/plain kept an inherited ACL: %q", got["etc/plain"])
	}
	m2, err := manifest.Scan(dst, manifest.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// What blit makes is m with each file's mode and xattrs as its object
	// has them (no write bits): identical for a write-free source.
	asBlitted := &manifest.Manifest{Version: 2}
	for _, e := range m.Entries {
		if e.Type == manifest.File {
			k := e.Key()
			e.Mode, e.Xattrs = k.Mode, k.Xattrs
		}
		asBlitted.Entries = append(asBlitted.Entries, e)
	}
	if m2.Digest() != asBlitted.Digest() {
		t.Fatalf("blitted tree rescans differently:\n%s\nwant\n%s", m2.Encode(), asBlitted.Encode())
	}
	if ps := problems(t, m2, objs, dst, false); len(ps) != 0 {
		t.Fatalf("blitted tree against its own rescan: %q", ps)
	}
	for _, full := range []bool{false, true} {
		if ps := problems(t, m, objs, dst, full); len(ps) != 0 {
			t.Fatalf("full=%v: clean tree has problems %q", full, ps)
		}
	}

	// Damage: the object loses its capability, a directory gains an
	// attribute, a symlink's label changes.
	var cat *manifest.Entry
	for i := range m.Entries {
		if m.Entries[i].Path == "bin/cat" {
			cat = &m.Entries[i]
		}
	}
	if err := unix.Lremovexattr(objs.Path(cat.Key()), "security.capability"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(dst, "etc/plain"), "trusted.y", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(dst, "bin/dog"), "security.txboot", []byte("other"), 0); err != nil {
		t.Fatal(err)
	}
	wantProbs := []string{
		"bin/cat: security.capability missing",
		"bin/dog: security.txboot differs",
		"etc/plain: extra xattr trusted.y",
	}
	for _, full := range []bool{false, true} {
		if ps := problems(t, m, objs, dst, full); !reflect.DeepEqual(ps, wantProbs) {
			t.Errorf("full=%v: problems %q, want %q", full, ps, wantProbs)
		}
	}
	probs, _ := Verify(m, objs, dst, false, 2, nil)
	if len(probs) == 0 || probs[0].Path != "bin/cat" || !probs[0].InStore {
		t.Errorf("the object's own damage is not marked InStore: %+v", probs)
	}

	// A v1 manifest says nothing about xattrs: the same tree verifies
	// clean against it, and a v1 blit sets none.
	v1 := &manifest.Manifest{Version: 1}
	for _, e := range m.Entries {
		e.Xattrs = ""
		v1.Entries = append(v1.Entries, e)
	}
	storeObjects(t, v1, src, objs)
	dst1 := filepath.Join(t.TempDir(), "tree")
	if _, err := Blit(v1, objs, dst1, 2); err != nil {
		t.Fatal(err)
	}
	if x, _ := xattr.LRead(filepath.Join(dst1, "etc")); x != "" {
		t.Errorf("v1 blit set xattrs %q on etc", x)
	}
	var cat1 manifest.Entry
	for _, e := range v1.Entries {
		if e.Path == "bin/cat" {
			cat1 = e
		}
	}
	if err := unix.Lsetxattr(objs.Path(cat1.Key()), "security.capability", capDacReadSearch, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(dst1, "etc"), "user.y", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if ps := problems(t, v1, objs, dst1, false); len(ps) != 0 {
		t.Errorf("v1 manifest: problems %q, want none (xattrs not checked)", ps)
	}
	v1.Version = 2 // the same entries as v2: now the xattrs count
	// bin/cat and bin/cat2 share their object in a v1 tree.
	want2 := []string{"bin/cat: extra xattr security.capability", "bin/cat2: extra xattr security.capability", "etc: extra xattr user.y"}
	if ps := problems(t, v1, objs, dst1, false); !reflect.DeepEqual(ps, want2) {
		t.Errorf("as v2: problems %q, want %q", ps, want2)
	}
}

func benchTree(b *testing.B, dir string, n int, withX bool) {
	b.Helper()
	for d := 0; d < n/100; d++ {
		dd := filepath.Join(dir, fmt.Sprintf("d%03d", d))
		if err := os.Mkdir(dd, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := 0; f < 99; f++ {
			p := filepath.Join(dd, fmt.Sprintf("f%03d", f))
			if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
				b.Fatal(err)
			}
			if withX && f%3 == 0 {
				if err := unix.Setxattr(p, "user.bench", []byte("v"), 0); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}

// BenchmarkVerifyXattrs is fast verify of a blitted 10k-entry tree, v2
// (xattrs checked) with none or a third of the files carrying one, and
// the same tree as v1 (xattrs not looked at): ns/entry says what the
// xattr checks cost.
func BenchmarkVerifyXattrs(b *testing.B) {
	for _, c := range []struct {
		name      string
		withX, v1 bool
	}{{"v1", false, true}, {"v2-none", false, false}, {"v2-third", true, false}} {
		b.Run(c.name, func(b *testing.B) {
			src := filepath.Join(b.TempDir(), "src")
			os.Mkdir(src, 0o755)
			benchTree(b, src, 10000, c.withX)
			m, err := manifest.Scan(src, manifest.ScanOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if c.v1 {
				m.Version = 1
			}
			d := b.TempDir()
			objs := &cas.Store{Dir: d + "/objects", TmpDir: d + "/tmp"}
			os.MkdirAll(objs.Dir, 0o755)
			os.MkdirAll(objs.TmpDir, 0o755)
			defer objs.Close()
			for i := range m.Entries {
				e := &m.Entries[i]
				if e.Type == manifest.File && e.Size > 0 {
					tmp, err := objs.Stage(filepath.Join(src, e.Path), e.Key(), nil)
					if err == nil {
						err = objs.Publish(tmp, e.Key())
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			dst := filepath.Join(d, "tree")
			if _, err := Blit(m, objs, dst, 0); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				probs, err := Verify(m, objs, dst, false, 0, nil)
				if err != nil || len(probs) != 0 {
					b.Fatal(err, probs)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(m.Entries)), "ns/entry")
		})
	}
}
