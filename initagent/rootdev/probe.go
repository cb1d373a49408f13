package rootdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrUnknownFS means no supported filesystem superblock was found.
var ErrUnknownFS = errors.New("no known filesystem")

// FS identifies a filesystem by its superblock.
type FS struct {
	Type  string // ext2, ext3, ext4, vfat, xfs, btrfs
	UUID  string // as blkid prints it: lowercase UUID, or XXXX-XXXX for FAT
	Label string
}

// Probe reads the superblock at the start of r and identifies the
// filesystem. It reads a few hundred bytes; r is a partition or whole disk.
func Probe(r io.ReaderAt) (FS, error) {
	for _, try := range []func(io.ReaderAt) (FS, bool, error){probeExt, probeBtrfs, probeXFS, probeFAT} {
		fs, ok, err := try(r)
		if err != nil {
			return FS{}, err
		}
		if ok {
			return fs, nil
		}
	}
	return FS{}, ErrUnknownFS
}

// readAt reads exactly len(b) bytes; a short device is "not this fs", not an
// error, since tiny devices legitimately exist.
func readAt(r io.ReaderAt, b []byte, off int64) (bool, error) {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return true, nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return false, nil
	}
	return false, err
}

func formatUUID(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// cString trims at the first NUL and drops trailing spaces.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(b), " ")
}

// ext2/3/4: see https://www.kernel.org/doc/html/latest/filesystems/ext4/super.html
func probeExt(r io.ReaderAt) (FS, bool, error) {
	sb := make([]byte, 256)
	if ok, err := readAt(r, sb, 1024); !ok {
		return FS{}, false, err
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return FS{}, false, nil
	}
	compat := binary.LittleEndian.Uint32(sb[0x5C:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	roCompat := binary.LittleEndian.Uint32(sb[0x64:])
	typ := "ext2"
	switch {
	case incompat&0x8 != 0: // external journal device, not mountable
		typ = "jbd"
	case incompat&(0x40|0x80|0x100|0x200) != 0 || roCompat&(0x8|0x10|0x20|0x40|0x400) != 0:
		// extents, 64bit, mmp, flex_bg; huge_file, gdt_csum, dir_nlink,
		// extra_isize, metadata_csum: ext3 cannot mount these.
		typ = "ext4"
	case compat&0x4 != 0: // has_journal
		typ = "ext3"
	}
	return FS{Type: typ, UUID: formatUUID(sb[0x68:0x78]), Label: cString(sb[0x78:0x88])}, true, nil
}

func probeBtrfs(r io.ReaderAt) (FS, bool, error) {
	sb := make([]byte, 0x12b+256)
	if ok, err := readAt(r, sb, 0x10000); !ok {
		return FS{}, false, err
	}
	if string(sb[0x40:0x48]) != "_BHRfS_M" {
		return FS{}, false, nil
	}
	return FS{Type: "btrfs", UUID: formatUUID(sb[0x20:0x30]), Label: cString(sb[0x12b:])}, true, nil
}

func probeXFS(r io.ReaderAt) (FS, bool, error) {
	sb := make([]byte, 120)
	if ok, err := readAt(r, sb, 0); !ok {
		return FS{}, false, err
	}
	if string(sb[0:4]) != "XFSB" {
		return FS{}, false, nil
	}
	return FS{Type: "xfs", UUID: formatUUID(sb[32:48]), Label: cString(sb[108:120])}, true, nil
}

// probeFAT reads the BIOS parameter block. The label comes from the boot
// sector (mkfs.vfat and fatlabel keep it equal to the root directory entry).
func probeFAT(r io.ReaderAt) (FS, bool, error) {
	bs := make([]byte, 512)
	if ok, err := readAt(r, bs, 0); !ok {
		return FS{}, false, err
	}
	if bs[510] != 0x55 || bs[511] != 0xAA || (bs[0] != 0xEB && bs[0] != 0xE9) {
		return FS{}, false, nil
	}
	switch binary.LittleEndian.Uint16(bs[0x0B:]) {
	case 512, 1024, 2048, 4096:
	default:
		return FS{}, false, nil
	}
	var serial, label []byte
	switch {
	case string(bs[0x52:0x5A]) == "FAT32   ":
		serial, label = bs[0x43:0x47], bs[0x47:0x52]
	case string(bs[0x36:0x3E]) == "FAT16   " || string(bs[0x36:0x3E]) == "FAT12   ":
		serial, label = bs[0x27:0x2B], bs[0x2B:0x36]
	default:
		return FS{}, false, nil
	}
	l := cString(label)
	if l == "NO NAME" {
		l = ""
	}
	return FS{
		Type:  "vfat",
		UUID:  fmt.Sprintf("%02X%02X-%02X%02X", serial[3], serial[2], serial[1], serial[0]),
		Label: l,
	}, true, nil
}
