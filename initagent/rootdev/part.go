package rootdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// ErrNoPartitionTable means neither a GPT nor an MBR was found.
var ErrNoPartitionTable = errors.New("no partition table")

// Partition is one entry of a disk's partition table, numbered as the
// kernel numbers it (GPT: entry index + 1; MBR: 1-4, logical from 5).
type Partition struct {
	Number int
	UUID   string // PARTUUID: GPT unique GUID, or SSSSSSSS-PP for MBR
	Label  string // PARTLABEL (GPT only)
}

// ReadPartitions reads the GPT (primary, else backup) or MBR of a disk of
// size bytes with the given logical sector size.
func ReadPartitions(r io.ReaderAt, size int64, sectorSize int) ([]Partition, error) {
	if sectorSize <= 0 {
		sectorSize = 512
	}
	mbr := make([]byte, 512)
	if ok, err := readAt(r, mbr, 0); !ok {
		if err == nil {
			err = ErrNoPartitionTable
		}
		return nil, err
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return nil, ErrNoPartitionTable
	}
	for i := 0; i < 4; i++ {
		if mbr[446+16*i+4] == 0xEE { // protective MBR
			return readGPT(r, size, int64(sectorSize))
		}
	}
	return readMBR(r, mbr, int64(sectorSize))
}

func guid(b []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]),
		binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16])
}

func readGPT(r io.ReaderAt, size, ss int64) ([]Partition, error) {
	parts, err := readGPTAt(r, ss, ss)
	if err == nil || size <= 0 {
		return parts, err
	}
	// The kernel falls back to the backup header in the last sector.
	if bparts, berr := readGPTAt(r, size/ss*ss-ss, ss); berr == nil {
		return bparts, nil
	}
	return nil, err
}

func readGPTAt(r io.ReaderAt, off, ss int64) ([]Partition, error) {
	h := make([]byte, 512)
	if ok, err := readAt(r, h, off); !ok {
		return nil, fmt.Errorf("gpt header: %w", errOr(err, io.ErrUnexpectedEOF))
	}
	if string(h[0:8]) != "EFI PART" {
		return nil, fmt.Errorf("gpt header: bad signature: %w", ErrNoPartitionTable)
	}
	hsize := binary.LittleEndian.Uint32(h[12:])
	if hsize < 92 || hsize > 512 {
		return nil, fmt.Errorf("gpt header: size %d: %w", hsize, ErrNoPartitionTable)
	}
	want := binary.LittleEndian.Uint32(h[16:])
	hc := append([]byte(nil), h[:hsize]...)
	clear(hc[16:20])
	if crc32.ChecksumIEEE(hc) != want {
		return nil, fmt.Errorf("gpt header: bad checksum: %w", ErrNoPartitionTable)
	}
	lba := binary.LittleEndian.Uint64(h[72:])
	n := binary.LittleEndian.Uint32(h[80:])
	esize := binary.LittleEndian.Uint32(h[84:])
	// Bounds keep a hostile table from making PID 1 allocate gigabytes.
	if esize < 128 || esize > 4096 || esize%8 != 0 || n > 4096 || lba > 1<<40 {
		return nil, fmt.Errorf("gpt header: %d entries of %d bytes at LBA %d: %w", n, esize, lba, ErrNoPartitionTable)
	}
	arr := make([]byte, int(n)*int(esize))
	if ok, err := readAt(r, arr, int64(lba)*ss); !ok {
		return nil, fmt.Errorf("gpt entries: %w", errOr(err, io.ErrUnexpectedEOF))
	}
	if crc32.ChecksumIEEE(arr) != binary.LittleEndian.Uint32(h[88:]) {
		return nil, fmt.Errorf("gpt entries: bad checksum: %w", ErrNoPartitionTable)
	}
	var parts []Partition
	for i := 0; i < int(n); i++ {
		e := arr[i*int(esize):][:128]
		if allZero(e[0:16]) {
			continue
		}
		name := make([]uint16, 0, 36)
		for j := 56; j+1 < 128; j += 2 {
			c := binary.LittleEndian.Uint16(e[j:])
			if c == 0 {
				break
			}
			name = append(name, c)
		}
		parts = append(parts, Partition{Number: i + 1, UUID: guid(e[16:32]), Label: string(utf16.Decode(name))})
	}
	return parts, nil
}

func readMBR(r io.ReaderAt, mbr []byte, ss int64) ([]Partition, error) {
	sig := binary.LittleEndian.Uint32(mbr[440:])
	id := func(n int) string { return fmt.Sprintf("%08x-%02x", sig, n) }
	var parts []Partition
	var ext uint32 // start LBA of the extended partition
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i:][:16]
		typ := e[4]
		if typ == 0 {
			continue
		}
		parts = append(parts, Partition{Number: i + 1, UUID: id(i + 1)})
		if isExtended(typ) && ext == 0 {
			ext = binary.LittleEndian.Uint32(e[8:])
		}
	}
	if ext == 0 {
		return parts, nil
	}
	// Logical partitions: a chain of EBRs, each relative to the extended
	// partition's start. Bounded so a looping chain cannot hang the boot.
	ebr := make([]byte, 512)
	next := uint32(0)
	num := 5
	for hops := 0; hops < 128; hops++ {
		if ok, _ := readAt(r, ebr, (int64(ext)+int64(next))*ss); !ok || ebr[510] != 0x55 || ebr[511] != 0xAA {
			break
		}
		if ebr[446+4] != 0 {
			parts = append(parts, Partition{Number: num, UUID: id(num)})
			num++
		}
		link := ebr[446+16:][:16]
		nn := binary.LittleEndian.Uint32(link[8:])
		if !isExtended(link[4]) || nn == 0 || nn == next {
			break
		}
		next = nn
	}
	return parts, nil
}

func isExtended(t byte) bool { return t == 0x05 || t == 0x0F || t == 0x85 }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}
