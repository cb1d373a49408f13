package esp

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/efivars"
)

const (
	espUUID   = "5d0f2a3c-1b2e-4a8f-9c11-0123456789ab"
	rootUUID  = "77777777-1b2e-4a8f-9c11-0123456789ab"
	loaderCfg = "default txboot-[1-9]*\n"
)

// host is a fake running system in a temporary directory: efivarfs, sysfs,
// /dev (with or without udev's by-partuuid links), mountinfo and a root
// holding /boot/efi, /efi and /boot.
type host struct {
	dir     string
	f       *Finder
	content string // what the ESP partition holds, for the fake mount
	calls   []string
}

type hostOpts struct {
	mountinfo string // testdata file
	loaderVar string // LoaderDevicePartUUID as systemd-boot writes it; "" none
	noUdev    bool   // no by-partuuid links: partition tables are read
	mountErrs []error
}

func newHost(t *testing.T, o hostOpts) *host {
	t.Helper()
	h := &host{dir: t.TempDir()}
	p := func(rel string) string { return filepath.Join(h.dir, rel) }
	for _, d := range []string{"root/boot/efi", "root/efi", "efivars", "sys/class/block", "dev/disk/by-partuuid", "run", "partition/loader/entries"} {
		mkdir(t, p(d))
	}
	h.content = p("partition")
	write(t, p("partition/loader/loader.conf"), loaderCfg)
	// What a mount point shows when the ESP is mounted there.
	mkdir(t, p("root/boot/efi/loader"))
	write(t, p("root/boot/efi/loader/loader.conf"), loaderCfg)
	mkdir(t, p("root/efi/loader"))
	write(t, p("root/efi/loader/loader.conf"), loaderCfg)
	if o.loaderVar != "" {
		write(t, filepath.Join(p("efivars"), efivars.LoaderDevicePartUUID+"-"+efivars.LoaderGUID),
			string(efivars.EncodeVar(efivars.BootserviceAccess|efivars.RuntimeAccess, utf16z(o.loaderVar))))
	}
	// The kernel's layout: class/block/<name> links into devices/.
	disk := p("sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda")
	for _, d := range []struct{ rel, dev, part string }{{"", "254:0", ""}, {"vda1", "254:1", "1"}, {"vda2", "254:2", "2"}} {
		dir := filepath.Join(disk, d.rel)
		mkdir(t, filepath.Join(dir, "holders"))
		name := filepath.Base(dir)
		write(t, filepath.Join(dir, "dev"), d.dev+"\n")
		write(t, filepath.Join(dir, "size"), "2048\n")
		uevent := "DEVNAME=" + name + "\n"
		if d.part != "" {
			write(t, filepath.Join(dir, "partition"), d.part+"\n")
			uevent += "DEVTYPE=partition\nPARTN=" + d.part + "\n"
		}
		write(t, filepath.Join(dir, "uevent"), uevent)
		rel, err := filepath.Rel(p("sys/class/block"), dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(rel, filepath.Join(p("sys/class/block"), name)); err != nil {
			t.Fatal(err)
		}
		write(t, p("dev/"+name), "")
	}
	writeGPT(t, p("dev/vda"), espUUID, rootUUID)
	if !o.noUdev {
		link(t, "../../vda1", p("dev/disk/by-partuuid/"+espUUID))
		link(t, "../../vda2", p("dev/disk/by-partuuid/"+rootUUID))
	}
	errs := o.mountErrs
	h.f = &Finder{
		Root: p("root"), EFIVarsDir: p("efivars"), MountInfo: filepath.Join("testdata", o.mountinfo),
		ByPartUUID: p("dev/disk/by-partuuid"), SysRoot: p("sys"), DevRoot: p("dev"), MountDir: p("run"),
		// The fake mount makes the mount point show the partition's
		// content; unmounting puts the empty directory back.
		Mount: func(source, target, fstype string, flags uintptr, data string) error {
			h.calls = append(h.calls, "mount "+rel(h.dir, source)+" "+fstype+" "+data)
			if len(errs) > 0 {
				err := errs[0]
				errs = errs[1:]
				if err != nil {
					return err
				}
			}
			if flags&unix.MS_NOEXEC == 0 || flags&unix.MS_NODEV == 0 || flags&unix.MS_NOSUID == 0 {
				t.Errorf("mount flags %#x lack nosuid,nodev,noexec", flags)
			}
			if filepath.Dir(target) != p("run") {
				t.Errorf("mount point %s not under MountDir", target)
			}
			if err := os.Remove(target); err != nil {
				return err
			}
			return os.Symlink(h.content, target)
		},
		Unmount: func(target string, flags int) error {
			h.calls = append(h.calls, "umount detach="+boolStr(flags&unix.MNT_DETACH != 0))
			if err := os.Remove(target); err != nil {
				return err
			}
			return os.Mkdir(target, 0o700)
		},
		LoadModule: func(name string) error {
			h.calls = append(h.calls, "modprobe "+name)
			return nil
		},
	}
	return h
}

func TestFind(t *testing.T) {
	upper := strings.ToUpper(espUUID)
	tests := []struct {
		name string
		o    hostOpts
		// want: the mount point used, or "private"; "" means an error
		want      string
		wantCalls string
		err       []error // errors.Is targets
		msg       string  // in the error
	}{
		{name: "mounted on /boot/efi", o: hostOpts{mountinfo: "mountinfo-boot-efi", loaderVar: upper}, want: "/boot/efi"},
		{name: "mounted on /efi", o: hostOpts{mountinfo: "mountinfo-efi", loaderVar: upper}, want: "/efi"},
		{name: "mounted, no udev: GPT read", o: hostOpts{mountinfo: "mountinfo-boot-efi", loaderVar: upper, noUdev: true}, want: "/boot/efi"},
		{name: "not mounted: mounted privately", o: hostOpts{mountinfo: "mountinfo-none", loaderVar: upper}, want: "private",
			wantCalls: "mount dev/vda1 vfat umask=0077|umount detach=true"},
		{name: "not mounted, no udev", o: hostOpts{mountinfo: "mountinfo-none", loaderVar: upper, noUdev: true}, want: "private",
			wantCalls: "mount dev/vda1 vfat umask=0077|umount detach=true"},
		{name: "overmounted /boot/efi does not count", o: hostOpts{mountinfo: "mountinfo-shadowed", loaderVar: upper}, want: "private",
			wantCalls: "mount dev/vda1 vfat umask=0077|umount detach=true"},
		{name: "a subdirectory bind-mounted does not count", o: hostOpts{mountinfo: "mountinfo-subdir", loaderVar: upper}, want: "private",
			wantCalls: "mount dev/vda1 vfat umask=0077|umount detach=true"},
		{name: "another disk's ESP on /boot/efi does not count", o: hostOpts{mountinfo: "mountinfo-other-device", loaderVar: upper}, want: "private",
			wantCalls: "mount dev/vda1 vfat umask=0077|umount detach=true"},
		{name: "vfat not loaded yet", o: hostOpts{mountinfo: "mountinfo-none", loaderVar: upper, mountErrs: []error{unix.ENODEV}}, want: "private",
			wantCalls: "mount dev/vda1 vfat umask=0077|modprobe vfat|mount dev/vda1 vfat umask=0077|umount detach=true"},
		{name: "mount fails", o: hostOpts{mountinfo: "mountinfo-none", loaderVar: upper, mountErrs: []error{unix.EINVAL}},
			err: []error{ErrNotFound, unix.EINVAL}, msg: "PARTUUID=" + espUUID + " is not mounted on /efi, /boot, /boot/efi; mount "},
		{name: "no such partition", o: hostOpts{mountinfo: "mountinfo-boot-efi", loaderVar: "01234567-89AB-CDEF-0123-456789ABCDEF", noUdev: true},
			err: []error{ErrNotFound}, msg: "no partition has this PARTUUID"},
		{name: "malformed variable", o: hostOpts{mountinfo: "mountinfo-boot-efi", loaderVar: "../../vda2"},
			err: []error{ErrNotFound, efivars.ErrMalformed}},
		{name: "no variable: a mount point with loader/", o: hostOpts{mountinfo: "mountinfo-boot-efi"}, want: "/boot/efi"},
		{name: "no variable, nothing mounted", o: hostOpts{mountinfo: "mountinfo-none"},
			err: []error{ErrNotFound, ErrNoLoaderVar}, msg: "none of /efi, /boot, /boot/efi is a mount point with loader/"},
		{name: "malformed mountinfo", o: hostOpts{mountinfo: "mountinfo-malformed", loaderVar: upper},
			err: []error{ErrNotFound}, msg: "line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t, tt.o)
			e, err := h.f.Find()
			calls := strings.Join(h.calls, "|")
			if tt.want == "" {
				if err == nil {
					t.Fatalf("found %+v, want an error", e)
				}
				for _, target := range tt.err {
					if !errors.Is(err, target) {
						t.Errorf("error %q is not %v", err, target)
					}
				}
				if !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("error %q lacks %q", err, tt.msg)
				}
				if strings.Contains(calls, "mount") && !strings.Contains(calls, "umount") && tt.o.mountErrs == nil {
					t.Errorf("mounted and left mounted: %s", calls)
				}
				assertNoMountDirs(t, h)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if calls != tt.wantCalls {
				t.Errorf("calls %q, want %q", calls, tt.wantCalls)
			}
			// Whatever way it was found, the ESP's content is reachable at Path.
			if got, err := os.ReadFile(filepath.Join(e.Path, "loader/loader.conf")); err != nil || string(got) != loaderCfg {
				t.Errorf("loader.conf at %s: %q, %v", e.Path, got, err)
			}
			assertNoMountDirs(t, h)
			if tt.want == "private" {
				if !e.Private() || e.MountPoint != "" || !strings.HasPrefix(e.Path, "/proc/self/fd/") {
					t.Fatalf("got %+v, want a private mount", e)
				}
				if e.Device != filepath.Join(h.dir, "dev/vda1") || e.PartUUID != espUUID {
					t.Errorf("device %s PARTUUID %s", e.Device, e.PartUUID)
				}
				if !strings.Contains(e.String(), "mounted privately") {
					t.Errorf("String() = %q", e.String())
				}
				// Close releases it: the descriptor is gone.
				if err := e.Close(); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(e.Path); err == nil {
					t.Errorf("%s still open after Close", e.Path)
				}
				return
			}
			if e.Private() || e.MountPoint != tt.want || e.Path != filepath.Join(h.f.Root, tt.want) {
				t.Fatalf("got %+v, want mount point %s", e, tt.want)
			}
			if tt.o.loaderVar != "" && e.PartUUID != espUUID {
				t.Errorf("PARTUUID %q, want %q (lower case)", e.PartUUID, espUUID)
			}
		})
	}
}

// The temporary mount point never outlives Find.
func assertNoMountDirs(t *testing.T, h *host) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(h.dir, "run"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("left in MountDir: %v", ents)
	}
}

func TestParseMountInfoLine(t *testing.T) {
	tests := []struct {
		line string
		want mount
		bad  bool
	}{
		{`41 40 254:1 / /boot/efi rw,relatime shared:30 - vfat /dev/vda1 rw,fmask=0077`,
			mount{majmin: "254:1", root: "/", point: "/boot/efi", fstype: "vfat", source: "/dev/vda1"}, false},
		{`46 21 254:1 / /mnt/my\040esp rw master:1 propagate_from:2 - vfat /dev/vda1 rw`,
			mount{majmin: "254:1", root: "/", point: "/mnt/my esp", fstype: "vfat", source: "/dev/vda1"}, false},
		{`47 21 0:50 /a\134b /x rw - tmpfs none rw`,
			mount{majmin: "0:50", root: `/a\b`, point: "/x", fstype: "tmpfs", source: "none"}, false},
		{`41 40 254:1 / /boot/efi rw,relatime`, mount{}, true},
		{`41 40 254:1 / /boot/efi rw - vfat`, mount{}, true},
		{`41 40 x / /boot/efi rw - vfat /dev/vda1 rw`, mount{}, true},
		{``, mount{}, true},
	}
	for _, tt := range tests {
		got, err := parseMountInfoLine(tt.line)
		if tt.bad {
			if err == nil {
				t.Errorf("%q: parsed as %+v, want an error", tt.line, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: got %+v, %v; want %+v", tt.line, got, err, tt.want)
		}
	}
}

func mkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func link(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func rel(base, p string) string {
	if r, err := filepath.Rel(base, p); err == nil {
		return r
	}
	return p
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func utf16z(s string) []byte {
	var b []byte
	for _, r := range s {
		b = append(b, byte(r), byte(r>>8))
	}
	return append(b, 0, 0)
}

// guidBytes is a GUID as GPT stores it (first three groups little-endian).
func guidBytes(t *testing.T, s string) []byte {
	t.Helper()
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 {
		t.Fatalf("bad GUID %q", s)
	}
	out := make([]byte, 16)
	binary.LittleEndian.PutUint32(out[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(out[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(out[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(out[8:], raw[8:])
	return out
}

// writeGPT writes a 1 MiB disk with a protective MBR and a primary GPT of
// two partitions with these unique GUIDs.
func writeGPT(t *testing.T, p string, uuids ...string) {
	t.Helper()
	const ss, size = 512, 1 << 20
	img := make([]byte, size)
	img[446+4] = 0xEE
	img[510], img[511] = 0x55, 0xAA
	entries := img[2*ss : 2*ss+128*128]
	espType := guidBytes(t, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
	for i, u := range uuids {
		e := entries[i*128:]
		copy(e[0:], espType)
		copy(e[16:], guidBytes(t, u))
		binary.LittleEndian.PutUint64(e[32:], uint64(34+i*100))
		binary.LittleEndian.PutUint64(e[40:], uint64(133+i*100))
	}
	h := img[ss : ss+92]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x00010000)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[24:], 1)
	binary.LittleEndian.PutUint64(h[32:], size/ss-1)
	binary.LittleEndian.PutUint64(h[40:], 34)
	binary.LittleEndian.PutUint64(h[48:], size/ss-34)
	binary.LittleEndian.PutUint64(h[72:], 2)
	binary.LittleEndian.PutUint32(h[80:], 128)
	binary.LittleEndian.PutUint32(h[84:], 128)
	binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(entries))
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h))
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
}
