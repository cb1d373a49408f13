package verity

import "crypto/sha256"

// maxLevels bounds the Merkle tree's height: 128 hashes per block, so
// nine levels cover any int64 size (2^51 data blocks).
const maxLevels = 9

// Hasher computes a file's fs-verity digest from its content as it is
// written, in one pass and without holding more than a block per tree
// level: each full data block is hashed into level 0, and each level's
// full block of hashes into the next. Sum folds the partial blocks. It
// lets a reader that hashes content anyway (a commit's scan) learn the
// digest without reading the file again.
type Hasher struct {
	size  int64
	data  [BlockSize]byte // the partial data block
	dn    int             // bytes in data
	level [maxLevels]struct {
		buf *[BlockSize]byte // the partial block of hashes, allocated on first use
		n   int64            // hashes this level has had (full blocks included)
	}
	scratch [BlockSize]byte // Sum's zero-padded partial block
}

// NewHasher returns an empty Hasher.
func NewHasher() *Hasher { return new(Hasher) }

// Reset empties h for another file, keeping its buffers.
func (h *Hasher) Reset() {
	h.size, h.dn = 0, 0
	for i := range h.level {
		h.level[i].n = 0
	}
}

// Size is how many bytes h has been written.
func (h *Hasher) Size() int64 { return h.size }

// Write hashes p's full blocks in place and keeps the rest; it never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	n := len(p)
	h.size += int64(n)
	if h.dn > 0 {
		c := copy(h.data[h.dn:], p)
		h.dn += c
		p = p[c:]
		if h.dn < BlockSize {
			return n, nil
		}
		h.push(0, sha256.Sum256(h.data[:]))
		h.dn = 0
	}
	for len(p) >= BlockSize {
		h.push(0, sha256.Sum256(p[:BlockSize]))
		p = p[BlockSize:]
	}
	h.dn = copy(h.data[:], p)
	return n, nil
}

// push appends sum to level l, hashing the level's block into the next
// level when it fills.
func (h *Hasher) push(l int, sum [sha256.Size]byte) {
	lv := &h.level[l]
	if lv.buf == nil {
		lv.buf = new([BlockSize]byte)
	}
	off := int(lv.n%hashesBlock) * sha256.Size
	copy(lv.buf[off:], sum[:])
	lv.n++
	if lv.n%hashesBlock == 0 && l+1 < maxLevels {
		h.push(l+1, sha256.Sum256(lv.buf[:]))
	}
}

// Sum returns the fs-verity digest of what has been written so far; h
// stays usable (more writes continue the same content).
func (h *Hasher) Sum() Sum {
	return descriptorDigest(h.root(), h.size)
}

// root folds the partial blocks bottom-up: each level's partial block,
// with the hash of the level below's (the carry) appended, is hashed into
// the next, until a level holds a single hash: the root. No data at all
// has an all-zero root.
func (h *Hasher) root() [sha256.Size]byte {
	var carry [sha256.Size]byte
	hasCarry := h.dn > 0
	if hasCarry {
		carry = h.padded(h.data[:h.dn], nil)
	}
	for l := range h.level {
		lv := &h.level[l]
		fill := int(lv.n % hashesBlock)
		switch n := lv.n + int64(b2i(hasCarry)); {
		case n == 0:
			return [sha256.Size]byte{}
		case n == 1 && hasCarry:
			return carry
		case n == 1:
			return [sha256.Size]byte(lv.buf[:sha256.Size])
		case fill == 0 && !hasCarry:
			continue // the next level has every hash of this one
		case fill == 0:
			carry = h.padded(nil, carry[:])
		default:
			carry, hasCarry = h.padded(lv.buf[:fill*sha256.Size], carry[:b2i(hasCarry)*sha256.Size]), true
		}
	}
	return carry // unreachable: the top level never holds more than one hash
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// padded hashes a then b, zero-padded to a block.
func (h *Hasher) padded(a, b []byte) [sha256.Size]byte {
	n := copy(h.scratch[:], a)
	n += copy(h.scratch[n:], b)
	clear(h.scratch[n:])
	return sha256.Sum256(h.scratch[:])
}
