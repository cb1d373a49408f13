// Package esp finds the EFI system partition of the running system the way
// systemd's tools do: the LoaderDevicePartUUID EFI variable names the
// partition systemd-boot was started from, and the ESP is the mount point
// of that partition at /efi, /boot or /boot/efi. When it is mounted
// nowhere (a minimal Debian has no fstab line for it), Find mounts it
// itself, privately: on a temporary directory, detached again at once, so
// it is reached only through a descriptor this process holds and no mount
// can be left behind, whatever happens to the process.
//
// A path saved when the system was built never counts here: the ESP of an
// image being prepared is not where the booted system has it.
//
// Every host path and the mount calls are fields of Finder, so tests run
// on fakes and never touch the host's devices, mounts or EFI variables.
package esp

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/initagent/rootdev"
	"github.com/txboot/txboot/txstore/efivars"
)

// Sentinel errors, for errors.Is.
var (
	// ErrNotFound: no ESP could be found (nor mounted).
	ErrNotFound = errors.New("ESP not found")
	// ErrNoLoaderVar: LoaderDevicePartUUID is not set (not booted by
	// systemd-boot, or no efivarfs). Errors carrying it also carry
	// ErrNotFound.
	ErrNoLoaderVar = errors.New("LoaderDevicePartUUID is not set (not booted by systemd-boot?)")
)

// MountPoints are where systemd's tools look for the ESP, in their order.
var MountPoints = []string{"/efi", "/boot", "/boot/efi"}

// Finder holds the host paths and calls Find uses; zero values are the
// real ones.
type Finder struct {
	Root       string // where MountPoints are reached; "/" by default
	EFIVarsDir string // efivarfs; efivars.DefaultDir by default
	MountInfo  string // /proc/self/mountinfo
	ByPartUUID string // udev's links, /dev/disk/by-partuuid
	SysRoot    string // sysfs, /sys: a device's major:minor, and the disks to scan without udev
	DevRoot    string // /dev
	MountDir   string // where the temporary mount point is made; /run
	// Mount and Unmount default to unix.Mount and unix.Unmount.
	Mount   func(source, target, fstype string, flags uintptr, data string) error
	Unmount func(target string, flags int) error
	// LoadModule loads a kernel module (default: modprobe), tried once
	// when the kernel does not know vfat.
	LoadModule func(name string) error
}

// ESP is a found ESP. Close it when done: a privately mounted one goes
// away with its last descriptor.
type ESP struct {
	Path       string // where to read and write it (a /proc/self/fd path when mounted privately)
	PartUUID   string // "" when found without LoaderDevicePartUUID
	Device     string // e.g. /dev/vda1; "" when found without LoaderDevicePartUUID
	MountPoint string // where the system has it mounted; "" when mounted privately
	fd         int    // held while mounted privately, else -1
}

// Private reports whether bootctl mounted the ESP itself.
func (e *ESP) Private() bool { return e.fd >= 0 }

// String says which ESP this is, for messages.
func (e *ESP) String() string {
	if e.Private() {
		return fmt.Sprintf("ESP PARTUUID=%s (%s, mounted privately by bootctl)", e.PartUUID, e.Device)
	}
	if e.PartUUID != "" {
		return fmt.Sprintf("ESP %s (PARTUUID=%s)", e.MountPoint, e.PartUUID)
	}
	return "ESP " + e.MountPoint
}

// Close releases a private mount; for a mounted ESP it does nothing.
func (e *ESP) Close() error {
	if e == nil || e.fd < 0 {
		return nil
	}
	err := unix.Close(e.fd)
	e.fd = -1
	if err != nil {
		return fmt.Errorf("close %s: %w", e.Path, err)
	}
	return nil
}

func (f *Finder) root() string        { return or(f.Root, "/") }
func (f *Finder) mountInfo() string   { return or(f.MountInfo, "/proc/self/mountinfo") }
func (f *Finder) byPartUUID() string  { return or(f.ByPartUUID, "/dev/disk/by-partuuid") }
func (f *Finder) sysRoot() string     { return or(f.SysRoot, "/sys") }
func (f *Finder) devRoot() string     { return or(f.DevRoot, "/dev") }
func (f *Finder) mountDir() string    { return or(f.MountDir, "/run") }
func (f *Finder) vars() *efivars.Vars { return efivars.New(f.EFIVarsDir) }
func (f *Finder) at(mp string) string { return filepath.Join(f.root(), mp) }

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Find returns the ESP of the running system: the partition
// LoaderDevicePartUUID names, where it is mounted on one of MountPoints,
// else mounted privately. Without the variable it falls back to the first
// of MountPoints that is a mount point holding loader/ (a system booted
// by another loader, or without UEFI); the error then wraps
// ErrNoLoaderVar when there is none.
func (f *Finder) Find() (*ESP, error) {
	uuid, err := f.vars().DevicePartUUID()
	if errors.Is(err, efivars.ErrNotExist) {
		return f.findMounted()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	dev, majmin, err := f.partition(uuid)
	if err != nil {
		return nil, fmt.Errorf("%w: LoaderDevicePartUUID=%s: %w", ErrNotFound, uuid, err)
	}
	mounts, err := f.mounts()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	for _, mp := range MountPoints {
		if m, ok := mounts.top(mp); ok && m.majmin == majmin && m.root == "/" {
			return &ESP{Path: f.at(mp), PartUUID: uuid, Device: dev, MountPoint: mp, fd: -1}, nil
		}
	}
	return f.mountPrivately(uuid, dev)
}

// findMounted is the fallback without LoaderDevicePartUUID.
func (f *Finder) findMounted() (*ESP, error) {
	mounts, err := f.mounts()
	if err != nil {
		return nil, fmt.Errorf("%w: %w: %w", ErrNotFound, ErrNoLoaderVar, err)
	}
	for _, mp := range MountPoints {
		m, ok := mounts.top(mp)
		if !ok || m.root != "/" {
			continue
		}
		if fi, err := os.Stat(filepath.Join(f.at(mp), "loader")); err == nil && fi.IsDir() {
			return &ESP{Path: f.at(mp), MountPoint: mp, fd: -1}, nil
		}
	}
	return nil, fmt.Errorf("%w: %w, and none of %s is a mount point with loader/", ErrNotFound, ErrNoLoaderVar, strings.Join(MountPoints, ", "))
}

// partition finds the device node and major:minor of the partition with
// this PARTUUID: udev's by-partuuid link, else the partition tables
// themselves (no udev: an initramfs-like or minimal system).
func (f *Finder) partition(uuid string) (dev, majmin string, err error) {
	link := filepath.Join(f.byPartUUID(), uuid)
	target, lerr := os.Readlink(link)
	if lerr == nil {
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(link), target)
		}
		name := filepath.Base(filepath.Clean(target))
		mm, err := f.devNumber(name)
		if err != nil {
			return "", "", fmt.Errorf("%s -> %s: %w", link, target, err)
		}
		return filepath.Join(f.devRoot(), name), mm, nil
	}
	if !errors.Is(lerr, fs.ErrNotExist) {
		return "", "", fmt.Errorf("read link %s: %w", link, lerr)
	}
	devs, err := (&rootdev.Resolver{SysRoot: f.sysRoot(), DevRoot: f.devRoot()}).Devices()
	if err != nil {
		return "", "", err
	}
	var seen []string
	for _, d := range devs {
		if d.PartUUID == "" {
			continue
		}
		seen = append(seen, d.Name+"="+d.PartUUID)
		if strings.EqualFold(d.PartUUID, uuid) {
			mm, err := f.devNumber(d.Name)
			if err != nil {
				return "", "", err
			}
			return d.Path, mm, nil
		}
	}
	return "", "", fmt.Errorf("no partition has this PARTUUID (no %s; partitions seen: %s)", link, or(strings.Join(seen, " "), "none"))
}

// devNumber reads "major:minor" from sysfs.
func (f *Finder) devNumber(name string) (string, error) {
	p := filepath.Join(f.sysRoot(), "class", "block", name, "dev")
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("device number of %s: %w", name, err)
	}
	mm := strings.TrimSpace(string(b))
	if _, _, ok := parseMajMin(mm); !ok {
		return "", fmt.Errorf("device number of %s: %s: %q is not major:minor", name, p, mm)
	}
	return mm, nil
}

func parseMajMin(s string) (uint64, uint64, bool) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, false
	}
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	return ma, mi, err1 == nil && err2 == nil
}

// mount is one line of mountinfo.
type mount struct {
	majmin, root, point, fstype, source string
}

type mountTable []mount

// top is the mount visible at point: the last one mounted there.
func (t mountTable) top(point string) (mount, bool) {
	for i := len(t) - 1; i >= 0; i-- {
		if t[i].point == point {
			return t[i], true
		}
	}
	return mount{}, false
}

// mounts reads mountinfo; an automount point among MountPoints (systemd's
// gpt-auto puts the ESP behind one) is opened to trigger it, then the
// table is read again.
func (f *Finder) mounts() (mountTable, error) {
	t, err := readMountInfo(f.mountInfo())
	if err != nil {
		return nil, err
	}
	triggered := false
	for _, mp := range MountPoints {
		if m, ok := t.top(mp); ok && m.fstype == "autofs" {
			if fd, err := unix.Open(f.at(mp), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
				unix.Close(fd)
				triggered = true
			}
		}
	}
	if triggered {
		return readMountInfo(f.mountInfo())
	}
	return t, nil
}

// readMountInfo parses proc(5)'s mountinfo format.
func readMountInfo(p string) (mountTable, error) {
	file, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer file.Close()
	var t mountTable
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		m, err := parseMountInfoLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("read mounts: %s line %d: %w", p, n, err)
		}
		t = append(t, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %s: %w", p, err)
	}
	return t, nil
}

// parseMountInfoLine: "ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS".
func parseMountInfoLine(line string) (mount, error) {
	fields := strings.Fields(line)
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+2 >= len(fields) { // no fstype and source after "-"
		return mount{}, fmt.Errorf("malformed mountinfo line %q", line)
	}
	if _, _, ok := parseMajMin(fields[2]); !ok {
		return mount{}, fmt.Errorf("malformed device %q in mountinfo line %q", fields[2], line)
	}
	return mount{majmin: fields[2], root: unescape(fields[3]), point: unescape(fields[4]),
		fstype: fields[sep+1], source: unescape(fields[sep+2])}, nil
}

// unescape undoes the kernel's octal escapes (\040 for a space, …).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// mountPrivately mounts dev (vfat) on a fresh directory, opens it, and
// detaches the mount at once: the file system stays reachable through the
// descriptor (ESP.Path is /proc/self/fd/N) and disappears when it is
// closed, also when the process dies, so no mount is ever left behind and
// nothing else on the system sees it.
func (f *Finder) mountPrivately(uuid, dev string) (*ESP, error) {
	mnt, umnt := f.Mount, f.Unmount
	if mnt == nil {
		mnt = unix.Mount
	}
	if umnt == nil {
		umnt = unix.Unmount
	}
	if err := os.MkdirAll(f.mountDir(), 0o755); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	dir, err := os.MkdirTemp(f.mountDir(), "txboot-esp-")
	if err != nil {
		return nil, fmt.Errorf("%w: mount point for PARTUUID=%s: %w", ErrNotFound, uuid, err)
	}
	defer os.Remove(dir) // empty again once detached
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	// umask=0077 as systemd mounts ESPs: the entries are root's business.
	err = mnt(dev, dir, "vfat", flags, "umask=0077")
	if errors.Is(err, unix.ENODEV) { // the kernel has no vfat yet: a module
		load := f.LoadModule
		if load == nil {
			load = modprobe
		}
		if lerr := load("vfat"); lerr == nil {
			err = mnt(dev, dir, "vfat", flags, "umask=0077")
		} else {
			err = fmt.Errorf("%w (loading the vfat module: %w)", err, lerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: PARTUUID=%s is not mounted on %s; mount %s (vfat) on %s: %w",
			ErrNotFound, uuid, strings.Join(MountPoints, ", "), dev, dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		umnt(dir, 0)
		return nil, fmt.Errorf("%w: open %s mounted on %s: %w", ErrNotFound, dev, dir, err)
	}
	if err := umnt(dir, unix.MNT_DETACH); err != nil {
		unix.Close(fd)
		umnt(dir, 0)
		return nil, fmt.Errorf("%w: detach %s from %s: %w", ErrNotFound, dev, dir, err)
	}
	return &ESP{Path: "/proc/self/fd/" + strconv.Itoa(fd), PartUUID: uuid, Device: dev, fd: fd}, nil
}

func modprobe(name string) error {
	p, err := exec.LookPath("modprobe")
	if err != nil {
		for _, c := range []string{"/usr/sbin/modprobe", "/sbin/modprobe"} {
			if _, serr := os.Stat(c); serr == nil {
				p, err = c, nil
				break
			}
		}
	}
	if err != nil {
		return err
	}
	if out, err := exec.Command(p, name).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", p, name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
