package initramfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/txboot/txboot/txstore/testkit"
)

func TestParseModInfo(t *testing.T) {
	tests := []struct {
		in   string
		want ModInfo
	}{
		{"", ModInfo{}},
		{"depends=", ModInfo{}},
		{"license=GPL\x00depends=jbd2,mbcache,crc16\x00name=ext4\x00softdep=pre: crypto-crc32c\x00",
			ModInfo{Depends: []string{"jbd2", "mbcache", "crc16"}, SoftPre: []string{"crypto_crc32c"}}},
		{"depends=nvme-core, t10-pi\x00alias=pci:v*d*\x00alias=fs-ext4",
			ModInfo{Depends: []string{"nvme_core", "t10_pi"}, Aliases: []string{"pci:v*d*", "fs_ext4"}}},
		{"softdep=pre: a b post: c\x00softdep=post: d pre: e", ModInfo{SoftPre: []string{"a", "b", "e"}}},
		{"garbage\x00\x00=\x00depends", ModInfo{}},
	}
	for _, tt := range tests {
		if got := ParseModInfo([]byte(tt.in)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseModInfo(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func names(ms []Module) []string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name)
	}
	return s
}

func TestResolve(t *testing.T) {
	ix, err := OpenIndex(fakeKernel(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      []string
		want    []string
		builtin []string
		missing []string
		err     error
	}{
		{"deps first", []string{"a"}, []string{"c", "b", "a"}, nil, nil, nil},
		{"order independent", []string{"b", "a"}, []string{"c", "b", "a"}, nil, nil, nil},
		{"dash and underscore", []string{"e-dash"}, []string{"c", "e_dash"}, nil, nil, nil},
		{"alias", []string{"edev"}, []string{"c", "e_dash"}, nil, nil, nil},
		{"softdep alias pulls all providers first", []string{"d"}, []string{"foo_fast", "foo_generic", "d"}, nil, nil, nil},
		{"compressed", []string{"z"}, []string{"c", "e_dash", "z"}, nil, nil, nil},
		{"builtin", []string{"bi", "bialias", "ext9"}, nil, []string{"bi", "bialias", "ext9"}, nil, nil},
		{"dep on builtin", []string{"usesbi"}, []string{"usesbi"}, nil, nil, nil},
		{"missing", []string{"nope", "a"}, []string{"c", "b", "a"}, nil, []string{"nope"}, nil},
		{"duplicates", []string{"a", "a", "c"}, []string{"c", "b", "a"}, nil, nil, nil},
		{"missing hard dep", []string{"f"}, nil, nil, nil, ErrModuleNotFound},
		{"cycle", []string{"g"}, nil, nil, nil, ErrDependencyCycle},
		{"no modinfo", []string{"nomodinfo"}, nil, nil, nil, nil},
		{"xz", []string{"x"}, []string{"x"}, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ix.Resolve(tt.in)
			if tt.name == "no modinfo" {
				if err == nil {
					t.Fatal("want an error for a module that is not ELF")
				}
				return
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if got := names(r.Modules); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("modules = %v, want %v", got, tt.want)
			}
			if !reflect.DeepEqual(r.Builtin, tt.builtin) || !reflect.DeepEqual(r.Missing, tt.missing) {
				t.Errorf("builtin %v missing %v, want %v %v", r.Builtin, r.Missing, tt.builtin, tt.missing)
			}
		})
	}
	r, err := ix.Resolve([]string{"c"})
	if err != nil || len(r.Modules) != 1 || r.Modules[0].Path != "updates/c.ko" {
		t.Errorf("c resolved to %+v, %v; want updates/ to win", r.Modules, err)
	}
}

// TestResolveModulesDep: when depmod's files exist they are authoritative.
func TestResolveModulesDep(t *testing.T) {
	dir := fakeKernel(t, t.TempDir())
	writeFile(t, filepath.Join(dir, "modules.dep"), []byte(
		"kernel/drivers/a.ko: kernel/drivers/e-dash.ko\n"+
			"kernel/drivers/e-dash.ko:\n"+
			"kernel/drivers/c.ko:\n"+
			"kernel/fs/d.ko:\n"))
	writeFile(t, filepath.Join(dir, "modules.alias"), []byte("# comment\nalias pci:v00001AF4d* a\nalias thing a\n"))
	writeFile(t, filepath.Join(dir, "modules.softdep"), []byte("softdep a pre: c\n"))
	ix, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ix.Resolve([]string{"thing"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(r.Modules), []string{"e_dash", "c", "a"}; !reflect.DeepEqual(got, want) {
		t.Errorf("modules = %v, want %v", got, want)
	}
}

// build runs Build into a fresh file and returns the bytes.
func build(t testing.TB, o Options) ([]byte, Result) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initrd.img")
	res, size, err := Build(out, o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != size {
		t.Errorf("Build said %d bytes, file has %d", size, len(b))
	}
	ents, err := os.ReadDir(filepath.Dir(out))
	if err != nil || len(ents) != 1 {
		t.Errorf("temp files left behind: %v %v", ents, err)
	}
	return b, res
}

func testOptions(t testing.TB) (Options, string) {
	root := t.TempDir()
	fakeKernel(t, root)
	extra := filepath.Join(root, "extra")
	writeFile(t, filepath.Join(extra, "busybox"), []byte("#!busybox"))
	if err := os.Chmod(filepath.Join(extra, "busybox"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(extra, "motd"), []byte("hello\n"))
	return Options{
		Init:             staticInit(t, root),
		KVer:             testKVer,
		KModDir:          root,
		Drivers:          []string{"a d", "z,edev", "x"},
		NoDefaultDrivers: true,
		Files: []FileSpec{
			{filepath.Join(extra, "busybox"), "/bin/busybox"},
			{filepath.Join(extra, "motd"), "/etc/motd"},
		},
		SourceDateEpoch: 1700000000,
	}, root
}

func TestReproducible(t *testing.T) {
	o, _ := testOptions(t)
	first, _ := build(t, o)
	second, _ := build(t, o)
	if !bytes.Equal(first, second) {
		t.Fatal("two builds differ")
	}

	// Inputs in another order, and from another copy of the tree at
	// another host path, give the same bytes.
	o2, _ := testOptions(t)
	o2.Files = []FileSpec{o2.Files[1], o2.Files[0]}
	o2.Drivers = []string{"x edev", "z d a"}
	if b, _ := build(t, o2); !bytes.Equal(first, b) {
		t.Error("reordered inputs give different bytes")
	}

	o3 := o
	o3.SourceDateEpoch = 0
	if b, _ := build(t, o3); bytes.Equal(first, b) {
		t.Error("SOURCE_DATE_EPOCH does not change the image")
	}
}

func TestImageContents(t *testing.T) {
	o, root := testOptions(t)
	img, res := build(t, o)
	recs := readImage(t, img)
	// The reader hides the trailer; look for it in the raw bytes.
	raw := decompressed(t, img)
	if tail := raw[max(0, len(raw)-128):]; !bytes.Contains(tail, []byte(cpio.Trailer+"\x00")) || len(raw)%4 != 0 {
		t.Fatalf("archive does not end with a trailer: %q", tail)
	}

	byName := map[string]cpio.Record{}
	inodes := map[uint64]string{}
	var prev string
	for _, r := range recs {
		if r.Name <= prev {
			t.Errorf("%q after %q: not sorted", r.Name, prev)
		}
		prev = r.Name
		if r.UID != 0 || r.GID != 0 || r.MTime != o.SourceDateEpoch {
			t.Errorf("%s: uid %d gid %d mtime %d", r.Name, r.UID, r.GID, r.MTime)
		}
		if other, dup := inodes[r.Ino]; dup || r.Ino == 0 {
			t.Errorf("%s: inode %d shared with %q", r.Name, r.Ino, other)
		}
		inodes[r.Ino] = r.Name
		if d := filepath.Dir(r.Name); d != "." {
			if p, ok := byName[d]; !ok || p.Mode&cpio.S_IFMT != cpio.S_IFDIR {
				t.Errorf("%s: parent %s not written before it", r.Name, d)
			}
		}
		byName[r.Name] = r
	}

	initData, _ := os.ReadFile(o.Init)
	checks := []struct {
		name string
		mode uint64
		data []byte
	}{
		{"init", cpio.S_IFREG | 0o755, initData},
		{"bin/busybox", cpio.S_IFREG | 0o755, []byte("#!busybox")},
		{"etc/motd", cpio.S_IFREG | 0o644, []byte("hello\n")},
		{"dev/console", cpio.S_IFCHR | 0o600, nil},
		{"sysroot", cpio.S_IFDIR | 0o755, nil},
		{"proc", cpio.S_IFDIR | 0o755, nil},
		{"lib/modules/" + testKVer + "/kernel/drivers/z.ko", cpio.S_IFREG | 0o644, elfModule("name=z", "depends=e-dash")},
		{"lib/modules/" + testKVer + "/kernel/drivers/x.ko", cpio.S_IFREG | 0o644, elfModule("name=x")},
	}
	for _, c := range checks {
		r, ok := byName[c.name]
		if !ok {
			t.Errorf("%s missing", c.name)
			continue
		}
		if r.Mode != c.mode {
			t.Errorf("%s: mode %o, want %o", c.name, r.Mode, c.mode)
		}
		if c.data != nil && !bytes.Equal(content(t, r), c.data) {
			t.Errorf("%s: wrong content", c.name)
		}
	}
	if c := byName["dev/console"]; c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console is %d:%d", c.Rmajor, c.Rminor)
	}

	// The load list: deps before dependents, each module present.
	list, ok := byName["lib/modules/"+testKVer+"/"+ListFile]
	if !ok {
		t.Fatal("no module list")
	}
	var paths []string
	for _, l := range strings.Split(string(content(t, list)), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			paths = append(paths, l)
		}
	}
	want := []string{
		"updates/c.ko", "kernel/drivers/b.ko", "kernel/drivers/a.ko",
		"kernel/arch/x86/crypto/foo-fast.ko", "kernel/crypto/foo_generic.ko", "kernel/fs/d.ko",
		"kernel/drivers/e-dash.ko", "kernel/drivers/x.ko", "kernel/drivers/z.ko",
	}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("load list = %q\nwant %q", paths, want)
	}
	pos := map[string]int{}
	for i, p := range paths {
		r, ok := byName["lib/modules/"+testKVer+"/"+p]
		if !ok {
			t.Errorf("%s listed but not in the image", p)
			continue
		}
		for _, d := range ParseModInfo(modinfoOf(t, content(t, r))).Depends {
			if j, ok := pos[d]; !ok || j >= i {
				t.Errorf("%s: dependency %s not loaded before it", p, d)
			}
		}
		name, _ := moduleName(p)
		pos[name] = i
	}
	if len(res.Modules) != len(want) {
		t.Errorf("Result.Modules = %v", res.Modules)
	}

	// No host path leaks into the image.
	if bytes.Contains(raw, []byte(root)) {
		t.Error("image contains the host build path")
	}
}

func TestDefaultDrivers(t *testing.T) {
	root := t.TempDir()
	dir := fakeKernel(t, root)
	// This fake kernel has vfat's stack as modules and ext4 built in.
	writeFile(t, filepath.Join(dir, "kernel/fs/fat/fat.ko"), elfModule("name=fat"))
	writeFile(t, filepath.Join(dir, "kernel/fs/fat/vfat.ko"), elfModule("name=vfat", "depends=fat"))
	writeFile(t, filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"))
	_, res, err := MakeTree(Options{Init: staticInit(t, root), KVer: testKVer, KModDir: root})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(res.Modules); !reflect.DeepEqual(got, []string{"fat", "vfat"}) {
		t.Errorf("modules = %v", got)
	}
	if !reflect.DeepEqual(res.Builtin, []string{"ext4"}) {
		t.Errorf("builtin = %v", res.Builtin)
	}
	if len(res.Missing) != len(DefaultDrivers)-2 {
		t.Errorf("missing = %v", res.Missing)
	}
}

func TestBuildErrors(t *testing.T) {
	o, root := testOptions(t)
	dynamic := "/bin/true" // dynamically linked on Debian
	tests := []struct {
		name string
		mod  func(o *Options)
		err  error
		msg  string
	}{
		{"missing driver", func(o *Options) { o.Drivers = []string{"a", "nosuch"} }, ErrModuleNotFound, "nosuch"},
		{"missing hard dep", func(o *Options) { o.Drivers = []string{"f"} }, ErrModuleNotFound, "nosuch"},
		{"dst over init", func(o *Options) { o.Files = append(o.Files, FileSpec{o.Files[0].Src, "/init"}) }, ErrDuplicate, "/init"},
		{"dst twice", func(o *Options) { o.Files = append(o.Files, o.Files[0]) }, ErrDuplicate, "busybox"},
		{"dst under a file", func(o *Options) { o.Files = append(o.Files, FileSpec{o.Files[0].Src, "/init/x"}) }, ErrDuplicate, "/init/x"},
		{"dst relative", func(o *Options) { o.Files = []FileSpec{{o.Files[0].Src, "bin/x"}} }, ErrBadPath, "bin/x"},
		{"dst unclean", func(o *Options) { o.Files = []FileSpec{{o.Files[0].Src, "/bin/../x"}} }, ErrBadPath, "/bin/../x"},
		{"src missing", func(o *Options) { o.Files = []FileSpec{{filepath.Join(root, "nope"), "/x"}} }, os.ErrNotExist, "nope"},
		{"init missing", func(o *Options) { o.Init = filepath.Join(root, "noinit") }, os.ErrNotExist, "noinit"},
		{"kver missing", func(o *Options) { o.KVer = "9.9.9" }, os.ErrNotExist, "9.9.9"},
		{"kver escape", func(o *Options) { o.KVer = "../x" }, nil, "kernel version"},
		{"dynamic init", func(o *Options) { o.Init = dynamic }, ErrDynamicInit, "CGO_ENABLED=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "dynamic init" {
				if _, err := os.Stat(dynamic); err != nil {
					testkit.Skip(t, dynamic+" not present")
				}
			}
			oo := o
			oo.Files = append([]FileSpec(nil), o.Files...)
			tt.mod(&oo)
			out := filepath.Join(t.TempDir(), "out.img")
			_, _, err := Build(out, oo)
			if err == nil || (tt.err != nil && !errors.Is(err, tt.err)) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tt.err, tt.msg)
			}
			if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 0 {
				t.Errorf("left behind: %v", ents)
			}
		})
	}
}

func TestParseFileSpec(t *testing.T) {
	tests := []struct {
		in   string
		want FileSpec
		ok   bool
	}{
		{"/bin/busybox:/bin/busybox", FileSpec{"/bin/busybox", "/bin/busybox"}, true},
		{"c:/weird/src:/dst", FileSpec{"c:/weird/src", "/dst"}, true},
		{"nodst", FileSpec{}, false},
		{":/dst", FileSpec{}, false},
		{"src:", FileSpec{}, false},
		{"src:rel", FileSpec{}, false},
		{"src:/", FileSpec{}, false},
	}
	for _, tt := range tests {
		got, err := ParseFileSpec(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseFileSpec(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func TestEpochFromEnv(t *testing.T) {
	tests := []struct {
		v    string
		want uint64
		ok   bool
	}{
		{"", 0, true},
		{"1700000000", 1700000000, true},
		{"-1", 0, false},
		{"soon", 0, false},
		{"99999999999", 0, false}, // newc holds 32 bits
	}
	for _, tt := range tests {
		t.Setenv("SOURCE_DATE_EPOCH", tt.v)
		got, err := EpochFromEnv()
		if got != tt.want || (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrBadEpoch)) {
			t.Errorf("SOURCE_DATE_EPOCH=%q: %d, %v", tt.v, got, err)
		}
	}
}

// FuzzParseModInfo: names come out normalised and non-empty.
func FuzzParseModInfo(f *testing.F) {
	f.Add([]byte("depends=a,b-c\x00softdep=pre: x post: y\x00alias=z"))
	f.Fuzz(func(t *testing.T, data []byte) {
		mi := ParseModInfo(data)
		for _, l := range [][]string{mi.Depends, mi.SoftPre, mi.Aliases} {
			for _, n := range l {
				if strings.Contains(n, "-") {
					t.Errorf("not normalised: %q", n)
				}
			}
		}
		for _, n := range append(mi.Depends, mi.SoftPre...) {
			if n == "" {
				t.Errorf("empty name in %+v", mi)
			}
		}
	})
}
