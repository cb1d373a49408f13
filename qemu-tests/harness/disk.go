package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Ext4Opts are the knobs of one ext4 filesystem. Empty UUID means a random
// one, which MakeExt4/MakeGPTDisk report back so tests can use root=UUID=.
type Ext4Opts struct {
	UUID  string
	Label string
	// Extra arguments for mkfs.ext4, e.g. {"-O", "^has_journal"}.
	Extra []string
}

// NewUUID returns a random RFC 4122 version 4 UUID in lower case (the form
// udev uses under /dev/disk/by-uuid and by-partuuid).
func NewUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// MakeExt4 creates img (sizeMiB) holding an ext4 filesystem populated from
// srcDir ("" for an empty one). It returns the UUID used.
func MakeExt4(img, srcDir string, sizeMiB int, opts Ext4Opts) (uuid string, err error) {
	if err := os.Remove(img); err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("remove old %s: %w", img, err)
	}
	if err := makeSparse(img, int64(sizeMiB)<<20); err != nil {
		return "", err
	}
	return mkfsExt4(img, 0, srcDir, sizeMiB, opts)
}

// mkfsExt4 formats sizeMiB at byte offset off of img (which exists).
func mkfsExt4(img string, off int64, srcDir string, sizeMiB int, opts Ext4Opts) (string, error) {
	uuid := opts.UUID
	if uuid == "" {
		uuid = NewUUID()
	}
	// 4 KiB blocks like a real root fs (mke2fs picks 1 KiB under 512 MiB);
	// nodiscard so nothing outside the partition is ever punched; inode
	// tables and journal zeroed now so the guest's ext4lazyinit thread
	// does not write in the background during timed or crash tests.
	ext := "nodiscard,lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0"
	if off != 0 {
		ext += ",offset=" + strconv.FormatInt(off, 10)
	}
	args := []string{"-q", "-F", "-b", "4096", "-U", uuid, "-E", ext}
	if opts.Label != "" {
		args = append(args, "-L", opts.Label)
	}
	if srcDir != "" {
		args = append(args, "-d", srcDir)
	}
	args = append(args, opts.Extra...)
	args = append(args, img, strconv.Itoa(sizeMiB)+"M")
	if _, _, err := run(context.Background(), runOpts{}, "mkfs.ext4", args...); err != nil {
		return "", fmt.Errorf("mkfs.ext4 %s: %w", img, err)
	}
	if srcDir != "" {
		// mke2fs -d copies modes and owners of everything but the root
		// directory itself; carry those over too.
		var st unix.Stat_t
		if err := unix.Stat(srcDir, &st); err != nil {
			return "", fmt.Errorf("stat %s: %w", srcDir, err)
		}
		fs := Ext4Image{Path: img, Offset: off}
		script := fmt.Sprintf("sif / mode 0%o\nsif / uid %d\nsif / gid %d\n", st.Mode, st.Uid, st.Gid)
		if _, err := fs.DebugfsScript(true, script); err != nil {
			return "", fmt.Errorf("set root dir attributes of %s: %w", img, err)
		}
	}
	return uuid, nil
}

func makeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

// GPT partition type GUIDs.
const (
	TypeESP        = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeLinuxFS    = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	TypeRootX86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" // discoverable partitions spec
)

// GPTSpec describes a disk with an ESP (partition 1) and an ext4 root
// (partition 2). Zero values get the defaults noted; empty UUIDs are
// generated and reported in the returned GPTDisk.
type GPTSpec struct {
	ESPDir      string // copied into the ESP ("" = empty ESP)
	ESPMiB      int    // default 128
	ESPName     string // GPT partition name (PARTLABEL), default "esp"
	ESPPartUUID string
	ESPVolID    string // FAT volume id, 8 hex digits; blkid shows XXXX-XXXX

	RootDir      string // copied into the root fs ("" = empty fs)
	RootMiB      int    // default 256
	RootName     string // GPT partition name (PARTLABEL), default "root"
	RootPartUUID string
	RootType     string // default TypeLinuxFS
	Root         Ext4Opts

	DiskGUID string
}

// Partition says where a partition is and what identifies it.
type Partition struct {
	Number    int
	Offset    int64 // bytes from the start of the disk image
	Size      int64 // bytes
	PartUUID  string
	PartLabel string
	FSUUID    string // ext4 UUID, or the FAT serial as XXXX-XXXX
	FSLabel   string
}

// GPTDisk is the result of MakeGPTDisk.
type GPTDisk struct {
	Path     string
	DiskGUID string
	ESP      Partition
	Root     Partition
}

// RootFS is the ext4 root partition, for the debugfs helpers.
func (d *GPTDisk) RootFS() Ext4Image { return Ext4Image{Path: d.Path, Offset: d.Root.Offset} }

// ESPImage is the ESP, for the mtools helpers.
func (d *GPTDisk) ESPImage() ESP { return ESP{Path: d.Path, Offset: d.ESP.Offset} }

const (
	sector   = 512
	alignMiB = 1 // first partition at 1 MiB, like every modern partitioner
)

// MakeGPTDisk builds img without root: sfdisk
// writes the GPT, the ESP is formatted as a separate file and copied in at
// its offset (mkfs.vfat --offset + mcopy @@ failed there), and the root is
// made with mkfs.ext4 -E offset=.
func MakeGPTDisk(img string, spec GPTSpec) (*GPTDisk, error) {
	if spec.ESPMiB == 0 {
		spec.ESPMiB = 128
	}
	if spec.RootMiB == 0 {
		spec.RootMiB = 256
	}
	if spec.ESPName == "" {
		spec.ESPName = "esp"
	}
	if spec.RootName == "" {
		spec.RootName = "root"
	}
	if spec.RootType == "" {
		spec.RootType = TypeLinuxFS
	}
	if spec.ESPPartUUID == "" {
		spec.ESPPartUUID = NewUUID()
	}
	if spec.RootPartUUID == "" {
		spec.RootPartUUID = NewUUID()
	}
	if spec.DiskGUID == "" {
		spec.DiskGUID = NewUUID()
	}
	if spec.ESPVolID == "" {
		spec.ESPVolID = strings.ToUpper(strings.ReplaceAll(NewUUID(), "-", "")[:8])
	}
	if spec.Root.UUID == "" {
		spec.Root.UUID = NewUUID()
	}

	const mib = int64(1) << 20
	espOff := alignMiB * mib
	espSize := int64(spec.ESPMiB) * mib
	rootOff := espOff + espSize
	rootSize := int64(spec.RootMiB) * mib
	// 1 MiB at the end leaves room for the backup GPT (33 sectors).
	total := rootOff + rootSize + mib

	if err := os.Remove(img); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("remove old %s: %w", img, err)
	}
	if err := makeSparse(img, total); err != nil {
		return nil, err
	}
	script := fmt.Sprintf("label: gpt\nlabel-id: %s\nunit: sectors\nfirst-lba: 2048\n"+
		"start=%d, size=%d, type=%s, uuid=%s, name=\"%s\"\n"+
		"start=%d, size=%d, type=%s, uuid=%s, name=\"%s\"\n",
		spec.DiskGUID,
		espOff/sector, espSize/sector, TypeESP, spec.ESPPartUUID, spec.ESPName,
		rootOff/sector, rootSize/sector, spec.RootType, spec.RootPartUUID, spec.RootName)
	if _, _, err := run(context.Background(), runOpts{stdin: []byte(script)}, "sfdisk", "-q", "--no-reread", "--no-tell-kernel", img); err != nil {
		return nil, fmt.Errorf("partition %s: %w", img, err)
	}

	if err := makeESP(img, espOff, spec); err != nil {
		return nil, err
	}
	if _, err := mkfsExt4(img, rootOff, spec.RootDir, spec.RootMiB, spec.Root); err != nil {
		return nil, err
	}
	return &GPTDisk{
		Path:     img,
		DiskGUID: spec.DiskGUID,
		ESP: Partition{
			Number: 1, Offset: espOff, Size: espSize,
			PartUUID: spec.ESPPartUUID, PartLabel: spec.ESPName,
			FSUUID: spec.ESPVolID[:4] + "-" + spec.ESPVolID[4:], FSLabel: "ESP",
		},
		Root: Partition{
			Number: 2, Offset: rootOff, Size: rootSize,
			PartUUID: spec.RootPartUUID, PartLabel: spec.RootName,
			FSUUID: spec.Root.UUID, FSLabel: spec.Root.Label,
		},
	}, nil
}

// makeESP formats a FAT file system in a scratch file, fills it from
// spec.ESPDir and copies it into img at off.
func makeESP(img string, off int64, spec GPTSpec) error {
	tmp, err := os.CreateTemp(filepath.Dir(img), ".esp-*.img")
	if err != nil {
		return fmt.Errorf("esp scratch for %s: %w", img, err)
	}
	espImg := tmp.Name()
	tmp.Close()
	defer os.Remove(espImg)
	if err := makeSparse(espImg, int64(spec.ESPMiB)<<20); err != nil {
		return err
	}
	// FAT32 with 512-byte clusters needs 65525 clusters (~33 MiB); below
	// that let mkfs.vfat pick FAT12/16, which OVMF reads just as well.
	fatArgs := []string{"-F", "32", "-s", "1"}
	if spec.ESPMiB < 40 {
		fatArgs = nil
	}
	fatArgs = append(fatArgs, "-n", "ESP", "-i", spec.ESPVolID, espImg)
	if _, _, err := run(context.Background(), runOpts{}, "mkfs.vfat", fatArgs...); err != nil {
		return fmt.Errorf("format ESP of %s: %w", img, err)
	}
	if spec.ESPDir != "" {
		ents, err := os.ReadDir(spec.ESPDir)
		if err != nil {
			return fmt.Errorf("read ESP source: %w", err)
		}
		if len(ents) > 0 {
			args := []string{"-s", "-Q", "-o", "-i", espImg}
			for _, e := range ents {
				args = append(args, filepath.Join(spec.ESPDir, e.Name()))
			}
			args = append(args, "::/")
			if _, _, err := run(context.Background(), runOpts{env: mtoolsEnv}, "mcopy", args...); err != nil {
				return fmt.Errorf("fill ESP of %s from %s: %w", img, spec.ESPDir, err)
			}
		}
	}
	return copyInto(img, off, espImg)
}

// copyInto writes src into the fresh (all-zero) region of dst at byte
// offset off. Zero chunks are skipped so dst stays sparse.
func copyInto(dst string, off int64, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dst, err)
	}
	buf := make([]byte, 1<<20)
	for pos := int64(0); ; {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 && !allZero(buf[:n]) {
			if _, err := out.WriteAt(buf[:n], off+pos); err != nil {
				out.Close()
				return fmt.Errorf("copy %s into %s at %d: %w", src, dst, off+pos, err)
			}
		}
		pos += int64(n)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			out.Close()
			return fmt.Errorf("read %s: %w", src, rerr)
		}
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("close %s: %w", dst, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
