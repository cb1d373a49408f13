package rootdev

import (
	"bytes"
	"testing"
)

// FuzzProbe: superblocks come from disks, so any bytes must be safe.
func FuzzProbe(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 2048))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := Probe(bytes.NewReader(b))
		if err == nil && fs.Type == "" {
			t.Errorf("no error but no type")
		}
	})
}

// FuzzReadPartitions: hostile partition tables must not panic or allocate
// without bound.
func FuzzReadPartitions(f *testing.F) {
	mbr := make([]byte, 4096)
	mbr[510], mbr[511] = 0x55, 0xAA
	mbr[446+4] = 0xEE
	copy(mbr[512:], "EFI PART")
	f.Add(mbr, int64(len(mbr)), 512)
	f.Fuzz(func(t *testing.T, b []byte, size int64, ss int) {
		if ss > 1<<16 {
			ss = 512
		}
		parts, _ := ReadPartitions(bytes.NewReader(b), size, ss)
		for _, p := range parts {
			if p.Number <= 0 || p.UUID == "" {
				t.Errorf("bad partition %+v", p)
			}
		}
	})
}

// TestMBRLoopingChain: two empty EBRs linking to each other once hung the
// scan (found by FuzzReadPartitions).
func TestMBRLoopingChain(t *testing.T) {
	disk := make([]byte, 8*512)
	sector := func(n int) []byte { return disk[n*512 : (n+1)*512] }
	mbr := sector(0)
	mbr[510], mbr[511] = 0x55, 0xAA
	mbr[446+4] = 0x05 // extended, starting at LBA 2
	mbr[446+8] = 2
	// EBR links are relative to the extended start (LBA 2):
	// LBA 2 → 3 → 4 → 3 → 4 … with no logical partition in any of them.
	for _, s := range []struct{ at, link byte }{{2, 1}, {3, 2}, {4, 1}} {
		ebr := sector(int(s.at))
		ebr[510], ebr[511] = 0x55, 0xAA
		ebr[446+16+4] = 0x05
		ebr[446+16+8] = s.link
	}
	parts, err := ReadPartitions(bytes.NewReader(disk), int64(len(disk)), 512)
	if err != nil || len(parts) != 1 || parts[0].Number != 1 {
		t.Errorf("ReadPartitions = %+v, %v; want only the extended partition", parts, err)
	}
}
