package boot

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/txboot/txboot/txstore/sealimg"
	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// BindAssembler puts /usr in place on Root/usr: a tree bind-mounted
// read-only, or a sealed image under overlayfs.
type BindAssembler struct {
	Root string // /sysroot
	// ImageDir is where a sealed image is mounted for overlayfs to take as
	// its lower layer ("": DefaultImageDir).
	ImageDir string
	mounted  bool
}

// DefaultImageDir is in the initramfs, outside /run: /run moves into the
// new root, and this mount is detached as soon as overlayfs holds it.
const DefaultImageDir = "/txboot-image"

// Mount bind-mounts tree on Root/usr and makes the bind read-only (a bind
// mount ignores MS_RDONLY until remounted).
func (b *BindAssembler) Mount(tree string) error {
	if b.mounted {
		if err := b.Unmount(); err != nil {
			return err
		}
	}
	usr := filepath.Join(b.Root, "usr")
	if err := os.MkdirAll(usr, 0o755); err != nil {
		return fmt.Errorf("mount point %s: %w", usr, err)
	}
	if err := unix.Mount(tree, usr, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", tree, usr, err)
	}
	if err := unix.Mount("", usr, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		unix.Unmount(usr, unix.MNT_DETACH)
		return fmt.Errorf("make %s read-only: %w", usr, err)
	}
	b.mounted = true
	return nil
}

// MeasureImage asks the kernel for image's fs-verity digest.
func (b *BindAssembler) MeasureImage(image string) (verity.Sum, error) {
	return verity.MeasurePath(image)
}

// MountSealed mounts the erofs image (file-backed: no loop device) on
// ImageDir and overlayfs over it on Root/usr, then detaches the image's
// mount point: overlayfs holds its layers itself.
func (b *BindAssembler) MountSealed(image, objects string) error {
	if err := b.Unmount(); err != nil {
		return err
	}
	usr := filepath.Join(b.Root, "usr")
	if err := os.MkdirAll(usr, 0o755); err != nil {
		return fmt.Errorf("mount point %s: %w", usr, err)
	}
	if _, err := os.Stat(objects); err != nil { // the overlay's error would not name it
		return fmt.Errorf("the store's objects directory: %w", err)
	}
	mnt := cmp.Or(b.ImageDir, DefaultImageDir)
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return fmt.Errorf("mount point %s: %w", mnt, err)
	}
	if err := unix.Mount(image, mnt, "erofs", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount erofs %s on %s: %w", image, mnt, err)
	}
	// Nothing else needs the image's own mount, success or not; a detach
	// that fails leaves it in the initramfs, which switch_root drops.
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	opts := sealimg.OverlayOptions(mnt, objects)
	if err := unix.Mount("overlay", usr, "overlay", unix.MS_RDONLY, opts); err != nil {
		return fmt.Errorf("mount overlay on %s (%s): %w", usr, opts, err)
	}
	b.mounted = true
	return nil
}

// Unmount undoes Mount or MountSealed.
func (b *BindAssembler) Unmount() error {
	if !b.mounted {
		return nil
	}
	usr := filepath.Join(b.Root, "usr")
	if err := unix.Unmount(usr, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: %w", usr, err)
	}
	b.mounted = false
	return nil
}

// FindInit returns the first candidate that resolves, inside Root, to an
// executable regular file.
func (b *BindAssembler) FindInit(candidates []string) (string, error) {
	return FindInitIn(b.Root, candidates)
}

// FindInitIn resolves candidates inside root as a chroot would.
func FindInitIn(root string, candidates []string) (string, error) {
	var errs errList
	for _, c := range candidates {
		p, err := ResolveIn(root, c)
		if err == nil {
			var st unix.Stat_t
			if err = unix.Stat(p, &st); err == nil {
				if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
					err = errors.New("not an executable file")
				}
			}
		}
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", c, err))
	}
	if len(errs) == 0 {
		return "", errors.New("no init candidates")
	}
	return "", errs
}

// ResolveIn resolves path inside root, following symlinks as if root were
// "/": absolute targets restart at root and ".." never climbs above it.
func ResolveIn(root, path string) (string, error) {
	const maxLinks = 40
	todo := strings.Split(strings.Trim(path, "/"), "/")
	var done []string
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cur := filepath.Join(append([]string{root}, append(done, c)...)...)
		fi, err := os.Lstat(cur)
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			done = append(done, c)
			continue
		}
		if links++; links > maxLinks {
			return "", errors.New("too many levels of symbolic links")
		}
		t, err := os.Readlink(cur)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(t, "/") {
			done = nil
		}
		todo = append(strings.Split(t, "/"), todo...)
	}
	return filepath.Join(append([]string{root}, done...)...), nil
}
