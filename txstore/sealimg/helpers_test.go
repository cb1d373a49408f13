package sealimg

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// treeSpec says what makeTree may create beyond plain files: ownership
// and trusted/security xattrs need root.
type treeSpec struct{ root bool }

// makeTree builds a varied tree under dir: a directory with 500 names
// (several dirent blocks), long names, short and 4095-byte symlinks, empty
// files, files of many sizes, setuid modes, a deep path, and, as root,
// uid/gid above 65535 and trusted/security/ACL xattrs.
func makeTree(t testing.TB, dir string, spec treeSpec) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	file := func(rel string, size int, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		b := bytes.Repeat([]byte(rel+"\n"), size/(len(rel)+1)+1)[:size]
		must(os.WriteFile(p, b, 0o600))
		must(os.Chmod(p, mode))
	}
	for i := range 500 {
		file(fmt.Sprintf("big/entry-%03d-%s", i, strings.Repeat("n", i%40)), i%7, 0o644)
	}
	file(strings.Repeat("L", 255), 10, 0o644)
	for i, sz := range []int{0, 1, 100, 2047, 2048, 4095, 4096, 4097, 65536, 1<<20 + 3} {
		file(fmt.Sprintf("sizes/f%d", i), sz, 0o640)
	}
	file("bin/su", 1000, 0o4755|os.ModeSetuid)
	must(os.Chmod(filepath.Join(dir, "bin/su"), 0o755|os.ModeSetuid))
	must(os.Chmod(filepath.Join(dir, "bin"), 0o1777|os.ModeSticky))
	file("a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/deep", 5, 0o600)
	file("a-b", 3, 0o644) // sorts before "a/" by path, after "a" by name
	must(os.Symlink("su", filepath.Join(dir, "bin/short")))
	must(os.Symlink(strings.Repeat("x/", 2047)+"y", filepath.Join(dir, "bin/long")))
	must(os.Symlink(strings.Repeat("z", 3000), filepath.Join(dir, "bin/mid")))
	must(os.Mkdir(filepath.Join(dir, "empty"), 0o700))
	must(unix.Lsetxattr(filepath.Join(dir, "sizes/f2"), "user.note", []byte("hello"), 0))
	if spec.root {
		rootOnly(t, dir, must)
	}
}

// rootOnly adds what needs CAP_CHOWN and CAP_SYS_ADMIN.
func rootOnly(t testing.TB, dir string, must func(error)) {
	p := func(rel string) string { return filepath.Join(dir, rel) }
	must(os.Lchown(p("sizes/f3"), 70000, 80000))
	must(os.Lchown(p("bin/short"), 100000, 5))
	must(os.Lchown(p("empty"), 1, 65536))
	must(unix.Lsetxattr(p("sizes/f4"), "security.capability", vfsCap(), 0))
	must(unix.Lsetxattr(p("sizes/f4"), "trusted.txboot", []byte("t"), 0))
	must(unix.Lsetxattr(p("big"), "trusted.dir", []byte("d"), 0))
	acl := []byte{2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 6, 0, 0xe8, 3, 0, 0,
		4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x10, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff}
	must(unix.Lsetxattr(p("sizes/f5"), "system.posix_acl_access", acl, 0))
}

// vfsCap is a VFS_CAP_REVISION_2 value granting cap_net_raw.
func vfsCap() []byte {
	b := make([]byte, 20)
	b[3] = 2        // revision 2 (0x02000000, little endian)
	b[0] = 1        // effective
	b[4+1] = 1 << 5 // permitted: CAP_NET_RAW (13) is bit 5 of byte 1
	return b
}

func scan(t testing.TB, dir string) *manifest.Manifest {
	t.Helper()
	m, err := manifest.Scan(dir, manifest.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fakeObjects names each object as the store would, without writing it.
func fakeObjects(e *manifest.Entry) (Object, error) {
	return Object{Redirect: "/" + e.Key().RelPath(), Verity: verity.Sum(e.Hash)}, nil
}

// storeObjects copies each file of src into objdir under its store name
// and returns the objects with real fs-verity digests.
func storeObjects(t testing.TB, src, objdir string) func(*manifest.Entry) (Object, error) {
	return func(e *manifest.Entry) (Object, error) {
		rel := e.Key().RelPath()
		dst := filepath.Join(objdir, rel)
		b, err := os.ReadFile(filepath.Join(src, e.Path))
		if err != nil {
			return Object{}, err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return Object{}, err
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return Object{}, err
		}
		sum, err := verity.DigestPath(dst)
		return Object{Redirect: "/" + rel, Verity: sum}, err
	}
}

func build(t testing.TB, m *manifest.Manifest, obj func(*manifest.Entry) (Object, error)) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Build(&b, m, obj); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func writeImage(t testing.TB, img []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), FileName)
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fsck runs fsck.erofs over the image; it must find nothing wrong.
func fsck(t testing.TB, path string, args ...string) {
	t.Helper()
	out, err := exec.Command("fsck.erofs", append(args, path)...).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.erofs %s: %v\n%s", path, err, out)
	}
	if len(bytes.TrimSpace(out)) > 0 {
		t.Logf("fsck.erofs: %s", bytes.TrimSpace(out))
	}
}
