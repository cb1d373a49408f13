package txstore_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// layerFS makes changes under dir: an upper directory built by hand, or
// the same change made to a plain copy of the tree (the merged result).
type layerFS struct {
	t    *testing.T
	root string
}

func (f layerFS) path(p string) string { return filepath.Join(f.root, p) }

func (f layerFS) must(err error) {
	f.t.Helper()
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f layerFS) parent(p string) { f.must(os.MkdirAll(filepath.Dir(f.path(p)), 0o755)) }

// file makes p a regular file (replacing what was there) with mode.
func (f layerFS) file(p, data string, mode uint32) {
	f.t.Helper()
	f.parent(p)
	f.must(os.RemoveAll(f.path(p)))
	f.must(os.WriteFile(f.path(p), []byte(data), 0o600))
	f.must(unix.Chmod(f.path(p), mode))
}

// dir makes p a directory (keeping one that is there) with mode.
func (f layerFS) dir(p string, mode uint32) {
	f.t.Helper()
	f.parent(p)
	if fi, err := os.Lstat(f.path(p)); err == nil && !fi.IsDir() {
		f.must(os.Remove(f.path(p)))
	}
	f.must(os.MkdirAll(f.path(p), 0o755))
	f.must(unix.Chmod(f.path(p), mode))
}

func (f layerFS) link(p, target string) {
	f.t.Helper()
	f.parent(p)
	f.must(os.RemoveAll(f.path(p)))
	f.must(os.Symlink(target, f.path(p)))
}

func (f layerFS) remove(p string) { f.t.Helper(); f.must(os.RemoveAll(f.path(p))) }

// whiteout is overlayfs' "deleted": a character device 0:0.
func (f layerFS) whiteout(p string) {
	f.t.Helper()
	f.parent(p)
	f.must(unix.Mknod(f.path(p), unix.S_IFCHR, 0))
}

// opaque is a new directory hiding the lower's children.
func (f layerFS) opaque(p string) {
	f.t.Helper()
	f.dir(p, 0o755)
	f.xattr(p, "trusted.overlay.opaque", "y")
}

func (f layerFS) xattr(p, name, value string) {
	f.t.Helper()
	f.must(unix.Lsetxattr(f.path(p), name, []byte(value), 0))
}

// baseTree is the sample tree with a world-readable root, as /usr has.
func baseTree(t *testing.T) string {
	d := sampleDir(t)
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// newUpper is an empty upper directory standing for a root like base's.
func newUpper(t *testing.T) layerFS {
	d := t.TempDir()
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return layerFS{t, d}
}

// layerStore is a store whose tx 1 is baseTree.
func layerStore(t *testing.T) *txstore.Store {
	t.Helper()
	s, _ := newStore(t)
	if _, _, err := s.Commit(baseTree(t), txstore.CommitOptions{Summary: "base"}); err != nil {
		t.Fatal(err)
	}
	return s
}

// tsnap describes a tree fully, nothing followed: each path's type, mode,
// owner, link count, content or target, and xattrs (a device by its
// numbers).
func tsnap(t *testing.T, dir string) map[string]string { return describeTree(t, dir, true) }

// treeSnap is tsnap without link counts (a tree's files are objects,
// which every tree sharing them links).
func treeSnap(t *testing.T, dir string) map[string]string { return describeTree(t, dir, false) }

func describeTree(t *testing.T, dir string, links bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		v := fmt.Sprintf("%o %d:%d", st.Mode, st.Uid, st.Gid)
		if links {
			v += fmt.Sprintf(" n%d", st.Nlink)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += " " + string(b)
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			v += " -> " + target
		case unix.S_IFCHR:
			v += fmt.Sprintf(" dev %d", st.Rdev)
		}
		out[rel] = v + " " + listXattrs(t, p)
		return nil
	})
	if err != nil {
		t.Fatalf("tsnap %s: %v", dir, err)
	}
	return out
}

// listXattrs lists p's xattrs as name=value, sorted (a symlink's own).
func listXattrs(t *testing.T, p string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("llistxattr %s: %v", p, err)
	}
	var out []string
	for _, name := range strings.Split(strings.TrimSuffix(string(buf[:n]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 1024)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("lgetxattr %s %s: %v", p, name, err)
		}
		out = append(out, name+"="+string(v[:m]))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// objSnap is every object: its inode, mode and content's hash.
func objSnap(t *testing.T, s *txstore.Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(s.Objects().Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[p] = fmt.Sprintf("%d %o %s", st.Ino, st.Mode, hex.EncodeToString(sum[:]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameObjects: every object of before is still there, the same inode,
// mode and content (a layer never writes through one).
func sameObjects(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if after[p] != v {
			t.Errorf("object %s: %q, was %q", p, after[p], v)
		}
	}
}

func digestOf(t *testing.T, dir string) string {
	t.Helper()
	m, err := manifest.Scan(dir, manifest.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m.Digest()
}

// stagingEmpty fails unless the store's staging/ is empty.
func stagingEmpty(t *testing.T, s *txstore.Store) {
	t.Helper()
	if ents, _ := os.ReadDir(filepath.Join(s.Dir, "staging")); len(ents) != 0 {
		t.Errorf("staging holds %d entries (%s…)", len(ents), ents[0].Name())
	}
}

// layerCases: an upper directory made by hand, and the same change made
// to a plain copy of the tree; the layer must have that copy's digest.
var layerCases = []struct {
	name    string
	upper   func(u layerFS)
	merged  func(m layerFS)
	kernels []string
}{
	{"new file", func(u layerFS) { u.file("lib/new", "new", 0o644) }, func(m layerFS) { m.file("lib/new", "new", 0o644) }, nil},
	{"modified file", func(u layerFS) { u.file("lib/os-release", "ID=other\n", 0o644) },
		func(m layerFS) { m.file("lib/os-release", "ID=other\n", 0o644) }, nil},
	{"deleted file", func(u layerFS) { u.whiteout("lib/dup-a") }, func(m layerFS) { m.remove("lib/dup-a") }, nil},
	{"deleted dir", func(u layerFS) { u.whiteout("lib/modules") }, func(m layerFS) { m.remove("lib/modules") }, []string{}},
	{"whiteout of a missing path", func(u layerFS) { u.whiteout("nothing/here") }, func(m layerFS) { m.dir("nothing", 0o755) }, nil},
	{"dir replaced by a file", func(u layerFS) { u.file("share/doc", "a file now", 0o644) },
		func(m layerFS) { m.remove("share/doc"); m.file("share/doc", "a file now", 0o644) }, nil},
	{"file replaced by a dir", func(u layerFS) {
		u.opaque("bin/sh")
		u.file("bin/sh/inner", "in", 0o644)
		u.dir("lib/empty1", 0o750) // not opaque: over a file it hides nothing more
		u.file("lib/empty1/x", "x", 0o644)
	}, func(m layerFS) {
		m.remove("bin/sh")
		m.file("bin/sh/inner", "in", 0o644)
		m.remove("lib/empty1")
		m.dir("lib/empty1", 0o750)
		m.file("lib/empty1/x", "x", 0o644)
	}, nil},
	{"dir removed and made again (opaque)", func(u layerFS) {
		u.opaque("lib/modules")
		u.file("lib/modules/7.0/vmlinuz", "k7", 0o644)
	}, func(m layerFS) {
		m.remove("lib/modules")
		m.file("lib/modules/7.0/vmlinuz", "k7", 0o644)
	}, []string{"7.0"}},
	{"dir merged (not opaque)", func(u layerFS) { u.file("lib/modules/7.0/vmlinuz", "k7", 0o644) },
		func(m layerFS) { m.file("lib/modules/7.0/vmlinuz", "k7", 0o644) }, []string{"6.1.0-test", "7.0"}},
	{"chmod", func(u layerFS) {
		u.file("bin/busybox", "busybox-binary", 0o700)
		u.file("bin/su", "setuid binary", 0o4711)
		u.dir("share/ro-dir", 0o700)
	}, func(m layerFS) {
		m.file("bin/busybox", "busybox-binary", 0o700)
		m.file("bin/su", "setuid binary", 0o4711)
		m.dir("share/ro-dir", 0o700)
	}, nil},
	{"symlinks recorded, never followed", func(u layerFS) {
		u.link("share/escape", "../../../../../etc/shadow")
		u.link("lib/modules", "/") // over a directory: hides it
		u.link("bin/ls", "/bin/sh")
	}, func(m layerFS) {
		m.link("share/escape", "../../../../../etc/shadow")
		m.link("lib/modules", "/")
		m.link("bin/ls", "/bin/sh")
	}, []string{}},
	{"xattrs kept, overlayfs' dropped", func(u layerFS) {
		u.file("lib/x", "x", 0o644)
		u.xattr("lib/x", "user.x", "1")
		u.xattr("lib/x", "trusted.keep", "k")
		u.xattr("lib/x", "trusted.overlay.origin", "junk")
		u.xattr("lib", "trusted.overlay.impure", "y")
		u.xattr("lib", "trusted.overlay.origin", "junk")
		u.xattr(".", "trusted.overlay.uuid", "0123456789abcdef")
		u.link("lib/l", "x")
		u.xattr("lib/l", "trusted.overlay.origin", "junk")
	}, func(m layerFS) {
		m.file("lib/x", "x", 0o644)
		m.xattr("lib/x", "user.x", "1")
		m.xattr("lib/x", "trusted.keep", "k")
		m.link("lib/l", "x")
	}, nil},
	{"copied up with the object's mode: the recorded mode", func(u layerFS) {
		u.file("lib/os-release", "ID=txboot\nVERSION=2\n", 0o444) // appended to
		u.file("bin/su", "setuid binary", 0o4555)
	}, func(m layerFS) {
		m.file("lib/os-release", "ID=txboot\nVERSION=2\n", 0o644)
	}, nil},
	{"the object's mode under an opaque dir is the file's", func(u layerFS) {
		u.opaque("lib/modules")
		u.file("lib/modules/6.1.0-test/vmlinuz", "kernel image", 0o444)
	}, func(m layerFS) {
		m.remove("lib/modules")
		m.file("lib/modules/6.1.0-test/vmlinuz", "kernel image", 0o444)
	}, []string{"6.1.0-test"}},
	{"siblings that sort inside a deleted dir", func(u layerFS) {
		u.whiteout("lib")
		u.file("lib-a", "a", 0o644)
		u.file("lib.b", "b", 0o644)
		u.file("lia", "c", 0o644)
	}, func(m layerFS) {
		m.remove("lib")
		m.file("lib-a", "a", 0o644)
		m.file("lib.b", "b", 0o644)
		m.file("lia", "c", 0o644)
	}, []string{}},
}

// TestCommitLayer: each upper directory gives the tree its merged copy
// would; the base tree, the upper and every object stay as they were.
func TestCommitLayer(t *testing.T) {
	for _, c := range layerCases {
		t.Run(c.name, func(t *testing.T) {
			s := layerStore(t)
			u, m := newUpper(t), layerFS{t, baseTree(t)}
			c.upper(u)
			c.merged(m)
			baseBefore, upBefore, objs := treeSnap(t, s.TreeDir(1)), tsnap(t, u.root), objSnap(t, s)
			tx, st, err := s.CommitLayer(1, u.root, txstore.CommitOptions{Summary: c.name})
			if err != nil {
				t.Fatal(err)
			}
			if want := digestOf(t, m.root); tx.Digest != want {
				t.Fatalf("digest %s, want the merged copy's %s", tx.Digest, want)
			}
			if tx.ID != 2 || tx.Parent != 1 || tx.Summary != c.name {
				t.Errorf("record %+v", tx)
			}
			if c.kernels != nil && !reflect.DeepEqual(append([]string{}, tx.Kernels...), c.kernels) {
				t.Errorf("kernels %q, want %q", tx.Kernels, c.kernels)
			}
			sameTree(t, "the new tree", snapshot(t, s.TreeDir(2)), snapshot(t, m.root))
			if probs, err := s.Verify(2, txstore.VerifyFull); err != nil || len(probs) > 0 {
				t.Errorf("verify: %v %v", probs, err)
			}
			sameTree(t, "the base tree", treeSnap(t, s.TreeDir(1)), baseBefore)
			sameTree(t, "the upper", tsnap(t, u.root), upBefore)
			sameObjects(t, objs, objSnap(t, s))
			stagingEmpty(t, s)
			if st.Entries != tx.Entries || st.Files > len(upBefore) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestCommitLayerRefuses: what an overlay mounted as txboot mounts it
// never makes is refused, and nothing is recorded or left behind.
func TestCommitLayerRefuses(t *testing.T) {
	for _, c := range []struct {
		name  string
		upper func(u layerFS)
		want  error
	}{
		{"metacopy", func(u layerFS) {
			u.file("lib/os-release", "", 0o644)
			u.xattr("lib/os-release", "trusted.overlay.metacopy", "")
		}, txstore.ErrBadUpper},
		{"redirect", func(u layerFS) {
			u.dir("lib2", 0o755)
			u.xattr("lib2", "trusted.overlay.redirect", "/lib")
		}, txstore.ErrBadUpper},
		{"xattr whiteout", func(u layerFS) {
			u.file("lib/dup-a", "", 0o644)
			u.xattr("lib/dup-a", "trusted.overlay.whiteout", "")
		}, txstore.ErrBadUpper},
		{"opaque x", func(u layerFS) {
			u.dir("lib", 0o755)
			u.xattr("lib", "trusted.overlay.opaque", "x")
		}, txstore.ErrBadUpper},
		{"opaque file", func(u layerFS) {
			u.file("f", "", 0o644)
			u.xattr("f", "trusted.overlay.opaque", "y")
		}, txstore.ErrBadUpper},
		{"opaque root", func(u layerFS) { u.xattr(".", "trusted.overlay.opaque", "y") }, txstore.ErrBadUpper},
		{"fifo", func(u layerFS) { u.must(unix.Mkfifo(u.path("p"), 0o644)) }, txstore.ErrUnsupported},
		{"device 1:3", func(u layerFS) { u.must(unix.Mknod(u.path("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))) }, txstore.ErrUnsupported},
		{"block device", func(u layerFS) { u.must(unix.Mknod(u.path("b"), unix.S_IFBLK, 0)) }, txstore.ErrUnsupported},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := layerStore(t)
			u := newUpper(t)
			u.file("lib/new", "a new object", 0o644) // staged, then dropped
			c.upper(u)
			objs := objSnap(t, s)
			_, _, err := s.CommitLayer(1, u.root, txstore.CommitOptions{})
			if !errors.Is(err, c.want) {
				t.Fatalf("CommitLayer = %v, want %v", err, c.want)
			}
			nothingRecorded(t, s, objs)
		})
	}
}

// nothingRecorded: the store still holds tx 1 only, its objects as in
// objs, and no leftovers.
func nothingRecorded(t *testing.T, s *txstore.Store, objs map[string]string) {
	t.Helper()
	if txs, err := s.List(); err != nil || len(txs) != 1 {
		t.Errorf("%d txs (%v), want 1", len(txs), err)
	}
	if after := objSnap(t, s); !reflect.DeepEqual(after, objs) {
		t.Errorf("objects changed: %d, were %d", len(after), len(objs))
	}
	if trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees")); len(trees) != 1 {
		t.Errorf("%d trees, want 1", len(trees))
	}
	stagingEmpty(t, s)
}

// copyUpUnchanged is an upper holding only what opening files for
// writing copies up (apt's and dpkg's lock files): unchanged files, their
// directories with overlayfs' bookkeeping.
func copyUpUnchanged(u layerFS) {
	u.file("lib/os-release", "ID=txboot\n", 0o444) // the object's mode
	u.xattr("lib/os-release", "trusted.overlay.origin", "o1")
	u.file("bin/busybox", "busybox-binary", 0o755) // the recorded mode
	u.xattr("lib", "trusted.overlay.impure", "y")
	u.xattr(".", "trusted.overlay.uuid", "0123456789abcdef")
	u.link("bin/ls", "busybox")
	u.dir("share/empty-dir", 0o755)
}

// TestCommitLayerUnchanged: a layer that leaves /usr as it was records
// nothing (ErrUnchanged) and leaves nothing behind, on a v2 and on a v1
// base; with an /etc state it is recorded, with the same digest.
func TestCommitLayerUnchanged(t *testing.T) {
	s := layerStore(t)
	v1 := commitV1(t, s, 1)
	for _, from := range []uint64{1, v1.ID} {
		u := newUpper(t)
		copyUpUnchanged(u)
		objs := objSnap(t, s)
		n := len(listTxs(t, s))
		_, _, err := s.CommitLayer(from, u.root, txstore.CommitOptions{})
		if !errors.Is(err, txstore.ErrUnchanged) {
			t.Fatalf("from tx %d: CommitLayer = %v, want ErrUnchanged", from, err)
		}
		if got := len(listTxs(t, s)); got != n {
			t.Errorf("from tx %d: %d txs, want %d", from, got, n)
		}
		if after := objSnap(t, s); !reflect.DeepEqual(after, objs) {
			t.Errorf("from tx %d: objects changed", from)
		}
		stagingEmpty(t, s)
	}
	u := newUpper(t)
	copyUpUnchanged(u)
	etc := stageEtcT(t, s, "host-a")
	tx, _, err := s.CommitLayer(1, u.root, txstore.CommitOptions{Etc: etc})
	if err != nil {
		t.Fatal(err)
	}
	base, _ := s.Get(1)
	if tx.Digest != base.Digest || tx.Parent != 1 {
		t.Errorf("tx %+v, want tx 1's digest and parent 1", tx)
	}
	wantEtc(t, s, tx.ID, "host-a")
}

// commitV1 records tx id's tree again with a v1 manifest (no xattrs).
func commitV1(t *testing.T, s *txstore.Store, id uint64) *txstore.Tx {
	t.Helper()
	base, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(base)
	if err != nil {
		t.Fatal(err)
	}
	m.Version = 1
	tx, err := s.CommitManifest(m, m.Encode(), txstore.CommitOptions{NoDefault: true})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest == base.Digest {
		t.Fatal("a v1 manifest has the v2 digest")
	}
	return tx
}

func listTxs(t *testing.T, s *txstore.Store) []*txstore.Tx {
	t.Helper()
	txs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	return txs
}

// stageEtc makes an /etc state as package etcstate would, in staging/:
// base/ and new/ with a hostname, and new/evil, a symlink out of the store.
func stageEtc(s *txstore.Store, host, outside string) (string, error) {
	dir, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "etc-")
	if err != nil {
		return "", err
	}
	for _, sub := range []string{"base", "new"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, sub, "hostname"), []byte(host), 0o644); err != nil {
			return "", err
		}
	}
	return dir, os.Symlink(outside, filepath.Join(dir, "new", "evil"))
}

func stageEtcT(t *testing.T, s *txstore.Store, host string) string {
	t.Helper()
	d, err := stageEtc(s, host, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// wantEtc: tx id's tree carries the /etc state of host.
func wantEtc(t *testing.T, s *txstore.Store, id uint64, host string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.EtcStateDir(id), "new", "hostname"))
	if err != nil || string(b) != host {
		t.Errorf("tx %d: etc/new/hostname = %q, %v; want %q", id, b, err, host)
	}
	if s.EtcStateDir(id) != filepath.Join(filepath.Dir(s.TreeDir(id)), "etc") {
		t.Errorf("EtcStateDir(%d) = %s", id, s.EtcStateDir(id))
	}
}
