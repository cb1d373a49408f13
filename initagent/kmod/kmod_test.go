package kmod

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

func TestParseListFixture(t *testing.T) {
	data, err := os.ReadFile("testdata/txboot.modules")
	if err != nil {
		t.Fatal(err)
	}
	paths, bad := ParseList(data)
	want := []string{
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci.ko",
		"kernel/drivers/block/virtio_blk.ko.zst",
		"kernel/fs/mbcache.ko",
		"kernel/fs/ext4/ext4.ko.xz",
		"kernel/crc16.ko.gz",
	}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("paths = %q\nwant %q", paths, want)
	}
	if len(bad) != 3 {
		t.Fatalf("bad = %v, want 3 (absolute, escaping, not .ko)", bad)
	}
	for _, err := range bad {
		if !errors.Is(err, ErrBadListEntry) {
			t.Errorf("%v is not ErrBadListEntry", err)
		}
	}
}

func TestParseList(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  int
	}{
		{"", nil, 0},
		{"\n\n# only comments\n", nil, 0},
		{"a.ko\r\nb.ko\n", []string{"a.ko", "b.ko"}, 0},
		{"a.ko\na.ko\n", []string{"a.ko"}, 0},
		{".ko\n", nil, 1},
		{"./a.ko\n", nil, 1},
		{"a//b.ko\n", nil, 1},
		{"a/../b.ko\n", nil, 1},
		{"a\\b.ko\n", nil, 1},
		{"a.ko.bz2\n", nil, 1},
		{"a.ko\x00.ko\n", nil, 1},
		{"no newline.ko", []string{"no newline.ko"}, 0},
	}
	for _, tt := range tests {
		got, bad := ParseList([]byte(tt.in))
		if !reflect.DeepEqual(got, tt.want) || len(bad) != tt.bad {
			t.Errorf("ParseList(%q) = %q, %v; want %q and %d bad", tt.in, got, bad, tt.want, tt.bad)
		}
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/nvme/host/nvme-core.ko":     "nvme_core",
		"kernel/fs/ext4/ext4.ko.zst":                "ext4",
		"crc32c-intel.ko.xz":                        "crc32c_intel",
		"kernel/drivers/block/virtio_blk.ko.gz":     "virtio_blk",
		"kernel/arch/x86/crypto/crc32c-intel.ko.gz": "crc32c_intel",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParamsFromCmdline(t *testing.T) {
	got := ParamsFromCmdline([]string{
		"virtio_blk.queue_depth=64", "nvme-core.io_timeout=5", "virtio_blk.poll",
		"quiet", "panic=-1", ".x=1", "m.=2", `usbcore.quirks=a b`,
	})
	want := map[string]string{
		"virtio_blk": "queue_depth=64 poll",
		"nvme_core":  "io_timeout=5",
		"usbcore":    `quirks="a b"`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// call records one fake syscall.
type call struct {
	name   string // file base name for finit, image content for init
	params string
	flags  int
}

// fakeKernel stands in for the module syscalls and answers per module.
type fakeKernel struct {
	calls []call
	errs  map[string]error // by file base name or image content
}

func (k *fakeKernel) loader(dir string, params map[string]string) *Loader {
	return &Loader{
		Dir:    dir,
		Params: params,
		finit: func(fd int, params string, flags int) error {
			name, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
			if err != nil {
				return err
			}
			name = filepath.Base(name)
			k.calls = append(k.calls, call{name, params, flags})
			return k.errs[name]
		},
		init: func(image []byte, params string) error {
			k.calls = append(k.calls, call{"image:" + string(image), params, 0})
			return k.errs["image:"+string(image)]
		},
	}
}

func write(t *testing.T, dir, rel string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "kernel/a.ko", []byte("A"))
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, "kernel/b.ko.zst", enc.EncodeAll([]byte("B-zstd"), nil))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write([]byte("C-gzip")); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "kernel/c.ko.gz", gz.Bytes())
	write(t, dir, "kernel/d.ko.xz", []byte("xz"))
	write(t, dir, "kernel/e.ko", []byte("E"))
	write(t, dir, "kernel/f.ko", []byte("F-old-kernel"))
	write(t, dir, "kernel/g.ko", []byte("G"))
	write(t, dir, "kernel/bad.ko.zst", []byte("not zstd"))
	write(t, dir, "kernel/x-y.ko.xz", []byte("xz2"))

	k := &fakeKernel{errs: map[string]error{
		"d.ko.xz":             unix.EINVAL, // kernel without module decompression
		"e.ko":                unix.EEXIST, // built in or loaded already
		"f.ko":                unix.ENOSYS, // no finit_module: fall back
		"g.ko":                unix.ENOENT, // unknown symbol
		"image:F-old-kernel":  nil,
		"image:C-gzip":        unix.EEXIST,
		"image:B-zstd":        nil,
		"image:not-reachable": nil,
	}}
	l := k.loader(dir, map[string]string{"a": "x=1", "b": "y=2", "x_y": "z=3"})
	s := l.Load([]string{
		"kernel/a.ko", "kernel/b.ko.zst", "kernel/missing.ko", "kernel/c.ko.gz",
		"kernel/d.ko.xz", "kernel/e.ko", "kernel/f.ko", "kernel/g.ko", "kernel/bad.ko.zst",
		"kernel/x-y.ko.xz", "../evil.ko",
	})

	wantCalls := []call{
		{"a.ko", "x=1", 0},
		{"image:B-zstd", "y=2", 0},
		{"image:C-gzip", "", 0},
		{"d.ko.xz", "", unix.MODULE_INIT_COMPRESSED_FILE},
		{"e.ko", "", 0},
		{"f.ko", "", 0},
		{"image:F-old-kernel", "", 0},
		{"g.ko", "", 0},
		{"x-y.ko.xz", "z=3", unix.MODULE_INIT_COMPRESSED_FILE},
	}
	if !reflect.DeepEqual(k.calls, wantCalls) {
		t.Errorf("calls =\n%v\nwant\n%v", k.calls, wantCalls)
	}

	type res struct {
		name   string
		status Status
		err    error
	}
	want := []res{
		{"a", Loaded, nil},
		{"b", Loaded, nil},
		{"missing", Failed, os.ErrNotExist},
		{"c", Skipped, nil},
		{"d", Failed, ErrUnsupportedCompression},
		{"e", Skipped, nil},
		{"f", Loaded, nil},
		{"g", Failed, unix.ENOENT},
		{"bad", Failed, zstd.ErrMagicMismatch},
		{"x_y", Loaded, nil},
		{"evil", Failed, ErrBadListEntry},
	}
	if len(s.Results) != len(want) {
		t.Fatalf("results = %+v", s.Results)
	}
	for i, w := range want {
		r := s.Results[i]
		if r.Name != w.name || r.Status != w.status || (w.err == nil) != (r.Err == nil) || (w.err != nil && !errors.Is(r.Err, w.err)) {
			t.Errorf("result %d = %+v (%v), want %+v", i, r, r.Err, w)
		}
		if r.Err != nil && !strings.Contains(r.Err.Error(), strings.TrimPrefix(r.Path, "../")) {
			t.Errorf("error %q does not name %s", r.Err, r.Path)
		}
	}
	if s.Loaded != 4 || s.Skipped != 2 || s.Failed != 5 {
		t.Errorf("counts = %d/%d/%d", s.Loaded, s.Skipped, s.Failed)
	}
	if !strings.Contains(s.String(), "5 failed (missing, d, g, bad, evil)") {
		t.Errorf("String() = %q", s.String())
	}
	if err := s.Err(); !errors.Is(err, unix.ENOENT) || !errors.Is(err, ErrUnsupportedCompression) {
		t.Errorf("Err() = %v", err)
	}
}

func TestLoadList(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "kernel/a.ko", []byte("A"))
	write(t, dir, "kernel/b.ko", []byte("B"))
	write(t, dir, ListFile, []byte("kernel/b.ko\nkernel/a.ko\n/abs.ko\n"))
	k := &fakeKernel{}
	s, err := k.loader(dir, nil).LoadList()
	if err != nil {
		t.Fatal(err)
	}
	if len(k.calls) != 2 || k.calls[0].name != "b.ko" || k.calls[1].name != "a.ko" {
		t.Errorf("calls = %v, want list order b, a", k.calls)
	}
	if s.Loaded != 2 || s.Failed != 1 || !errors.Is(s.Err(), ErrBadListEntry) {
		t.Errorf("summary = %+v", s)
	}

	_, err = (&Loader{Dir: filepath.Join(dir, "none")}).LoadList()
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), ListFile) {
		t.Errorf("missing list: err = %v", err)
	}
	if s := (Summary{}).Err(); s != nil {
		t.Errorf("empty summary Err() = %v", s)
	}
}

func TestKernelRelease(t *testing.T) {
	r, err := KernelRelease()
	if err != nil || r == "" {
		t.Errorf("KernelRelease = %q, %v", r, err)
	}
}

// FuzzParseList: every accepted path stays inside the module directory.
func FuzzParseList(f *testing.F) {
	f.Add([]byte("kernel/a.ko\n# c\n../x.ko\n/abs.ko\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		paths, _ := ParseList(data)
		for _, p := range paths {
			if !filepath.IsLocal(p) || checkEntry(p) != nil {
				t.Errorf("accepted %q", p)
			}
		}
	})
}
