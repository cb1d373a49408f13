package sealimg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/internal/xattr"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/testkit"
	"golang.org/x/sys/unix"
)

// mountImage mounts img (file-backed erofs, no loop device) read-only at
// mnt and unmounts it in t.Cleanup; a kernel without erofs or without
// file-backed mounts skips.
func mountImage(t *testing.T, img, mnt string) {
	t.Helper()
	err := unix.Mount(img, mnt, "erofs", unix.MS_RDONLY, "")
	switch {
	case errors.Is(err, unix.ENODEV):
		testkit.Skip(t, "kernel has no erofs (mount: ENODEV)")
	case errors.Is(err, unix.ENOTBLK):
		testkit.Skip(t, "kernel's erofs cannot mount a file (CONFIG_EROFS_FS_BACKED_BY_FILE unset)")
	case err != nil:
		t.Fatalf("mount erofs %s on %s: %v", img, mnt, err)
	}
	t.Cleanup(func() { unmount(t, mnt) })
}

func unmount(t *testing.T, mnt string) {
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Errorf("umount %s: %v", mnt, err)
	}
}

// mountOverlay mounts the sealed view at usr with opts.
func mountOverlay(t *testing.T, usr, opts string) {
	t.Helper()
	err := unix.Mount("overlay", usr, "overlay", unix.MS_RDONLY, opts)
	if errors.Is(err, unix.ENODEV) {
		testkit.Skip(t, "kernel has no overlayfs (mount: ENODEV)")
	}
	if err != nil {
		t.Fatalf("mount overlay %s -o %s: %v", usr, opts, err)
	}
	t.Cleanup(func() { unmount(t, usr) })
}

// TestMountOverlay mounts an image over a real objects directory the way
// a sealed boot does (verity=off: this kernel may have no fs-verity) and
// checks that the overlay shows exactly the scanned tree: modes, owners,
// sizes, xattrs, symlink targets and, read through the overlay, content.
func TestMountOverlay(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "mounting erofs and overlayfs needs root")
	}
	src, dir := t.TempDir(), t.TempDir()
	makeTree(t, src, treeSpec{root: true})
	m := scan(t, src)
	// Paths with the characters overlayfs's option parser splits on.
	objdir := filepath.Join(dir, "objects:a,b")
	mnt := filepath.Join(dir, `mnt\x:y`)
	usr := filepath.Join(dir, "usr")
	for _, d := range []string{objdir, mnt, usr} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := writeImage(t, build(t, m, storeObjects(t, src, objdir)))
	mountImage(t, img, mnt)
	opts := OverlayOptionsVerity(mnt, objdir, "off")
	mountOverlay(t, usr, opts)
	t.Logf("overlay options: %s", opts)
	got := scan(t, usr)
	compareManifests(t, m, got)
}

// TestMountErofs mounts the image alone (no objects: every file reads as
// zeros) with the entries only a manifest can hold (5 GiB, ids above
// 65535, a 20000-byte xattr, a 4095-byte symlink beside xattrs, 300
// subdirectories) and checks each entry's stat, target and xattrs.
func TestMountErofs(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "mounting erofs needs root")
	}
	src, mnt := t.TempDir(), t.TempDir()
	makeTree(t, src, treeSpec{root: true})
	m := extras(t, scan(t, src))
	mountImage(t, writeImage(t, build(t, m, fakeObjects)), mnt)
	for i := range m.Entries {
		checkEntry(t, mnt, &m.Entries[i])
	}
}

// checkEntry compares e with what the kernel shows at mnt/e.Path, leaving
// out the overlay's own xattrs.
func checkEntry(t *testing.T, mnt string, e *manifest.Entry) {
	p := filepath.Join(mnt, e.Path)
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	g := manifest.Entry{Path: e.Path, Type: e.Type, Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, Hash: e.Hash}
	switch e.Type {
	case manifest.File:
		g.Size = st.Size
	case manifest.Symlink:
		g.Mode = 0
		target, err := os.Readlink(p)
		if err != nil {
			t.Fatal(err)
		}
		g.Target = target
	}
	x, err := xattr.LRead(p)
	if err != nil {
		t.Fatal(err)
	}
	g.Xattrs = dropOverlay(t, x)
	if g != *e {
		t.Errorf("%s:\n want %.300v\n  got %.300v", e.Path, fmt.Sprint(*e), fmt.Sprint(g))
	}
}

func dropOverlay(t *testing.T, enc string) string {
	xs, err := manifest.ParseXattrs(enc)
	if err != nil {
		t.Fatal(err)
	}
	xs = slices.DeleteFunc(xs, func(x manifest.Xattr) bool { return strings.HasPrefix(x.Name, overlayPrefix) })
	s, err := manifest.EncodeXattrs(xs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func compareManifests(t *testing.T, want, got *manifest.Manifest) {
	t.Helper()
	if len(want.Entries) != len(got.Entries) {
		t.Errorf("mounted tree has %d entries, manifest %d", len(got.Entries), len(want.Entries))
	}
	for i := range min(len(want.Entries), len(got.Entries)) {
		if w, g := want.Entries[i], got.Entries[i]; w != g {
			t.Errorf("entry %d:\n want %+v\n  got %+v", i, w, g)
		}
	}
}
