package run

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// overlayOpts keeps the upper directory in the form CommitLayer reads:
// whole copied-up files (no metacopy), no redirects, no index.
const overlayOpts = "redirect_dir=off,index=off,metacopy=off"

// Scripts the child puts in its private /run and binds over the
// system's: maintainer scripts must not start services (invoke-rc.d and
// deb-systemd-invoke ask policy-rc.d; 101 = "action not allowed"), and
// Debian's initramfs-tools must not build an initrd (txboot builds the
// tx's own after the commit).
const (
	policyRcD    = "#!/bin/sh\n# bootctl run: services are not started or restarted in a working copy\nexit 101\n"
	noInitramfs  = "#!/bin/sh\necho 'update-initramfs: skipped in bootctl run (txboot builds the initrd of the new tx)' >&2\nexit 0\n"
	runScriptDir = "run/txboot-run"
)

// mountView builds the command's root at sp.Mnt: the system root under a
// scratch overlay with the live directories bound in (rootView), the
// working copies on usr and etc, the store hidden, and private proc, sys,
// dev, run, tmp and boot. Everything happens in the
// child's own mount namespace, made private first, so nothing propagates
// back to the host and everything disappears with the child.
func mountView(sp *Spec) (policyPlaceholder bool, err error) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return false, fmt.Errorf("make mounts private: %w", err)
	}
	m := sp.Mnt
	steps := []struct {
		what string
		fn   func() error
	}{
		{"root " + sp.Root, func() error { return rootView(sp) }},
		{"overlay on usr", func() error { return overlay(sp.UsrLower, sp.UsrUpper, sp.UsrWork, filepath.Join(m, "usr")) }},
		{"overlay on etc", func() error { return overlay(sp.EtcLower, sp.EtcUpper, sp.EtcWork, filepath.Join(m, "etc")) }},
		{"hide the store", func() error { return hideStore(sp) }},
		{"proc", func() error {
			return unix.Mount("proc", filepath.Join(m, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}},
		{"sys", func() error {
			return unix.Mount("sysfs", filepath.Join(m, "sys"), "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}},
		{"dev", func() error { return privateDev(filepath.Join(m, "dev")) }},
		{"run", func() error { return tmpfs(filepath.Join(m, "run"), "mode=0755") }},
		{"tmp", func() error { return tmpfs(filepath.Join(m, "tmp"), "mode=1777") }},
		{"boot", func() error { return tmpfsIfDir(filepath.Join(m, "boot"), "mode=0755") }},
		{"efi", func() error { return tmpfsIfDir(filepath.Join(m, "efi"), "mode=0755") }},
		{"scripts", func() error { return binds(m, &policyPlaceholder) }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			return policyPlaceholder, fmt.Errorf("%s: %w", st.what, err)
		}
	}
	return policyPlaceholder, nil
}

// LiveDirs are the system root's directories a run changes for real, as
// the administrator's own commands would: state shared by every tx.
var LiveDirs = []string{"var", "root", "home", "srv", "opt", "mnt", "media"}

// rootView mounts the system root on sp.Mnt as an overlay whose upper is
// a tmpfs, so what the command writes at the top (a kernel package's
// /vmlinuz and /initrd.img links, say) is thrown away with the namespace;
// LiveDirs are bound in (recursively: a separate /var comes along).
func rootView(sp *Spec) error {
	scratch := sp.Mnt + ".scratch"
	if err := tmpfs(scratch, "mode=0700"); err != nil {
		return err
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(scratch, d), 0o755); err != nil {
			return err
		}
	}
	if err := sameOwnerMode(filepath.Join(scratch, "upper"), sp.Root); err != nil {
		return err
	}
	if err := overlay(sp.Root, filepath.Join(scratch, "upper"), filepath.Join(scratch, "work"), sp.Mnt); err != nil {
		return err
	}
	for _, d := range LiveDirs {
		src := filepath.Join(sp.Root, d)
		if fi, err := os.Lstat(src); err != nil || !fi.IsDir() {
			continue
		}
		if err := unix.Mount(src, filepath.Join(sp.Mnt, d), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", src, err)
		}
	}
	return nil
}

func overlay(lower, upper, work, target string) error {
	data := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work + "," + overlayOpts
	if err := unix.Mount("overlay", target, "overlay", 0, data); err != nil {
		return fmt.Errorf("mount overlay on %s (%s): %w", target, data, err)
	}
	return nil
}

func tmpfs(target, opts string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	return unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts)
}

func tmpfsIfDir(target, opts string) error {
	if fi, err := os.Lstat(target); err != nil || !fi.IsDir() {
		return nil
	}
	return tmpfs(target, opts)
}

// hideStore mounts an empty read-only tmpfs over the store in the view:
// the command has no business with it, and bootctl inside a run would
// otherwise see a store whose writer lock its parent holds.
func hideStore(sp *Spec) error {
	rel, err := filepath.Rel(sp.Root, sp.StoreDir)
	if err != nil {
		return err
	}
	t := filepath.Join(sp.Mnt, rel)
	if err := unix.Mount("tmpfs", t, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=4k"); err != nil {
		return err
	}
	return unix.Mount("", t, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=4k")
}

// privateDev is a tmpfs with the usual character devices, a private
// devpts instance and the standard links, like a container's /dev.
func privateDev(dev string) error {
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID, "mode=0755"); err != nil {
		return err
	}
	nodes := []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}}
	for _, n := range nodes {
		p := filepath.Join(dev, n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", p, err)
		}
		if err := unix.Chmod(p, 0o666); err != nil { // past the umask
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("devpts: %w", err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return err
	}
	links := [][2]string{{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}}
	for _, l := range links {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return err
		}
	}
	return nil
}

// binds puts policy-rc.d and a no-op update-initramfs in place. A missing
// policy-rc.d gets an empty placeholder to bind over (in the upper
// directory; the child removes it before the commit).
func binds(m string, placeholder *bool) error {
	dir := filepath.Join(m, runScriptDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	scripts := []struct{ name, body, target string }{
		{"policy-rc.d", policyRcD, "usr/sbin/policy-rc.d"},
		{"update-initramfs", noInitramfs, "usr/sbin/update-initramfs"},
	}
	for _, s := range scripts {
		src := filepath.Join(dir, s.name)
		if err := os.WriteFile(src, []byte(s.body), 0o755); err != nil {
			return err
		}
		t := filepath.Join(m, s.target)
		fi, err := os.Lstat(t)
		switch {
		case errors.Is(err, os.ErrNotExist) && s.name == "policy-rc.d":
			if _, err := os.Stat(filepath.Dir(t)); err != nil {
				continue // no /usr/sbin: no invoke-rc.d to ask it either
			}
			if err := os.WriteFile(t, nil, 0o755); err != nil {
				return err
			}
			*placeholder = true
		case errors.Is(err, os.ErrNotExist):
			continue // no initramfs-tools: nothing to keep quiet
		case err != nil:
			return err
		case !fi.Mode().IsRegular():
			continue // a symlink or something odd: leave it alone
		}
		if err := unix.Mount(src, t, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", src, t, err)
		}
	}
	return nil
}

// unbindScripts undoes binds before the aftermath looks at /usr.
func unbindScripts(m string, placeholder bool) error {
	for _, t := range []string{"usr/sbin/policy-rc.d", "usr/sbin/update-initramfs"} {
		p := filepath.Join(m, t)
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	if placeholder {
		p := filepath.Join(m, "usr/sbin/policy-rc.d")
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
