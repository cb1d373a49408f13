package initramfs

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"
)

// xzEncode compresses data as the kernel's Makefile does (CRC32, 1 MiB
// dictionary); blockSize > 0 gives a stream of several blocks.
func xzEncode(t testing.TB, data []byte, blockSize int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.WriterConfig{DictCap: 1 << 20, CheckSum: xz.CRC32, BlockSize: blockSize}.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// elfModule returns a minimal ELF64 relocatable object whose only content
// is a .modinfo section holding the given key=value strings, which is all
// mkinitramfs reads from a module.
func elfModule(modinfo ...string) []byte {
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := ehsize
	shstrOff := infoOff + len(info)
	shoff := (shstrOff + len(shstr) + 7) &^ 7

	b := make([]byte, shoff+3*shentsize)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 1)  // ET_REL
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[40:], uint64(shoff))
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[58:], shentsize)
	le.PutUint16(b[60:], 3) // sections: null, .modinfo, .shstrtab
	le.PutUint16(b[62:], 2) // shstrndx
	copy(b[infoOff:], info)
	copy(b[shstrOff:], shstr)
	sh := func(i int, name, typ uint32, off, size int) {
		h := b[shoff+i*shentsize:]
		le.PutUint32(h[0:], name)
		le.PutUint32(h[4:], typ)
		le.PutUint64(h[24:], uint64(off))
		le.PutUint64(h[32:], uint64(size))
		le.PutUint64(h[48:], 1)
	}
	sh(1, 1, 1, infoOff, len(info))    // .modinfo, SHT_PROGBITS
	sh(2, 10, 3, shstrOff, len(shstr)) // .shstrtab, SHT_STRTAB
	return b
}

func writeFile(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

const testKVer = "6.0.0-test"

// fakeModule is one module of a fake kernel tree.
type fakeModule struct {
	path    string // relative to lib/modules/<kver>
	modinfo []string
}

var fakeModules = []fakeModule{
	{"kernel/drivers/a.ko", []string{"name=a", "depends=b,c"}},
	{"kernel/drivers/b.ko", []string{"name=b", "depends=c"}},
	{"kernel/drivers/c.ko", []string{"name=c", "depends="}},
	{"kernel/fs/d.ko", []string{"name=d", "softdep=pre: crypto-foo post: c", "depends="}},
	{"kernel/crypto/foo_generic.ko", []string{"name=foo_generic", "alias=crypto-foo", "alias=foo"}},
	{"kernel/arch/x86/crypto/foo-fast.ko", []string{"name=foo_fast", "alias=crypto-foo", "alias=foo"}},
	{"kernel/drivers/e-dash.ko", []string{"name=e_dash", "depends=c", "alias=edev"}},
	{"kernel/drivers/f.ko", []string{"name=f", "depends=nosuch"}},
	{"kernel/drivers/g.ko", []string{"name=g", "depends=h"}},
	{"kernel/drivers/h.ko", []string{"name=h", "depends=g"}},
	{"kernel/drivers/usesbi.ko", []string{"name=usesbi", "depends=bi"}},
	{"kernel/drivers/z.ko.zst", []string{"name=z", "depends=e-dash"}},
	{"kernel/drivers/x.ko.xz", []string{"name=x"}},
	{"kernel/drivers/nomodinfo.ko", nil},
	{"updates/c.ko", []string{"name=c", "depends="}}, // overrides kernel/drivers/c.ko
}

// fakeKernel writes a kernel module tree under root/lib/modules/<kver> and
// returns that directory.
func fakeKernel(t testing.TB, root string) string {
	t.Helper()
	dir := filepath.Join(root, "lib", "modules", testKVer)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	for _, m := range fakeModules {
		var data []byte
		if m.modinfo != nil {
			data = elfModule(m.modinfo...)
		} else {
			data = []byte("\x7fELF not really")
		}
		switch {
		case strings.HasSuffix(m.path, ".zst"):
			data = enc.EncodeAll(data, nil)
		case strings.HasSuffix(m.path, ".xz"):
			data = xzEncode(t, data, 0)
		}
		writeFile(t, filepath.Join(dir, m.path), data)
	}
	writeFile(t, filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/bi.ko\nkernel/drivers/ext9.ko\n"))
	writeFile(t, filepath.Join(dir, "modules.builtin.modinfo"), []byte("bi.alias=bialias\x00bi.license=GPL\x00"))
	writeFile(t, filepath.Join(dir, "modules.order"), []byte("kernel/drivers/a.ko\n"))
	return dir
}

// staticInit is a stand-in for initagent: a static ELF (this test binary
// is not necessarily static, so a hand-made one with no PT_INTERP).
func staticInit(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "initagent")
	writeFile(t, p, elfModule("not=really-init"))
	if err := os.Chmod(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// readImage decompresses and parses an image.
func readImage(t testing.TB, img []byte) []cpio.Record {
	t.Helper()
	d, err := zstd.NewReader(bytes.NewReader(img), zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	raw, err := io.ReadAll(d)
	if err != nil {
		t.Fatalf("zstd: %v", err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("cpio: %v", err)
	}
	return recs
}

func content(t testing.TB, r cpio.Record) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// modinfoOf extracts the .modinfo section of a module image.
func modinfoOf(t testing.TB, mod []byte) []byte {
	t.Helper()
	ef, err := elf.NewFile(bytes.NewReader(mod))
	if err != nil {
		t.Fatal(err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		t.Fatal("no .modinfo")
	}
	b, err := sec.Data()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decompressed(t testing.TB, img []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b, err := d.DecodeAll(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
