package harness

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/mkinitramfs/initramfs"
)

// helloInitramfs builds testdata/helloinit as /init of a fresh initramfs,
// with the given kernel modules (paths) under /modules.
func helloInitramfs(t *testing.T, modules ...string) string {
	t.Helper()
	Need(t, "go", "cpio")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := BuildStaticGo(t.Context(), "./qemu-tests/harness/testdata/helloinit", filepath.Join(root, "init")); err != nil {
		t.Fatal(err)
	}
	// A module is packed as NAME.ko, decompressed: Debian 13 ships
	// NAME.ko.xz, Debian 12 NAME.ko.
	for _, m := range modules {
		src := m
		if _, err := os.Stat(src); err != nil {
			if c, _ := filepath.Glob(m + ".*"); len(c) == 1 {
				src = c[0]
			}
		}
		b, err := initramfs.ReadModule(src)
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, filepath.Join(root, "modules", filepath.Base(m)), string(b))
	}
	cpio := filepath.Join(dir, "initrd.cpio")
	if err := MakeCPIO(root, cpio); err != nil {
		t.Fatal(err)
	}
	return cpio
}

var reHello = regexp.MustCompile(`HELLO-TXBOOT cmdline=(.*txboot\.tx=(\d+).*)\n`)

// TestDirectBootHello boots the cloud kernel straight into a Go /init and
// exercises Expect, Send, QMP reset with AllowReboot, and a clean exit.
func TestDirectBootHello(t *testing.T) {
	Need(t, "qemu")
	k := CloudKernel(t)
	initrd := helloInitramfs(t)

	vm := StartT(t, Config{
		Kernel:      k.Vmlinuz,
		Initrd:      initrd,
		Append:      "panic=-1 quiet txboot.tx=42 hello.wait",
		SerialLog:   filepath.Join(t.TempDir(), "serial.log"),
		AllowReboot: true,
	})
	m, err := vm.Expect(reHello, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	boot := vm.Marks()[0].Since
	if m[2] != "42" || m[1] != "console=ttyS0 panic=-1 quiet txboot.tx=42 hello.wait" {
		t.Errorf("cmdline %q, tx %q", m[1], m[2])
	}
	if err := vm.ExpectString("WAITING", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := vm.QMP("query-status", nil)
	if err != nil || !bytes.Contains(st, []byte(`"running"`)) {
		t.Fatalf("query-status = %s, %v", st, err)
	}

	// A hard reset reboots the guest within the same QEMU.
	if err := vm.Reset(); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.ExpectEvent("RESET", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(reHello, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := vm.ExpectString("WAITING", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := vm.Send("poweroff\n"); err != nil {
		t.Fatal(err)
	}
	if err := vm.ExpectString("BYE", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if r := vm.ExitReason(); r != "guest-shutdown" {
		t.Errorf("exit reason %q, want guest-shutdown", r)
	}
	if n := strings.Count(vm.Output(), "HELLO-TXBOOT"); n != 2 {
		t.Errorf("%d boots, want 2", n)
	}
	t.Logf("kernel %s: /init ran %v after QEMU start; whole run %v", k.Version, boot.Round(time.Millisecond), vm.Elapsed().Round(time.Millisecond))
}

// TestWatchdogReset checks the i6300esb wiring: the generic kernel (the
// cloud one has no i6300esb driver) arms it and stops petting; QEMU must
// report WATCHDOG and, under -no-reboot, exit with guest-reset.
func TestWatchdogReset(t *testing.T) {
	Need(t, "qemu")
	k := GenericKernel(t)
	wd := filepath.Join(k.ModDir(), "kernel", "drivers", "watchdog")
	initrd := helloInitramfs(t, filepath.Join(wd, "watchdog.ko"), filepath.Join(wd, "i6300esb.ko"))
	vm := StartT(t, Config{
		Kernel:   k.Vmlinuz,
		Initrd:   initrd,
		Append:   "panic=-1 quiet txboot.tx=1 hello.modules=watchdog,i6300esb i6300esb.params=heartbeat=2 hello.watchdog",
		Watchdog: true,
	})
	if err := vm.ExpectString("WATCHDOG-ARMED", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	armed := vm.Marks()[0].At
	ev, err := vm.ExpectEvent("WATCHDOG", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !vm.WatchdogFired() || vm.ExitReason() != "guest-reset" {
		t.Errorf("watchdog fired %v, exit reason %q; events %+v", vm.WatchdogFired(), vm.ExitReason(), vm.Events())
	}
	t.Logf("kernel %s armed the watchdog %v after QEMU start; %s fired %v later",
		k.Version, vm.Marks()[0].Since.Round(time.Millisecond), ev.Data, ev.At.Sub(armed).Round(time.Millisecond))
}

// TestUEFISystemdBootMenu boots OVMF + systemd-boot from a GPT disk made
// by MakeGPTDisk, picks the second menu entry over the serial console and
// checks systemd-boot's boot-counter rename on the ESP.
func TestUEFISystemdBootMenu(t *testing.T) {
	Need(t, "qemu", "uefi", "disk")
	k := CloudKernel(t)
	initrd := helloInitramfs(t)
	dir := t.TempDir()
	esp := filepath.Join(dir, "esp")
	copyFile(t, SystemdBoot, filepath.Join(esp, "EFI", "BOOT", "BOOTX64.EFI"))
	copyFile(t, k.Vmlinuz, filepath.Join(esp, "txboot", "vmlinuz"))
	copyFile(t, initrd, filepath.Join(esp, "txboot", "initrd"))
	mustWrite(t, filepath.Join(esp, "loader", "loader.conf"), "timeout 3\ndefault txboot-1.conf\n")
	for _, id := range []string{"1", "2"} {
		mustWrite(t, filepath.Join(esp, "loader", "entries", "txboot-"+id+"+3.conf"),
			"title txboot "+id+"\nsort-key txboot-"+id+"\nlinux /txboot/vmlinuz\ninitrd /txboot/initrd\noptions console=ttyS0 panic=-1 quiet txboot.tx="+id+"\n")
	}
	d, err := MakeGPTDisk(filepath.Join(dir, "disk.img"), GPTSpec{ESPDir: esp, ESPMiB: 64, RootMiB: 32})
	if err != nil {
		t.Fatal(err)
	}
	vars := filepath.Join(dir, "OVMF_VARS.fd")
	vm := StartT(t, Config{UEFI: true, VarsPath: vars, Disk: d.Path, SerialLog: filepath.Join(dir, "serial.log")})
	if err := vm.ExpectString("Boot in", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	menu := vm.Marks()[0].Since
	if err := vm.Send("\x1b[B\r"); err != nil {
		t.Fatal(err)
	}
	m, err := vm.Expect(reHello, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m[2] != "2" {
		t.Errorf("booted tx %s, want 2 (menu selection)", m[2])
	}
	if err := vm.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	names, err := d.ESPImage().List("/loader/entries")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"txboot-1+3.conf", "txboot-2+2-1.conf"}; !slices.Equal(names, want) {
		t.Errorf("entries after boot %q, want %q", names, want)
	}
	if _, err := os.Stat(vars); err != nil {
		t.Error(err)
	}
	t.Logf("menu after %v, /init after %v, run %v", menu.Round(time.Millisecond), vm.Marks()[1].Since.Round(time.Millisecond), vm.Elapsed().Round(time.Millisecond))
}

func TestKernels(t *testing.T) {
	Need(t, "kernels")
	ks, err := Kernels(KernelDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		if _, err := os.Stat(k.Vmlinuz); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(filepath.Join(k.ModDir(), "modules.order")); err != nil {
			t.Error(err)
		}
		t.Logf("%+v", k)
	}
}

func TestGPTDiskAndESP(t *testing.T) {
	Need(t, "disk")
	dir := t.TempDir()
	esp := filepath.Join(dir, "esp")
	root := filepath.Join(dir, "root")
	mustWrite(t, filepath.Join(esp, "loader", "loader.conf"), "timeout 0\n")
	mustWrite(t, filepath.Join(esp, "loader", "entries", "txboot-1+3.conf"), "title tx 1\n")
	mustWrite(t, filepath.Join(root, "etc", "hostname"), "txboot\n")
	if err := os.Chmod(root, 0o751); err != nil {
		t.Fatal(err)
	}

	img := filepath.Join(dir, "disk.img")
	d, err := MakeGPTDisk(img, GPTSpec{
		ESPDir: esp, ESPMiB: 64,
		RootDir: root, RootMiB: 64,
		Root:         Ext4Opts{Label: "txroot"},
		RootPartUUID: "5b2bd8a8-8bd1-4b0c-9d1e-2f5bd8c2b0a1",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", *d)

	// The partition table says what MakeGPTDisk reported.
	out, _, err := run(t.Context(), runOpts{}, "sfdisk", "--json", img)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{d.ESP.PartUUID, d.Root.PartUUID, d.DiskGUID} {
		if !bytes.Contains(bytes.ToLower(out), []byte(want)) {
			t.Errorf("sfdisk --json lacks %s:\n%s", want, out)
		}
	}
	if d.Root.PartUUID != "5b2bd8a8-8bd1-4b0c-9d1e-2f5bd8c2b0a1" || d.Root.Offset != 65<<20 {
		t.Errorf("root partition %+v", d.Root)
	}

	// ESP readback, write, rename, delete.
	e := d.ESPImage()
	names, err := ListESPDir(img, d.ESP.Offset, "/loader/entries")
	if err != nil || !slices.Equal(names, []string{"txboot-1+3.conf"}) {
		t.Fatalf("entries = %q, %v", names, err)
	}
	if b, err := ReadESPFile(img, d.ESP.Offset, "loader/loader.conf"); err != nil || string(b) != "timeout 0\n" {
		t.Fatalf("loader.conf = %q, %v", b, err)
	}
	bin := bytes.Repeat([]byte{0, 1, 2, '\n', '\r', 0xff}, 10000)
	if err := WriteESPFile(img, d.ESP.Offset, "/EFI/txboot/blob.bin", bin); err != nil {
		t.Fatal(err)
	}
	if b, err := e.ReadFile("/EFI/txboot/blob.bin"); err != nil || !bytes.Equal(b, bin) {
		t.Fatalf("binary roundtrip: len %d, %v", len(b), err)
	}
	if err := e.WriteFile("/EFI/txboot/blob.bin", []byte("short")); err != nil {
		t.Fatal(err)
	}
	if b, _ := e.ReadFile("/EFI/txboot/blob.bin"); string(b) != "short" {
		t.Fatalf("overwrite: %q", b)
	}
	if err := e.Rename("/loader/entries/txboot-1+3.conf", "/loader/entries/txboot-1+2-1.conf"); err != nil {
		t.Fatal(err)
	}
	if names, _ := e.List("/loader/entries"); !slices.Equal(names, []string{"txboot-1+2-1.conf"}) {
		t.Fatalf("after rename: %q", names)
	}
	if err := DeleteESPFile(img, d.ESP.Offset, "/loader/entries/txboot-1+2-1.conf"); err != nil {
		t.Fatal(err)
	}
	if names, err := e.List("/loader/entries"); err != nil || len(names) != 0 {
		t.Fatalf("after delete: %q, %v", names, err)
	}
	if _, err := e.ReadFile("/nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing ESP file: %v, want ErrNotExist", err)
	}

	// The root fs sits at its partition offset; the ESP is intact after it
	// was made (checked above), the root dir kept its source mode.
	rfs := d.RootFS()
	if b, err := rfs.ReadFile("/etc/hostname"); err != nil || string(b) != "txboot\n" {
		t.Fatalf("hostname = %q, %v", b, err)
	}
	if st, err := rfs.Stat("/"); err != nil || st.Mode != 0o751 || st.UID != 0 {
		t.Errorf("root dir %+v, %v; want mode 0751 uid 0", st, err)
	}
	out, err = rfs.Debugfs(false, "stats -h")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"filesystem uuid:          " + d.Root.FSUUID, "filesystem volume name:   txroot"} {
		if !bytes.Contains(bytes.ToLower(out), []byte(want)) {
			t.Errorf("root fs stats lack %q", want)
		}
	}
	if err := rfs.Fsck(); err != nil {
		t.Error(err)
	}
}

func TestExt4Helpers(t *testing.T) {
	Need(t, "e2fsprogs")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	content := bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB: 4 blocks
	mustWrite(t, filepath.Join(src, "objects", "ab", "cdef"), string(content))
	if err := os.MkdirAll(filepath.Join(src, "tree", "usr", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "objects", "ab", "cdef"), filepath.Join(src, "tree", "usr", "bin", "tool")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "objects", "ab", "cdef"), 0o555); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "fs.img")
	uuid, err := MakeExt4(img, src, 32, Ext4Opts{Label: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if uuid == "" {
		t.Fatal("no UUID")
	}
	fsys := Ext4Image{Path: img}

	before, err := fsys.Stat("/tree/usr/bin/tool")
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := fsys.Stat("/objects/ab/cdef")
	if before.Inode != obj.Inode || before.Links != 2 || before.Mode != 0o555 || before.Size != int64(len(content)) {
		t.Fatalf("hardlink not preserved by mkfs -d: %+v vs %+v", before, obj)
	}

	// Bit rot in the third block: content differs, metadata does not.
	const off = 2*4096 + 7
	old, nw, err := fsys.CorruptInPlace("/tree/usr/bin/tool", off)
	if err != nil {
		t.Fatal(err)
	}
	if old != content[off] || nw != ^content[off] {
		t.Errorf("corrupted %q -> %q, want %q -> %q", old, nw, content[off], ^content[off])
	}
	got, err := fsys.ReadFile("/objects/ab/cdef")
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(content)
	want[off] ^= 0xff
	if !bytes.Equal(got, want) {
		t.Fatalf("after in-place corruption the content is not the expected one (len %d)", len(got))
	}
	after, _ := fsys.Stat("/tree/usr/bin/tool")
	if after != before {
		t.Errorf("in-place corruption changed metadata: %+v -> %+v", before, after)
	}
	// Across a block boundary.
	if err := fsys.OverwriteInPlace("/objects/ab/cdef", 4096-2, []byte("XXXX")); err != nil {
		t.Fatal(err)
	}
	got, _ = fsys.ReadFile("/objects/ab/cdef")
	if string(got[4096-2:4096+2]) != "XXXX" {
		t.Errorf("overwrite across blocks: %q", got[4096-4:4096+4])
	}
	if err := fsys.Fsck(); err != nil {
		t.Errorf("in-place corruption must be invisible to fsck: %v", err)
	}

	// Rewrite via debugfs: new inode, the hardlink pair is broken.
	if err := fsys.WriteFile("/tree/usr/bin/tool", []byte("new\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	st, _ := fsys.Stat("/tree/usr/bin/tool")
	if st.Inode == before.Inode || st.Links != 1 || st.Mode != 0o755 || st.Size != 4 {
		t.Errorf("rewritten file %+v", st)
	}
	if obj, _ := fsys.Stat("/objects/ab/cdef"); obj.Links != 1 {
		t.Errorf("object links %d after rewrite, want 1", obj.Links)
	}
	if err := fsys.Remove("/tree/usr/bin/tool"); err != nil {
		t.Fatal(err)
	}
	if ok, err := fsys.Exists("/tree/usr/bin/tool"); ok || err != nil {
		t.Errorf("exists after remove: %v %v", ok, err)
	}
	if _, err := fsys.ReadFile("/tree/usr/bin/tool"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("read removed: %v, want ErrNotExist", err)
	}
	ents, err := fsys.List("/objects/ab")
	if err != nil || len(ents) != 1 || ents[0].Name != "cdef" || ents[0].Inode != obj.Inode {
		t.Errorf("List = %+v, %v", ents, err)
	}
	if err := fsys.Fsck(); err != nil {
		t.Error(err)
	}
}

func TestNeedUnknownTool(t *testing.T) {
	if err := Check("no-such-tool-txboot"); err == nil {
		t.Fatal("Check of a missing tool succeeded")
	}
	if err := Check("sh"); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, dst, string(b))
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
