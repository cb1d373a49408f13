package rootdev

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/initagent/cmdline"
)

const (
	rootUUID = "6a1e2c8d-3b4f-4d5e-8f90-a1b2c3d4e5f6"
	dataUUID = "11111111-2222-4333-8444-555555555555"
	espID    = "1234ABCD"
	diskGUID = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
	rootPart = "c0ffee00-1111-4222-8333-444455556666"
	espPart  = "deadbeef-1111-4222-8333-444455556666"
	mbrID    = "0xcafe0042"
)

// TestProbeSynthetic checks superblock parsing on hand-made bytes, so it
// runs without any host tools.
func TestProbeSynthetic(t *testing.T) {
	uuidBytes := []byte{0x6a, 0x1e, 0x2c, 0x8d, 0x3b, 0x4f, 0x4d, 0x5e, 0x8f, 0x90, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6}
	ext := func(compat, incompat, ro uint32, label string) []byte {
		b := make([]byte, 4096)
		sb := b[1024:]
		binary.LittleEndian.PutUint16(sb[0x38:], 0xEF53)
		binary.LittleEndian.PutUint32(sb[0x5C:], compat)
		binary.LittleEndian.PutUint32(sb[0x60:], incompat)
		binary.LittleEndian.PutUint32(sb[0x64:], ro)
		copy(sb[0x68:], uuidBytes)
		copy(sb[0x78:0x88], label)
		return b
	}
	xfs := make([]byte, 512)
	copy(xfs, "XFSB")
	copy(xfs[32:], uuidBytes)
	copy(xfs[108:], "xroot")
	btrfs := make([]byte, 0x10000+4096)
	copy(btrfs[0x10040:], "_BHRfS_M")
	copy(btrfs[0x10020:], uuidBytes)
	copy(btrfs[0x1012b:], "broot")
	fat := func(fat32 bool, label string) []byte {
		b := make([]byte, 512)
		b[0], b[510], b[511] = 0xEB, 0x55, 0xAA
		binary.LittleEndian.PutUint16(b[0x0B:], 512)
		if fat32 {
			copy(b[0x52:], "FAT32   ")
			copy(b[0x43:], []byte{0xCD, 0xAB, 0x34, 0x12})
			copy(b[0x47:0x52], label+strings.Repeat(" ", 11-len(label)))
		} else {
			copy(b[0x36:], "FAT16   ")
			copy(b[0x27:], []byte{0xCD, 0xAB, 0x34, 0x12})
			copy(b[0x2B:0x36], label+strings.Repeat(" ", 11-len(label)))
		}
		return b
	}
	badSector := fat(true, "X")
	binary.LittleEndian.PutUint16(badSector[0x0B:], 513)

	tests := []struct {
		name string
		data []byte
		want FS
		err  error
	}{
		{"ext4 extents", ext(0x4, 0x40, 0, "root"), FS{"ext4", rootUUID, "root"}, nil},
		{"ext4 metadata_csum", ext(0x4, 0, 0x400, ""), FS{"ext4", rootUUID, ""}, nil},
		{"ext3", ext(0x4, 0x2, 0, "old"), FS{"ext3", rootUUID, "old"}, nil},
		{"ext2", ext(0, 0x2, 0, "older"), FS{"ext2", rootUUID, "older"}, nil},
		{"ext label 16 bytes", ext(0, 0, 0, "0123456789abcdef"), FS{"ext2", rootUUID, "0123456789abcdef"}, nil},
		{"jbd", ext(0, 0x8, 0, ""), FS{"jbd", rootUUID, ""}, nil},
		{"xfs", xfs, FS{"xfs", rootUUID, "xroot"}, nil},
		{"btrfs", btrfs, FS{"btrfs", rootUUID, "broot"}, nil},
		{"fat32", fat(true, "ESP"), FS{"vfat", "1234-ABCD", "ESP"}, nil},
		{"fat16 no name", fat(false, "NO NAME"), FS{"vfat", "1234-ABCD", ""}, nil},
		{"fat bad sector size", badSector, FS{}, ErrUnknownFS},
		{"zeros", make([]byte, 1<<17), FS{}, ErrUnknownFS},
		{"short", []byte{1, 2, 3}, FS{}, ErrUnknownFS},
		{"empty", nil, FS{}, ErrUnknownFS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Probe(bytes.NewReader(tt.data))
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Errorf("Probe = %+v, %v; want %+v, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

// TestProbeRealImages runs mkfs on image files and checks Probe against
// both the values asked for and blkid's reading of the same file.
func TestProbeRealImages(t *testing.T) {
	needTools(t, "mkfs.ext4", "mkfs.vfat", "blkid")
	dir := t.TempDir()
	tests := []struct {
		name string
		size int64
		mkfs []string
		want FS
	}{
		{"ext4", 8 << 20, []string{"mkfs.ext4", "-q", "-F", "-U", rootUUID, "-L", "txroot"}, FS{"ext4", rootUUID, "txroot"}},
		{"ext4 nolabel", 8 << 20, []string{"mkfs.ext4", "-q", "-F", "-U", dataUUID}, FS{"ext4", dataUUID, ""}},
		{"ext3", 8 << 20, []string{"mkfs.ext4", "-q", "-F", "-t", "ext3", "-U", rootUUID, "-L", "three"}, FS{"ext3", rootUUID, "three"}},
		{"ext2", 8 << 20, []string{"mkfs.ext4", "-q", "-F", "-t", "ext2", "-U", rootUUID, "-L", "two"}, FS{"ext2", rootUUID, "two"}},
		{"vfat16", 16 << 20, []string{"mkfs.vfat", "-F", "16", "-i", espID, "-n", "ESP"}, FS{"vfat", "1234-ABCD", "ESP"}},
		{"vfat32", 40 << 20, []string{"mkfs.vfat", "-F", "32", "-s", "1", "-i", espID, "-n", "EFI SYSTEM"}, FS{"vfat", "1234-ABCD", "EFI SYSTEM"}},
		{"vfat nolabel", 16 << 20, []string{"mkfs.vfat", "-i", espID}, FS{"vfat", "1234-ABCD", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".img")
			sparse(t, img, tt.size)
			run(t, "", tt.mkfs[0], append(tt.mkfs[1:], img)...)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := Probe(f)
			if err != nil || got != tt.want {
				t.Fatalf("Probe = %+v, %v; want %+v", got, err, tt.want)
			}
			b := blkid(t, img)
			if b["TYPE"] != got.Type || !strings.EqualFold(b["UUID"], got.UUID) || b["LABEL"] != got.Label {
				t.Errorf("Probe = %+v, blkid says %v", got, b)
			}
		})
	}
}

// gptDisk builds a GPT disk image with a vfat ESP (partition 1) and an
// ext4 root (partition 2), and returns the disk and the two partition
// images cut out of it.
func gptDisk(t *testing.T, dir string) (disk, esp, root string) {
	t.Helper()
	needTools(t, "sfdisk", "mkfs.ext4", "mkfs.vfat")
	disk = filepath.Join(dir, "gpt.img")
	sparse(t, disk, 40<<20)
	run(t, "label: gpt\nlabel-id: "+diskGUID+"\n"+
		"start=2048, size=16384, type=U, name=\"EFI System\", uuid="+espPart+"\n"+
		"start=18432, size=40960, type=L, name=\"txroot\", uuid="+rootPart+"\n",
		"sfdisk", "-q", disk)
	espImg := filepath.Join(dir, "esp-src.img")
	sparse(t, espImg, 16384*512)
	run(t, "", "mkfs.vfat", "-i", espID, "-n", "ESP", espImg)
	raw, err := os.ReadFile(espImg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(raw, 2048*512); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	run(t, "", "mkfs.ext4", "-q", "-F", "-U", rootUUID, "-L", "txroot", "-E", "offset="+itoa(18432*512), disk, itoa(40960/2))
	esp, root = filepath.Join(dir, "gpt1.img"), filepath.Join(dir, "gpt2.img")
	copyRange(t, disk, esp, 2048*512, 16384*512)
	copyRange(t, disk, root, 18432*512, 40960*512)
	return disk, esp, root
}

// mbrDisk builds a DOS-labelled disk: a primary ext4 (1), an extended
// partition (2) with two logical partitions (5, 6; 6 holds ext4 "data").
func mbrDisk(t *testing.T, dir string) (disk, data string) {
	t.Helper()
	needTools(t, "sfdisk", "mkfs.ext4")
	disk = filepath.Join(dir, "mbr.img")
	sparse(t, disk, 40<<20)
	run(t, "label: dos\nlabel-id: "+mbrID+"\n"+
		"start=2048, size=8192, type=83\n"+
		"start=10240, size=40960, type=5\n"+
		"start=12288, size=8192, type=83\n"+
		"start=22528, size=16384, type=83\n",
		"sfdisk", "-q", disk)
	run(t, "", "mkfs.ext4", "-q", "-F", "-U", dataUUID, "-L", "data", "-E", "offset="+itoa(22528*512), disk, itoa(16384/2))
	data = filepath.Join(dir, "mbr6.img")
	copyRange(t, disk, data, 22528*512, 16384*512)
	return disk, data
}

func TestReadPartitions(t *testing.T) {
	dir := t.TempDir()
	gpt, _, _ := gptDisk(t, dir)
	mbr, _ := mbrDisk(t, dir)

	read := func(t *testing.T, path string) ([]Partition, error) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		return ReadPartitions(f, st.Size(), 512)
	}
	// A copy with the primary GPT header wiped must fall back to the backup.
	damaged := filepath.Join(dir, "gpt-damaged.img")
	b, err := os.ReadFile(gpt)
	if err != nil {
		t.Fatal(err)
	}
	clear(b[512:1024])
	if err := os.WriteFile(damaged, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// And one with the backup wiped too has no usable table.
	clear(b[len(b)-512:])
	both := filepath.Join(dir, "gpt-both.img")
	if err := os.WriteFile(both, b, 0o644); err != nil {
		t.Fatal(err)
	}

	wantGPT := []Partition{{1, espPart, "EFI System"}, {2, rootPart, "txroot"}}
	tests := []struct {
		name string
		path string
		want []Partition
		err  error
	}{
		{"gpt", gpt, wantGPT, nil},
		{"gpt backup", damaged, wantGPT, nil},
		{"gpt both damaged", both, nil, ErrNoPartitionTable},
		{"mbr logical", mbr, []Partition{{1, "cafe0042-01", ""}, {2, "cafe0042-02", ""}, {5, "cafe0042-05", ""}, {6, "cafe0042-06", ""}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := read(t, tt.path)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("partition %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
	// Cross-check with sfdisk's own reading.
	for n, p := range wantGPT {
		if u := strings.TrimSpace(run(t, "", "sfdisk", "--part-uuid", gpt, itoa(int64(n+1)))); !strings.EqualFold(u, p.UUID) {
			t.Errorf("sfdisk says PARTUUID %q, want %q", u, p.UUID)
		}
	}
}

// testTree exposes the GPT disk as vda, the MBR disk as vdb, an unused loop
// device, and an empty CD drive.
func testTree(t *testing.T) *Resolver {
	t.Helper()
	dir := t.TempDir()
	gpt, esp, root := gptDisk(t, dir)
	mbr, data := mbrDisk(t, dir)
	return fakeTree(t, filepath.Join(dir, "root"), []fakeDev{
		{name: "loop0", size: 0},
		{name: "sr0", size: 0},
		{name: "vda", image: gpt, size: -1},
		{name: "vda1", parent: "vda", partition: 1, image: esp, size: -1, partName: "EFI System"},
		{name: "vda2", parent: "vda", partition: 2, image: root, size: -1, partName: "txroot"},
		{name: "vdb", image: mbr, size: -1},
		{name: "vdb6", parent: "vdb", partition: 6, image: data, size: -1},
	})
}

func TestResolve(t *testing.T) {
	r := testTree(t)
	dev := func(n string) string { return filepath.Join(r.DevRoot, n) }
	tests := []struct {
		spec cmdline.RootSpec
		want string
		err  error
	}{
		{cmdline.RootSpec{Kind: cmdline.RootPath, Value: "/dev/vda2"}, dev("vda2"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootPath, Value: "/dev/vdz9"}, "", ErrNotFound},
		{cmdline.RootSpec{Kind: cmdline.RootUUID, Value: rootUUID}, dev("vda2"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootUUID, Value: strings.ToUpper(rootUUID)}, dev("vda2"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootUUID, Value: "1234-abcd"}, dev("vda1"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootUUID, Value: dataUUID}, dev("vdb6"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootUUID, Value: "99999999-2222-4333-8444-555555555555"}, "", ErrNotFound},
		{cmdline.RootSpec{Kind: cmdline.RootLabel, Value: "txroot"}, dev("vda2"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootLabel, Value: "ESP"}, dev("vda1"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootLabel, Value: "TXROOT"}, "", ErrNotFound},
		{cmdline.RootSpec{Kind: cmdline.RootPartUUID, Value: rootPart}, dev("vda2"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootPartUUID, Value: "cafe0042-06"}, dev("vdb6"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootPartUUID, Value: "cafe0042-05"}, "", ErrNotFound},
		{cmdline.RootSpec{Kind: cmdline.RootPartLabel, Value: "EFI System"}, dev("vda1"), nil},
		{cmdline.RootSpec{Kind: cmdline.RootPartLabel, Value: "txroot"}, dev("vda2"), nil},
		{cmdline.RootSpec{}, "", ErrNoSpec},
	}
	for _, tt := range tests {
		t.Run(tt.spec.String(), func(t *testing.T) {
			got, err := r.Resolve(tt.spec)
			if got != tt.want || !errors.Is(err, tt.err) {
				t.Errorf("Resolve(%v) = %q, %v; want %q, %v", tt.spec, got, err, tt.want, tt.err)
			}
		})
	}

	devs, err := r.Devices()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range devs {
		names = append(names, d.Name)
	}
	if got := strings.Join(names, " "); got != "vda vda1 vda2 vdb vdb6" {
		t.Errorf("Devices = %s, want empty loop0 and sr0 left out", got)
	}
}

// TestResolveAmbiguous: a cloned disk must not be booted at random, but a
// RAID member (held) loses to the device built on it.
func TestResolveAmbiguous(t *testing.T) {
	dir := t.TempDir()
	_, _, root := gptDisk(t, dir)
	clone := filepath.Join(dir, "clone.img")
	copyRange(t, root, clone, 0, 40960*512)
	spec := cmdline.RootSpec{Kind: cmdline.RootUUID, Value: rootUUID}

	r := fakeTree(t, filepath.Join(dir, "a"), []fakeDev{
		{name: "vda", image: root, size: -1},
		{name: "vdb", image: clone, size: -1},
	})
	if _, err := r.Resolve(spec); !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "vdb") {
		t.Errorf("clone: err = %v, want ErrAmbiguous naming both", err)
	}

	r = fakeTree(t, filepath.Join(dir, "b"), []fakeDev{
		{name: "md0", image: root, size: -1},
		{name: "vda", image: clone, size: -1, holder: "md0"},
	})
	if got, err := r.Resolve(spec); err != nil || got != filepath.Join(r.DevRoot, "md0") {
		t.Errorf("raid: Resolve = %q, %v; want md0", got, err)
	}
}

func TestWait(t *testing.T) {
	r := testTree(t)
	ctx := context.Background()

	t.Run("present", func(t *testing.T) {
		got, err := r.Wait(ctx, cmdline.RootSpec{Kind: cmdline.RootLabel, Value: "txroot"}, time.Second, 10*time.Millisecond)
		if err != nil || got != filepath.Join(r.DevRoot, "vda2") {
			t.Errorf("Wait = %q, %v", got, err)
		}
	})

	t.Run("timeout names what it saw", func(t *testing.T) {
		spec := cmdline.RootSpec{Kind: cmdline.RootUUID, Value: "99999999-2222-4333-8444-555555555555"}
		start := time.Now()
		_, err := r.Wait(ctx, spec, 150*time.Millisecond, 20*time.Millisecond)
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("err = %v, want ErrTimeout", err)
		}
		// It must not give up early; how much later it returns depends on
		// the machine's load, so that is not asserted.
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Errorf("gave up after %v, before its 150ms timeout", d)
		}
		msg := err.Error()
		for _, want := range []string{"UUID=99999999", "vda2 (ext4 UUID=\"" + rootUUID + "\" LABEL=\"txroot\"", "PARTLABEL=\"EFI System\"", "vdb6"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q lacks %q", msg, want)
			}
		}
	})

	t.Run("appears later", func(t *testing.T) {
		dir := t.TempDir()
		_, _, root := gptDisk(t, dir)
		r := fakeTree(t, filepath.Join(dir, "late"), []fakeDev{{name: "sda", image: root, size: -1}})
		link := filepath.Join(r.SysRoot, "class", "block", "sda")
		target, err := os.Readlink(link)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(link); err != nil {
			t.Fatal(err)
		}
		appeared := make(chan error, 1)
		go func() {
			time.Sleep(100 * time.Millisecond)
			appeared <- os.Symlink(target, link) // atomic, like a hotplug
		}()
		defer func() {
			if err := <-appeared; err != nil {
				t.Error(err)
			}
		}()
		// The timeout only ends a hung test: Wait returns when the link appears.
		got, err := r.Wait(ctx, cmdline.RootSpec{Kind: cmdline.RootUUID, Value: rootUUID}, time.Minute, 10*time.Millisecond)
		if err != nil || got != filepath.Join(r.DevRoot, "sda") {
			t.Errorf("Wait = %q, %v", got, err)
		}
	})

	t.Run("no devices hint", func(t *testing.T) {
		r := fakeTree(t, t.TempDir(), nil)
		_, err := r.Wait(ctx, cmdline.RootSpec{Kind: cmdline.RootLabel, Value: "x"}, 10*time.Millisecond, 0)
		if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "driver") {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := r.Wait(cctx, cmdline.RootSpec{Kind: cmdline.RootLabel, Value: "x"}, time.Minute, 0)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	})

	t.Run("bad spec returns at once", func(t *testing.T) {
		_, err := r.Wait(ctx, cmdline.RootSpec{}, time.Minute, 0)
		if !errors.Is(err, ErrNoSpec) {
			t.Errorf("err = %v, want ErrNoSpec", err)
		}
	})
}

// TestDevicesNoSysfs: a missing sysfs is an error naming the path.
func TestDevicesNoSysfs(t *testing.T) {
	r := &Resolver{SysRoot: filepath.Join(t.TempDir(), "nope")}
	if _, err := r.Devices(); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("err = %v", err)
	}
}
