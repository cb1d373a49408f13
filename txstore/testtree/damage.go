package testtree

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
)

// DBPageSize is the page size bbolt uses for the store's database here.
const DBPageSize = 4096

// Damage kinds for DamageDB.
const (
	DamagePage2     = "page 2"          // overwrite page 2 with garbage
	DamagePage3     = "page 3"          // overwrite page 3 with garbage
	DamageDataPages = "all data pages"  // every page after the two meta pages
	DamageFreelist  = "freelist page"   // the page the newest meta names as freelist: reads work, writes fail
	DamageEmpty     = "truncated to 0"  // a 0-byte file
	DamageShort     = "truncated short" // 100 bytes of the real file
	DamageGarbage   = "random garbage"  // the whole file replaced by garbage of the same size
	DamageMetas     = "both meta pages" // pages 0 and 1
	// DamageMeta0 is silent to bbolt, which falls back to the older meta
	// page 1; only fsck notices. Not in DamageKinds.
	DamageMeta0 = "meta page 0"
)

// DamageKinds lists every kind, for table-driven tests.
var DamageKinds = []string{DamagePage2, DamagePage3, DamageDataPages, DamageFreelist,
	DamageEmpty, DamageShort, DamageGarbage, DamageMetas}

// DamageDB damages a bbolt file in place the way a bad disk or a stray
// write would. Garbage is deterministic so failures reproduce.
func DamageDB(path, kind string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	garbage := func(off, n int) {
		for i := off; i < off+n && i < len(data); i++ {
			data[i] = byte(rng.Uint32())
		}
	}
	pages := len(data) / DBPageSize
	switch kind {
	case DamagePage2, DamagePage3:
		pg := 2
		if kind == DamagePage3 {
			pg = 3
		}
		if pg >= pages {
			return fmt.Errorf("%s has only %d pages", path, pages)
		}
		garbage(pg*DBPageSize, DBPageSize)
	case DamageDataPages:
		garbage(2*DBPageSize, len(data))
	case DamageFreelist:
		pg, err := freelistPage(data)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		garbage(int(pg)*DBPageSize, DBPageSize)
	case DamageEmpty:
		data = nil
	case DamageShort:
		data = data[:100]
	case DamageGarbage:
		garbage(0, len(data))
	case DamageMetas:
		garbage(0, 2*DBPageSize)
	case DamageMeta0:
		garbage(0, DBPageSize)
	default:
		return fmt.Errorf("unknown damage %q", kind)
	}
	return os.WriteFile(path, data, 0o600)
}

// freelistPage reads the freelist page id from the newer meta page (bbolt's
// layout: 16-byte page header, then magic, version, page size, flags, root
// bucket (16 bytes), freelist, pgid, txid).
func freelistPage(data []byte) (uint64, error) {
	if len(data) < 2*DBPageSize {
		return 0, fmt.Errorf("too short for two meta pages")
	}
	meta := func(pg int) (freelist, txid uint64) {
		m := data[pg*DBPageSize+16:]
		return binary.LittleEndian.Uint64(m[32:]), binary.LittleEndian.Uint64(m[48:])
	}
	f0, t0 := meta(0)
	f1, t1 := meta(1)
	f := f0
	if t1 > t0 {
		f = f1
	}
	if f < 2 || int(f) >= len(data)/DBPageSize {
		return 0, fmt.Errorf("freelist page %d out of range", f)
	}
	return f, nil
}
