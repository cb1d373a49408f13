package manifest_test

import (
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/manifest"
)

// The golden files pin the on-disk manifest format: every tx's digest is
// sha256 of this text, and boot entries pin that digest, so a change to the
// encoding would orphan every existing tx. They are edited by hand, on
// purpose (no -update flag): changing them is a format change.
const (
	goldenManifest = "testdata/golden.manifest"
	goldenDigest   = "testdata/golden.digest"
)

// goldenEntry is one node of the golden tree, with the owner it gets when
// the test can chown (as root); otherwise the scanned owner is replaced.
type goldenEntry struct {
	path, data, link string
	dir              bool
	mode             uint32
	uid, gid         uint32
}

// goldenTree covers every line shape: directories (one read-only), regular,
// executable, setuid and empty files, relative and absolute symlinks,
// non-root owners, duplicate content, and names the encoding must escape
// (space, '%', tab, newline, DEL).
var goldenTree = []goldenEntry{
	{path: ".", dir: true, mode: 0o755},
	{path: "bin", dir: true, mode: 0o755},
	{path: "bin/sh", data: "#!shell\n", mode: 0o755},
	{path: "bin/su", data: "setuid binary", mode: 0o4755},
	{path: "bin/ls", link: "sh"},
	{path: "lib", dir: true, mode: 0o755},
	{path: "lib/empty", data: "", mode: 0o644},
	{path: "lib/os-release", data: "ID=txboot\n", mode: 0o644},
	{path: "lib/modules", dir: true, mode: 0o755},
	{path: "lib/modules/6.1.0-test", dir: true, mode: 0o755},
	{path: "lib/modules/6.1.0-test/vmlinuz", data: "kernel image", mode: 0o644},
	{path: "share", dir: true, mode: 0o755},
	{path: "share/abs link", link: "/usr/lib/os-release"},
	{path: "share/odd%name\tx", data: "odd", mode: 0o640, uid: 1000, gid: 100},
	{path: "share/new\nline\x7f", data: "odd", mode: 0o444},
	{path: "share/games", dir: true, mode: 0o2775, uid: 0, gid: 60},
	{path: "share/ro", dir: true, mode: 0o555},
}

func buildGoldenTree(t *testing.T, dir string) { buildTree(t, dir, asV2(goldenTree)) }

func goldenEntries(t *testing.T) []manifest.Entry {
	t.Helper()
	m := &manifest.Manifest{Entries: entriesOf(t, asV2(goldenTree))}
	m.Sort()
	return m.Entries
}

func readGolden(t *testing.T) (text []byte, digest string) {
	t.Helper()
	text, err := os.ReadFile(goldenManifest)
	if err != nil {
		t.Fatal(err)
	}
	d, err := os.ReadFile(goldenDigest)
	if err != nil {
		t.Fatal(err)
	}
	return text, strings.TrimSuffix(string(d), "\n")
}

// TestGoldenScan: scanning the golden tree (which has no xattrs) gives the
// golden v1 text once marked version 1, byte for byte, and its digest: a v1
// manifest is exactly a v2 one without xattrs, under the old header.
func TestGoldenScan(t *testing.T) {
	text, digest := readGolden(t)
	dir := t.TempDir()
	buildGoldenTree(t, dir)
	m, err := manifest.Scan(dir, manifest.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		// Only root can give files other owners; the scan records ours.
		t.Log("not root: owners come from the table, not from the scan")
		want := goldenEntries(t)
		for i := range m.Entries {
			if i < len(want) {
				m.Entries[i].UID, m.Entries[i].GID = want[i].UID, want[i].GID
			}
		}
	}
	if m.Version != 2 {
		t.Errorf("scan made version %d, want 2", m.Version)
	}
	m.Version = 1
	if got := m.Encode(); !bytes.Equal(got, text) {
		t.Fatalf("the scanned tree encodes differently from %s (a format change orphans every tx):\n%s\nwant\n%s", goldenManifest, got, text)
	}
	if got := m.Digest(); got != digest {
		t.Fatalf("digest %s, want %s (%s)", got, digest, goldenDigest)
	}
	if got := manifest.Digest(text); got != digest {
		t.Fatalf("Digest(golden text) = %s, want %s", got, digest)
	}
}

// TestGoldenDecode: the golden text decodes to exactly the entries of the
// golden tree, and re-encodes to itself.
func TestGoldenDecode(t *testing.T) {
	text, digest := readGolden(t)
	m, err := manifest.Decode(text)
	if err != nil {
		t.Fatalf("golden manifest no longer decodes: %v", err)
	}
	if want := goldenEntries(t); !reflect.DeepEqual(m.Entries, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", m.Entries, want)
	}
	if !bytes.Equal(m.Encode(), text) || m.Digest() != digest {
		t.Fatalf("golden manifest does not re-encode to itself:\n%s", m.Encode())
	}
	if m.Version != 1 {
		t.Errorf("version %d, want 1", m.Version)
	}
	// The v1 digest is pinned here too: txs committed before v2 keep it.
	const v1 = "sha256:3f11af06ca9e191e50847ee0f8dbd96a8cda0b5361d57e90487ff2370270bdc9"
	if digest != v1 || m.Digest() != v1 {
		t.Fatalf("v1 golden digest %s (re-encoded %s), want %s", digest, m.Digest(), v1)
	}
	if ks := m.Kernels(); !reflect.DeepEqual(ks, []string{"6.1.0-test"}) {
		t.Errorf("kernels %q", ks)
	}
}
