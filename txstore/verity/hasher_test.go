package verity

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

// refDigest is the fs-verity digest computed level by level, the whole
// tree in memory (fsverity.rst's description, kept as the reference the
// streaming Hasher is checked against).
func refDigest(data []byte) Sum {
	var level []byte
	for off := 0; off < len(data); off += BlockSize {
		level = append(level, hashBlock(data[off:min(off+BlockSize, len(data))])...)
	}
	var root [sha256.Size]byte
	for len(level) > sha256.Size {
		var next []byte
		for off := 0; off < len(level); off += BlockSize {
			next = append(next, hashBlock(level[off:min(off+BlockSize, len(level))])...)
		}
		level = next
	}
	copy(root[:], level)
	return descriptorDigest(root, int64(len(data)))
}

func hashBlock(b []byte) []byte {
	blk := make([]byte, BlockSize)
	copy(blk, b)
	h := sha256.Sum256(blk)
	return h[:]
}

// writeSplit writes data to h in pieces whose sizes come from rng.
func writeSplit(h *Hasher, data []byte, rng *rand.Rand) {
	for len(data) > 0 {
		n := min(len(data), 1+rng.IntN(3*BlockSize))
		if rng.IntN(4) == 0 {
			n = 0 // empty writes are no-ops
		}
		h.Write(data[:n])
		data = data[n:]
	}
}

func TestHasherGolden(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, g := range golden {
		data := pattern(g.size)
		h := NewHasher()
		writeSplit(h, data, rng)
		if got := h.Sum(); got.String() != g.want || h.Size() != int64(g.size) {
			t.Errorf("size %d: %s, size %d; want %s", g.size, got, h.Size(), g.want)
		}
		if ref := refDigest(data); ref.String() != g.want {
			t.Errorf("refDigest(%d) = %s", g.size, ref)
		}
	}
}

// TestHasherSizes: sizes around every boundary of two and three levels
// (128 and 128² blocks), random sizes and random write splits, one Hasher
// Reset between files, Sum taken mid-stream too.
func TestHasherSizes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	sizes := []int{0, 1, 31, 32, 33, 4095, 4096, 4097, 8192, 127 * 4096, 128*4096 - 1, 129 * 4096,
		128*4096*128 - 1, 128 * 4096 * 128, 128*4096*128 + 1, (128*128 + 1) * 4096}
	for range 40 {
		sizes = append(sizes, rng.IntN(3<<20))
	}
	h := NewHasher()
	for _, n := range sizes {
		data := pattern(n)
		want := refDigest(data)
		h.Reset()
		half := n / 3
		writeSplit(h, data[:half], rng)
		if got := h.Sum(); half < 1<<20 && got != refDigest(data[:half]) {
			t.Errorf("size %d: mid-stream Sum %s, want %s", half, got, refDigest(data[:half]))
		}
		writeSplit(h, data[half:], rng)
		if got := h.Sum(); got != want {
			t.Errorf("size %d: %s, want %s", n, got, want)
		}
		if got, size, err := Digest(bytes.NewReader(data)); got != want || size != int64(n) || err != nil {
			t.Errorf("Digest(%d) = %s, %d, %v; want %s", n, got, size, err, want)
		}
	}
}

func FuzzHasher(f *testing.F) {
	f.Add(uint32(4097), uint64(1))
	f.Add(uint32(0), uint64(2))
	f.Add(uint32(129*4096), uint64(3))
	f.Fuzz(func(t *testing.T, size uint32, seed uint64) {
		n := int(size % (600 * BlockSize))
		data := pattern(n)
		h := NewHasher()
		writeSplit(h, data, rand.New(rand.NewPCG(seed, 0)))
		if got, want := h.Sum(), refDigest(data); got != want {
			t.Fatalf("size %d seed %d: %s, want %s", n, seed, got, want)
		}
	})
}

// TestDigestAllocs: digesting through the pooled Hasher allocates nothing
// per call once warm (100k small objects per image).
func TestDigestAllocs(t *testing.T) {
	data := pattern(300000)
	DigestBytes(data)
	if n := testing.AllocsPerRun(20, func() { DigestBytes(data) }); n > 0 {
		t.Errorf("DigestBytes allocates %.0f times per call", n)
	}
}
