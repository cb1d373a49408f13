package sealimg

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

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
