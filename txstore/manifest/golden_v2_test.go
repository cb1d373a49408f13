package manifest_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/testkit"
)

// The v2 golden files pin the format with extended attributes, and the
// bytewise order of siblings that share a prefix ("foo" < "foo-bar" <
// "foo.d" < "foo/x": '-' 0x2d < '.' 0x2e < '/' 0x2f; an order by path
// component would put foo/x right after foo).
const (
	goldenV2Manifest = "testdata/golden-v2.manifest"
	goldenV2Digest   = "testdata/golden-v2.digest"
)

// capDacReadSearch is what `setcap cap_dac_read_search+ep` writes: a
// VFS_CAP_REVISION_2 header with the effective flag, then permitted bit 2.
var capDacReadSearch = []byte{1, 0, 0, 2, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// acl is the raw kernel encoding of a POSIX ACL (posix_acl_xattr_header,
// then one tag/perm/id entry each).
func acl(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

const (
	aclUserObj, aclUser, aclGroupObj, aclMask, aclOther = 0x01, 0x02, 0x04, 0x10, 0x20
	noID                                                = 0xffffffff
)

// A default ACL on a directory: u::rwx, u:1000:r-x, g::r-x, m::r-x, o::r-x.
var defaultACL = acl([3]uint32{aclUserObj, 7, noID}, [3]uint32{aclUser, 5, 1000}, [3]uint32{aclGroupObj, 5, noID}, [3]uint32{aclMask, 5, noID}, [3]uint32{aclOther, 5, noID})

// An access ACL on a 0640 file: u::rw-, u:1000:r--, g::r--, m::r--, o::---
// (the mask is the mode's group bits, so chmod 0640 keeps it as it is).
var accessACL = acl([3]uint32{aclUserObj, 6, noID}, [3]uint32{aclUser, 4, 1000}, [3]uint32{aclGroupObj, 4, noID}, [3]uint32{aclMask, 4, noID}, [3]uint32{aclOther, 0, noID})

type goldenV2Entry struct {
	goldenEntry
	xattrs []manifest.Xattr
}

var goldenV2Tree = []goldenV2Entry{
	{goldenEntry: goldenEntry{path: ".", dir: true, mode: 0o755}},
	{goldenEntry: goldenEntry{path: "bin", dir: true, mode: 0o755}},
	{goldenEntry: goldenEntry{path: "bin/cat", data: "a copy of cat", mode: 0o755},
		xattrs: []manifest.Xattr{{Name: "security.capability", Value: capDacReadSearch}}},
	{goldenEntry: goldenEntry{path: "bin/dog", link: "cat"},
		xattrs: []manifest.Xattr{{Name: "security.txboot", Value: []byte("label")}, {Name: "trusted.t", Value: []byte{0}}}},
	{goldenEntry: goldenEntry{path: "etc", dir: true, mode: 0o755},
		xattrs: []manifest.Xattr{{Name: "user.empty", Value: nil}, {Name: "system.posix_acl_default", Value: defaultACL}}},
	{goldenEntry: goldenEntry{path: "etc/acl", data: "acl", mode: 0o640, uid: 1000, gid: 100},
		xattrs: []manifest.Xattr{{Name: "system.posix_acl_access", Value: accessACL}, {Name: "user.a=b,c% d", Value: []byte("text/plain")}}},
	{goldenEntry: goldenEntry{path: "foo", dir: true, mode: 0o755}},
	{goldenEntry: goldenEntry{path: "foo-bar", data: "foo-bar", mode: 0o644}},
	{goldenEntry: goldenEntry{path: "foo.d", dir: true, mode: 0o755}},
	{goldenEntry: goldenEntry{path: "foo/x", data: "x", mode: 0o644},
		xattrs: []manifest.Xattr{{Name: "trusted.txboot", Value: []byte("y")}}},
}

func buildGoldenV2Tree(t *testing.T, dir string) { buildTree(t, dir, goldenV2Tree) }

func goldenV2Entries(t *testing.T) []manifest.Entry {
	t.Helper()
	return entriesOf(t, goldenV2Tree) // the table is in canonical order: TestGoldenV2Decode checks it
}

// asV2 gives v1 golden entries the v2 table's type, without xattrs.
func asV2(es []goldenEntry) []goldenV2Entry {
	out := make([]goldenV2Entry, len(es))
	for i, e := range es {
		out[i].goldenEntry = e
	}
	return out
}

// buildTree makes a golden tree in dir. Modes last, deepest first, so
// read-only directories do not stop the writes; raw unix.Chmod keeps
// setuid/setgid bits os.Chmod would drop. Owners only as root. Xattrs are
// set after every entry exists (a default ACL set first would be inherited
// by the later ones), after chown (which drops security.capability) and
// before chmod.
func buildTree(t *testing.T, dir string, tree []goldenV2Entry) {
	t.Helper()
	for _, e := range tree {
		p := filepath.Join(dir, e.path)
		var err error
		switch {
		case e.dir && e.path != ".":
			err = os.Mkdir(p, 0o700)
		case e.link != "":
			err = os.Symlink(e.link, p)
		case !e.dir:
			err = os.WriteFile(p, []byte(e.data), 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := len(tree) - 1; i >= 0; i-- {
		e := tree[i]
		p := filepath.Join(dir, e.path)
		if os.Geteuid() == 0 {
			if err := os.Lchown(p, int(e.uid), int(e.gid)); err != nil {
				t.Fatal(err)
			}
		}
		for _, x := range e.xattrs {
			if err := unix.Lsetxattr(p, x.Name, x.Value, 0); err != nil {
				t.Fatalf("setxattr %s %s: %v", p, x.Name, err)
			}
		}
		if e.link == "" {
			if err := unix.Chmod(p, e.mode); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// entriesOf is the manifest entries a golden table describes, in its order.
func entriesOf(t *testing.T, tree []goldenV2Entry) []manifest.Entry {
	t.Helper()
	var es []manifest.Entry
	for _, g := range tree {
		x, err := manifest.EncodeXattrs(g.xattrs)
		if err != nil {
			t.Fatal(err)
		}
		e := manifest.Entry{Path: g.path, UID: g.uid, GID: g.gid, Xattrs: x}
		switch {
		case g.dir:
			e.Type, e.Mode = manifest.Dir, g.mode
		case g.link != "":
			e.Type, e.Target = manifest.Symlink, g.link
		default:
			e.Type, e.Mode, e.Size, e.Hash = manifest.File, g.mode, int64(len(g.data)), sha256.Sum256([]byte(g.data))
		}
		es = append(es, e)
	}
	return es
}

func readGoldenV2(t *testing.T) ([]byte, string) {
	t.Helper()
	text, err := os.ReadFile(goldenV2Manifest)
	if err != nil {
		t.Fatal(err)
	}
	d, err := os.ReadFile(goldenV2Digest)
	if err != nil {
		t.Fatal(err)
	}
	return text, strings.TrimSuffix(string(d), "\n")
}

// TestGoldenV2Scan: the scanned tree (capability, ACLs, user.*, trusted.*,
// security.* on a symlink, prefix siblings) encodes to the golden text.
func TestGoldenV2Scan(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "needs root: trusted.* and security.capability xattrs, owners")
	}
	text, digest := readGoldenV2(t)
	dir := t.TempDir()
	buildGoldenV2Tree(t, dir)
	m, err := manifest.Scan(dir, manifest.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Encode(); !bytes.Equal(got, text) {
		t.Fatalf("the scanned tree encodes differently from %s:\n%s\nwant\n%s", goldenV2Manifest, got, text)
	}
	if got := m.Digest(); got != digest {
		t.Fatalf("digest %s, want %s (%s)", got, digest, goldenV2Digest)
	}
}

// TestGoldenV2Decode: the golden text decodes to the table's entries, in
// the table's order, and re-encodes to itself.
func TestGoldenV2Decode(t *testing.T) {
	text, digest := readGoldenV2(t)
	m, err := manifest.Decode(text)
	if err != nil {
		t.Fatalf("golden v2 manifest does not decode: %v", err)
	}
	if m.Version != 2 {
		t.Errorf("version %d, want 2", m.Version)
	}
	if want := goldenV2Entries(t); !reflect.DeepEqual(m.Entries, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", m.Entries, want)
	}
	if !bytes.Equal(m.Encode(), text) || m.Digest() != digest || manifest.Digest(text) != digest {
		t.Fatalf("golden v2 manifest does not re-encode to itself:\n%s", m.Encode())
	}
	for i := 1; i < len(m.Entries); i++ {
		if !manifest.Less(m.Entries[i-1].Path, m.Entries[i].Path) {
			t.Errorf("%q before %q", m.Entries[i-1].Path, m.Entries[i].Path)
		}
	}
}
