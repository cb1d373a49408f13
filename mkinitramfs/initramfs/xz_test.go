package initramfs

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestReadModule: every compression a kernel ships decodes to the plain
// module; broken and oversized files fail naming the file.
func TestReadModule(t *testing.T) {
	mod := elfModule("name=m", "depends=a,b", "alias=pci:v*")
	big := bytes.Repeat(mod, 1+maxModuleSize/len(mod)) // > maxModuleSize
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer zenc.Close()
	var gz bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(mod)
	gw.Close()
	good := xzEncode(t, mod, 0)

	tests := []struct {
		name string
		file string
		data []byte
		err  error // nil: want mod back
	}{
		{"plain", "m.ko", mod, nil},
		{"zstd", "m.ko.zst", zenc.EncodeAll(mod, nil), nil},
		{"gzip", "m.ko.gz", gz.Bytes(), nil},
		{"xz", "m.ko.xz", good, nil},
		{"xz several blocks", "m.ko.xz", xzEncode(t, mod, 64), nil},
		{"xz garbage", "m.ko.xz", []byte("\xfd7zXZ\x00 fake"), ErrBadXZ},
		{"xz truncated", "m.ko.xz", good[:len(good)-1], ErrBadXZ},
		{"xz two streams", "m.ko.xz", append(append([]byte{}, good...), good...), ErrBadXZ},
		{"xz corrupt data", "m.ko.xz", flip(good, 40), nil /* any error */},
		{"zstd too large", "m.ko.zst", zenc.EncodeAll(big, nil), ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), tt.file)
			writeFile(t, p, tt.data)
			got, err := ReadModule(p)
			switch {
			case tt.name == "xz corrupt data":
				if err == nil && bytes.Equal(got, mod) {
					t.Fatal("corruption not detected")
				}
			case tt.err == nil:
				if err != nil || !bytes.Equal(got, mod) {
					t.Fatalf("ReadModule = %d bytes, %v; want the module", len(got), err)
				}
			case !errors.Is(err, tt.err) || !strings.Contains(err.Error(), p):
				t.Fatalf("err = %v, want %v naming %s", err, tt.err, p)
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte{}, b...)
	c[i] ^= 0xff
	return c
}

// TestCheckXZ: what a hostile stream's headers claim is bounded before
// the decoder allocates a dictionary or output.
func TestCheckXZ(t *testing.T) {
	mod := elfModule("name=m")
	good := xzEncode(t, mod, 0)
	// The dictionary byte of the first block's LZMA2 filter: block header
	// at 12 (size byte, flags, [sizes], filter id 0x21, props size 1, dict).
	bigDict := append([]byte{}, good...)
	hdr := bigDict[12 : 12+(int(bigDict[12])+1)*4]
	i := bytes.Index(hdr, []byte{0x21, 0x01})
	if i < 0 {
		t.Fatal("no LZMA2 filter in the block header")
	}
	hdr[i+2] = 40 // 4 GiB
	binary.LittleEndian.PutUint32(hdr[len(hdr)-4:], crc32.ChecksumIEEE(hdr[:len(hdr)-4]))

	several := xzEncode(t, bytes.Repeat(mod, 50), 256)
	end := len(several) - xzHeaderLen
	ixLen := int(binary.LittleEndian.Uint32(several[end+4:])+1) * 4
	if blocks, err := parseXZIndex(several[end-ixLen : end]); err != nil || len(blocks) < 2 {
		t.Fatalf("test stream has %d blocks (%v), want several", len(blocks), err)
	}

	tests := []struct {
		name  string
		data  []byte
		limit uint64
		err   error
	}{
		{"ok", good, maxModuleSize, nil},
		{"ok several blocks", several, maxModuleSize, nil},
		{"output over limit", good, uint64(len(mod)) - 1, ErrTooLarge},
		{"dictionary over limit", good, 1<<20 - 1, ErrTooLarge},
		{"hostile dictionary", bigDict, maxModuleSize, ErrTooLarge},
		{"short", good[:20], maxModuleSize, ErrBadXZ},
		{"no footer", good[:len(good)-2], maxModuleSize, ErrBadXZ},
		{"not xz", bytes.Repeat([]byte{0}, 64), maxModuleSize, ErrBadXZ},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkXZ(tt.data, tt.limit)
			if !errors.Is(err, tt.err) {
				t.Fatalf("checkXZ = %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			r, err := newXZReader(tt.data, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(r); err != nil {
				t.Fatal(err)
			}
		})
	}
}
