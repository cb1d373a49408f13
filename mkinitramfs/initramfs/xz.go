package initramfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// ErrBadXZ means a .ko.xz file is not an xz stream mkinitramfs accepts.
var ErrBadXZ = errors.New("bad xz module")

// xz container constants (tukaani.org/xz/xz-file-format.txt).
const (
	xzHeaderLen  = 12   // stream header and stream footer
	xzFilterLZMA = 0x21 // LZMA2 filter ID
)

var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0}

// xzBlock is one index record.
type xzBlock struct{ unpadded, uncompressed uint64 }

// newXZReader decodes a single-stream .ko.xz held in data. ulikunitz/xz
// allocates whatever dictionary a block header asks for (up to 4 GiB), so
// the stream's index and every block's dictionary are checked against
// limit first: the kernel's modules use one block with a 1 MiB dictionary.
func newXZReader(data []byte, limit uint64) (io.Reader, error) {
	if err := checkXZ(data, limit); err != nil {
		return nil, err
	}
	r, err := xz.ReaderConfig{SingleStream: true}.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadXZ, err)
	}
	return r, nil
}

// checkXZ walks the stream footer, the index and each block header of a
// single xz stream filling all of data.
func checkXZ(data []byte, limit uint64) error {
	if len(data) < 2*xzHeaderLen || !bytes.HasPrefix(data, xzMagic) {
		return fmt.Errorf("%w: no xz stream header", ErrBadXZ)
	}
	foot := data[len(data)-xzHeaderLen:]
	if string(foot[10:]) != "YZ" {
		return fmt.Errorf("%w: no stream footer at the end (one stream, no padding, is accepted)", ErrBadXZ)
	}
	indexLen := (uint64(binary.LittleEndian.Uint32(foot[4:8])) + 1) * 4
	indexEnd := uint64(len(data) - xzHeaderLen)
	if indexLen > indexEnd-xzHeaderLen {
		return fmt.Errorf("%w: index size %d out of range", ErrBadXZ, indexLen)
	}
	blocks, err := parseXZIndex(data[indexEnd-indexLen : indexEnd])
	if err != nil {
		return err
	}
	var total uint64
	off := uint64(xzHeaderLen)
	for i, b := range blocks {
		total += b.uncompressed
		if total > limit || b.uncompressed > limit {
			return fmt.Errorf("%w: decompresses to more than %d bytes", ErrTooLarge, limit)
		}
		padded := (b.unpadded + 3) &^ 3
		if b.unpadded == 0 || padded > indexEnd-indexLen-off {
			return fmt.Errorf("%w: block %d size %d out of range", ErrBadXZ, i, b.unpadded)
		}
		if err := checkXZBlockHeader(data[off:off+padded], limit); err != nil {
			return fmt.Errorf("block %d: %w", i, err)
		}
		off += padded
	}
	if off != indexEnd-indexLen {
		return fmt.Errorf("%w: blocks and index do not fill the stream", ErrBadXZ)
	}
	return nil
}

// parseXZIndex parses an index: 0x00, the record count, the records
// (unpadded size, uncompressed size), padding and a CRC32 (checked by
// the decoder).
func parseXZIndex(ix []byte) ([]xzBlock, error) {
	if len(ix) < 8 || ix[0] != 0 {
		return nil, fmt.Errorf("%w: bad index", ErrBadXZ)
	}
	b := ix[1 : len(ix)-4]
	n, b, err := xzVarint(b)
	if err != nil {
		return nil, err
	}
	// Each record takes at least two bytes: a hostile count cannot
	// make a large slice.
	if n > uint64(len(b))/2 {
		return nil, fmt.Errorf("%w: index claims %d blocks", ErrBadXZ, n)
	}
	blocks := make([]xzBlock, n)
	for i := range blocks {
		if blocks[i].unpadded, b, err = xzVarint(b); err != nil {
			return nil, err
		}
		if blocks[i].uncompressed, b, err = xzVarint(b); err != nil {
			return nil, err
		}
	}
	return blocks, nil
}

// checkXZBlockHeader refuses a block whose LZMA2 dictionary exceeds limit:
// a dictionary larger than the whole output is never needed.
func checkXZBlockHeader(blk []byte, limit uint64) error {
	hlen := (int(blk[0]) + 1) * 4
	if blk[0] == 0 || hlen > len(blk) {
		return fmt.Errorf("%w: bad block header", ErrBadXZ)
	}
	flags := blk[1]
	b := blk[2 : hlen-4]
	var err error
	for _, bit := range []byte{0x40, 0x80} { // compressed, uncompressed size
		if flags&bit != 0 {
			if _, b, err = xzVarint(b); err != nil {
				return err
			}
		}
	}
	for range int(flags&3) + 1 {
		var id, plen uint64
		if id, b, err = xzVarint(b); err != nil {
			return err
		}
		if plen, b, err = xzVarint(b); err != nil {
			return err
		}
		if plen > uint64(len(b)) {
			return fmt.Errorf("%w: bad filter properties", ErrBadXZ)
		}
		if id == xzFilterLZMA && plen == 1 {
			dict, err := lzma.DecodeDictCap(b[0])
			if err != nil {
				return fmt.Errorf("%w: %w", ErrBadXZ, err)
			}
			if uint64(dict) > limit {
				return fmt.Errorf("%w: dictionary of %d bytes (limit %d)", ErrTooLarge, dict, limit)
			}
		}
		b = b[plen:]
	}
	return nil
}

// xzVarint reads an xz multibyte integer (at most 9 bytes, little-endian
// base 128).
func xzVarint(b []byte) (uint64, []byte, error) {
	var v uint64
	for i := 0; i < 9 && i < len(b); i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			if i > 0 && b[i] == 0 {
				break // not minimally encoded
			}
			return v, b[i+1:], nil
		}
	}
	return 0, nil, fmt.Errorf("%w: bad integer", ErrBadXZ)
}
