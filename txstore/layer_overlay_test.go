package txstore_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/testkit"
	"golang.org/x/sys/unix"
)

// overlay is an overlayfs over tx id's tree mounted as bootctl run mounts
// it, its upper and work in the store's staging/.
type overlay struct {
	upper, merged string
	mounted       bool
}

func mountOverlay(t *testing.T, s *txstore.Store, id uint64) *overlay {
	t.Helper()
	testkit.SkipUnless(t, cas.IsRoot(), "mounting an overlay needs root")
	run, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "run-")
	if err != nil {
		t.Fatal(err)
	}
	lower := s.TreeDir(id)
	o := &overlay{upper: filepath.Join(run, "upper"), merged: t.TempDir()}
	work := filepath.Join(run, "work")
	// The upper's root is the merged root: made like the lower's.
	var st unix.Stat_t
	for _, err := range []error{unix.Stat(lower, &st), os.Mkdir(o.upper, 0o700), os.Mkdir(work, 0o700)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Chmod(o.upper, st.Mode&0o7777); err != nil {
		t.Fatal(err)
	}
	opts := "lowerdir=" + lower + ",upperdir=" + o.upper + ",workdir=" + work + ",redirect_dir=off,index=off,metacopy=off"
	if err := unix.Mount("overlay", o.merged, "overlay", 0, opts); err != nil {
		testkit.Skipf(t, "cannot mount an overlay here: %v", err)
	}
	o.mounted = true
	t.Cleanup(func() { o.unmount(t) })
	return o
}

func (o *overlay) unmount(t *testing.T) {
	t.Helper()
	if o.mounted {
		if err := unix.Unmount(o.merged, 0); err != nil {
			t.Fatal(err)
		}
		o.mounted = false
	}
}

// TestCommitLayerOverlay makes changes through a real overlay over tx 1
// (create, modify, delete a file and a directory, replace a directory by
// a file, remove a directory and make it again, chmod, an xattr, a file
// only opened for writing) and commits its upper: the tx has the digest
// of a plain commit of a copy of the merged tree, and no object was
// written through.
func TestCommitLayerOverlay(t *testing.T) {
	s := layerStore(t)
	o := mountOverlay(t, s, 1)
	objs, base := objSnap(t, s), treeSnap(t, s.TreeDir(1))
	m := layerFS{t, o.merged}
	m.file("bin/new-tool", "new", 0o755)
	f, err := os.OpenFile(m.path("lib/os-release"), os.O_WRONLY|os.O_APPEND, 0)
	m.must(err)
	_, err = f.WriteString("VERSION=2\n")
	m.must(err)
	m.must(f.Close())
	m.remove("lib/dup-a")
	m.remove("share/ro-dir")
	m.remove("lib/modules/6.1.0-test/kernel")
	m.file("lib/modules/6.1.0-test/kernel", "a file now", 0o644)
	m.remove("share/doc")
	m.file("share/doc/new-readme", "remade", 0o644)
	m.must(os.Chmod(m.path("bin/busybox"), 0o700))
	m.xattr("lib/dup-b", "user.x", "1")
	m.link("bin/ls", "/bin/busybox")
	lock, err := os.OpenFile(m.path("lib/empty2"), os.O_RDWR, 0) // copied up, unchanged
	m.must(err)
	m.must(lock.Close())

	cp := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", o.merged, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
	o.unmount(t)
	asRecorded(t, s, 1, cp)
	tx, _, err := s.CommitLayer(1, o.upper, txstore.CommitOptions{Summary: "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	ref, _, err := s.Commit(cp, txstore.CommitOptions{NoDefault: true})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != ref.Digest {
		t.Fatalf("layer %s, a commit of the merged copy %s", tx.Digest, ref.Digest)
	}
	sameTree(t, "the new tree", snapshot(t, s.TreeDir(tx.ID)), snapshot(t, cp))
	if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) > 0 {
		t.Errorf("verify: %v %v", probs, err)
	}
	sameObjects(t, objs, objSnap(t, s))
	sameTree(t, "tx 1's tree", treeSnap(t, s.TreeDir(1)), base)
	for p, v := range treeSnap(t, s.TreeDir(tx.ID)) {
		if strings.Contains(v, "trusted.overlay.") {
			t.Errorf("%s keeps overlayfs' xattrs: %s", p, v)
		}
	}
	if v := treeSnap(t, s.TreeDir(tx.ID))["lib/dup-b"]; !strings.HasSuffix(v, " user.x=1") {
		t.Errorf("lib/dup-b: %s, want user.x", v)
	}
}

// asRecorded gives each file of dir that shows tx id's object mode the
// mode tx id records (a tree's files are its objects, write bits
// stripped): dir, a copy of the merged tree, then is what the tx records.
func asRecorded(t *testing.T, s *txstore.Store, id uint64, dir string) {
	t.Helper()
	base, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Entries {
		var st unix.Stat_t
		if e.Type != manifest.File || unix.Lstat(filepath.Join(dir, e.Path), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		if st.Mode&0o7777 == e.Key().Mode {
			if err := unix.Chmod(filepath.Join(dir, e.Path), e.Mode); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestCommitLayerOverlayUnchanged: a run that only opens files for
// writing (copy-up, as apt's lock files) records nothing.
func TestCommitLayerOverlayUnchanged(t *testing.T) {
	s := layerStore(t)
	o := mountOverlay(t, s, 1)
	for _, p := range []string{"lib/empty1", "lib/os-release", "share/doc/odd name %1"} {
		f, err := os.OpenFile(filepath.Join(o.merged, p), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	o.unmount(t)
	if ents, _ := os.ReadDir(filepath.Join(o.upper, "lib")); len(ents) != 2 {
		t.Fatalf("upper lib/ holds %d entries, want the 2 copied up", len(ents))
	}
	if _, _, err := s.CommitLayer(1, o.upper, txstore.CommitOptions{}); !errors.Is(err, txstore.ErrUnchanged) {
		t.Fatalf("CommitLayer = %v, want ErrUnchanged", err)
	}
}
