package harness

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
)

// Kernel is one Debian kernel package unpacked with dpkg -x by
// scripts/fetch-kernels.sh.
type Kernel struct {
	Name    string // versioned package name, e.g. linux-image-6.1.0-56-cloud-amd64
	Version string // kernel release (uname -r), e.g. 6.1.0-56-cloud-amd64
	Vmlinuz string // absolute path of boot/vmlinuz-<Version>
	ModRoot string // the dpkg -x root: it contains lib/modules/<Version>
	Cloud   bool   // the cloud flavour (virtio and ext4 built in, fewer modules)
}

// ModDir is the kernel's module directory, ModRoot/lib/modules/Version.
func (k Kernel) ModDir() string {
	return filepath.Join(k.ModRoot, "lib", "modules", k.Version)
}

// RepoRoot walks up from the working directory (a test's package dir) to
// the directory holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getwd: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s: %w", dir, fs.ErrNotExist)
		}
	}
}

// KernelDir is where the kernels live: $TXBOOT_KERNEL_DIR, else
// <repo>/.cache/kernels-trixie (what `make test` passes to fetch-kernels.sh:
// Debian 13's kernels).
func KernelDir() string {
	if d := os.Getenv("TXBOOT_KERNEL_DIR"); d != "" {
		return d
	}
	root, err := RepoRoot()
	if err != nil {
		// Relative fallback keeps the error message of Kernels meaningful.
		return filepath.Join(".cache", "kernels-trixie")
	}
	return filepath.Join(root, ".cache", "kernels-trixie")
}

// Kernels lists the unpacked kernels under dir (DEST of fetch-kernels.sh),
// sorted by name. It fails if there are none.
func Kernels(dir string) ([]Kernel, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("kernels in %s (run scripts/fetch-kernels.sh %s): %w", dir, dir, err)
	}
	var ks []Kernel
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "linux-image-") {
			continue
		}
		root, err := filepath.Abs(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("abs %s: %w", e.Name(), err)
		}
		vms, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
		if err != nil || len(vms) == 0 {
			continue
		}
		sort.Strings(vms)
		kver := strings.TrimPrefix(filepath.Base(vms[0]), "vmlinuz-")
		if fi, err := os.Stat(filepath.Join(root, "lib", "modules", kver)); err != nil || !fi.IsDir() {
			// A half-unpacked tree; fetch-kernels.sh redoes it.
			continue
		}
		ks = append(ks, Kernel{
			Name:    e.Name(),
			Version: kver,
			Vmlinuz: vms[0],
			ModRoot: root,
			Cloud:   strings.Contains(kver, "-cloud-"),
		})
	}
	if len(ks) == 0 {
		return nil, fmt.Errorf("no kernels in %s (run scripts/fetch-kernels.sh %s): %w", dir, dir, fs.ErrNotExist)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i].Name < ks[j].Name })
	return ks, nil
}

// FindKernel returns the cloud (cloud=true) or generic kernel in dir.
func FindKernel(dir string, cloud bool) (Kernel, error) {
	ks, err := Kernels(dir)
	if err != nil {
		return Kernel{}, err
	}
	for _, k := range ks {
		if k.Cloud == cloud {
			return k, nil
		}
	}
	flavour := "generic"
	if cloud {
		flavour = "cloud"
	}
	return Kernel{}, fmt.Errorf("no %s kernel in %s (run scripts/fetch-kernels.sh %s): %w", flavour, dir, dir, fs.ErrNotExist)
}

// Firmware and bootloader paths from Debian's ovmf and systemd-boot-efi.
const (
	OVMFCode    = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars    = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	SystemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	QEMUBinary  = "qemu-system-x86_64"
)

// requirements maps Need's names to the tools or files they stand for.
var requirements = map[string][]string{
	"qemu":         {QEMUBinary},
	"ovmf":         {OVMFCode, OVMFVars},
	"systemd-boot": {SystemdBoot},
	"mtools":       {"mcopy", "mdir", "mdel", "mmd", "mmove"},
	"dosfstools":   {"mkfs.vfat"},
	"e2fsprogs":    {"mkfs.ext4", "debugfs", "e2fsck"},
	"sfdisk":       {"sfdisk"},
	"cpio":         {"cpio"},
	"go":           {"go"},
	// What MakeGPTDisk and the ext4/ESP helpers use.
	"disk": {"sfdisk", "mkfs.vfat", "mcopy", "mdir", "mdel", "mmd", "mmove", "mkfs.ext4", "debugfs", "e2fsck"},
	// Building the Debian root (scripts/debian-root.sh) and unpacking .debs.
	"debootstrap": {"debootstrap", "dpkg"},
	// Everything a UEFI boot needs besides a kernel.
	"uefi": {QEMUBinary, OVMFCode, OVMFVars, SystemdBoot},
}

// Check reports whether a requirement is met: one of "qemu", "ovmf",
// "systemd-boot", "mtools", "dosfstools", "e2fsprogs", "sfdisk", "cpio",
// "go", "disk", "uefi", "kernel-cloud", "kernel-generic", "kernels" (both),
// "root" (euid 0), an absolute file path, or else a program name.
func Check(what string) error {
	switch what {
	case "kernel-cloud":
		_, err := FindKernel(KernelDir(), true)
		return err
	case "kernel-generic":
		_, err := FindKernel(KernelDir(), false)
		return err
	case "kernels":
		if _, err := Kernels(KernelDir()); err != nil {
			return err // one message for both, not the same one twice
		}
		return errors.Join(Check("kernel-cloud"), Check("kernel-generic"))
	case "root":
		if os.Geteuid() != 0 {
			return errors.New("needs root (euid 0)")
		}
		return nil
	}
	items, ok := requirements[what]
	if !ok {
		items = []string{what}
	}
	var errs []error
	for _, it := range items {
		if filepath.IsAbs(it) {
			if _, err := os.Stat(it); err != nil {
				errs = append(errs, fmt.Errorf("%s (run scripts/install-deps.sh): %w", it, err))
			}
			continue
		}
		if _, err := LookTool(it); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Need skips the test when a requirement (see Check) is missing, or fails
// it under CI=true (testkit.Skip): CI must have everything, and a skip
// there would hide a broken install step.
func Need(t testing.TB, what ...string) {
	t.Helper()
	var errs []error
	for _, w := range what {
		if err := Check(w); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", w, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		testkit.Skipf(t, "missing requirement: %v", err)
	}
}

// CloudKernel returns the cloud kernel, or skips/fails like Need.
func CloudKernel(t testing.TB) Kernel {
	t.Helper()
	Need(t, "kernel-cloud")
	k, err := FindKernel(KernelDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// GenericKernel returns the generic (linux-image-amd64) kernel, or
// skips/fails like Need.
func GenericKernel(t testing.TB) Kernel {
	t.Helper()
	Need(t, "kernel-generic")
	k, err := FindKernel(KernelDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
