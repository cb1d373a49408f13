package initramfs

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/testkit"
)

// debianKernel is one unpacked linux-image-* package.
type debianKernel struct {
	root, kver string
}

// debianKernels finds kernels under $TXBOOT_KERNEL_DIR/linux-image-*/
// (each unpacked with dpkg -x). Without them the test skips, except under
// CI=true, where the Makefile must have provided them.
func debianKernels(t testing.TB) []debianKernel {
	t.Helper()
	miss := func(why string) {
		why += ` (get one: apt-get download linux-image-6.1.0-NN-amd64 && dpkg -x linux-image-*.deb $TXBOOT_KERNEL_DIR/linux-image-6.1.0-NN-amd64/)`
		testkit.Skip(t, why)
	}
	dir := os.Getenv("TXBOOT_KERNEL_DIR")
	if dir == "" {
		miss("TXBOOT_KERNEL_DIR not set")
	}
	roots, _ := filepath.Glob(filepath.Join(dir, "linux-image-*"))
	var ks []debianKernel
	for _, r := range roots {
		mods, _ := filepath.Glob(filepath.Join(r, "lib", "modules", "*", "kernel"))
		if st, err := os.Stat(r); err != nil || !st.IsDir() || len(mods) != 1 {
			continue
		}
		ks = append(ks, debianKernel{root: r, kver: filepath.Base(filepath.Dir(mods[0]))})
	}
	if len(ks) == 0 {
		miss("no unpacked linux-image-*/lib/modules/<kver>/kernel under " + dir)
	}
	return ks
}

func TestDebianKernel(t *testing.T) {
	for _, k := range debianKernels(t) {
		t.Run(k.kver, func(t *testing.T) {
			o := Options{Init: staticInit(t, t.TempDir()), KVer: k.kver, KModDir: k.root}
			start := time.Now()
			img, res := build(t, o)
			t.Logf("%s: %d modules, %d bytes (%d uncompressed) in %v", k.kver, len(res.Modules), len(img), res.Uncompressed, time.Since(start))
			if again, _ := build(t, o); !bytes.Equal(img, again) {
				t.Error("not reproducible")
			}

			pos := map[string]int{}
			for i, m := range res.Modules {
				pos[m.Name] = i
			}
			builtin := map[string]bool{}
			for _, b := range res.Builtin {
				builtin[b] = true
			}
			if data, err := os.ReadFile(filepath.Join(k.root, "lib", "modules", k.kver, "modules.builtin")); err == nil {
				for _, l := range strings.Fields(string(data)) {
					builtin[NormalizeName(strings.TrimSuffix(filepath.Base(l), ".ko"))] = true
				}
			}
			// before: dep is loaded before mod, unless the kernel has it
			// built in (Debian 13's 6.12 builds virtio_ring and virtio_pci
			// in; 6.1 has them as modules).
			before := func(dep, mod string) {
				t.Helper()
				i, ok1 := pos[dep]
				j, ok2 := pos[mod]
				switch {
				case !ok2 && !builtin[mod]:
					t.Errorf("%s neither packed nor built in", mod)
				case builtin[dep] || builtin[mod]:
				case !ok1 || i > j:
					t.Errorf("want %s (%v) before %s (%v)", dep, ok1, mod, ok2)
				}
			}
			before("virtio_ring", "virtio_blk")
			before("virtio_ring", "virtio_pci")
			_, ext4Module := pos["ext4"]
			ext4Builtin := false
			for _, b := range res.Builtin {
				ext4Builtin = ext4Builtin || b == "ext4"
			}
			switch {
			case ext4Module: // the stock kernel
				for _, d := range []string{"jbd2", "mbcache", "crc16", "crc32c_generic"} {
					before(d, "ext4")
				}
				before("watchdog", "i6300esb")
			case ext4Builtin: // the cloud kernel
			default:
				t.Errorf("ext4 neither module nor built in: %+v", res)
			}

			// The list in the image matches the modules carried.
			var list []byte
			for _, r := range readImage(t, img) {
				if r.Name == "lib/modules/"+k.kver+"/"+ListFile {
					list, _ = io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
				}
			}
			lines := strings.Split(strings.TrimSpace(string(list)), "\n")
			if len(lines) != len(res.Modules)+1 {
				t.Errorf("list has %d lines for %d modules", len(lines), len(res.Modules))
			}
		})
	}
}

// BenchmarkBuild measures a whole build (index, resolve, read, compress,
// durable write) for each Debian kernel, or the fake one without them.
func BenchmarkBuild(b *testing.B) {
	type target struct {
		name string
		o    Options
	}
	var targets []target
	if os.Getenv("TXBOOT_KERNEL_DIR") != "" {
		for _, k := range debianKernels(b) {
			targets = append(targets, target{k.kver, Options{Init: staticInit(b, b.TempDir()), KVer: k.kver, KModDir: k.root}})
		}
	} else {
		o, _ := testOptions(b)
		targets = append(targets, target{"fake", o})
	}
	for _, tg := range targets {
		b.Run(tg.name, func(b *testing.B) {
			out := filepath.Join(b.TempDir(), "initrd.img")
			var size int64
			for b.Loop() {
				var err error
				if _, size, err = Build(out, tg.o); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size), "bytes")
		})
	}
}

// TestDebianKernelMatchesDepmod resolves the default drivers twice: from
// .modinfo (how Debian's packages come) and from modules.dep written by
// depmod into a hard-linked copy. Both must carry the same modules, and
// the .modinfo order must respect every dependency depmod found.
func TestDebianKernelMatchesDepmod(t *testing.T) {
	ks := debianKernels(t)
	if _, err := exec.LookPath("depmod"); err != nil {
		testkit.Skip(t, "depmod not installed (apt-get install -y kmod)")
	}
	for _, k := range ks {
		t.Run(k.kver, func(t *testing.T) {
			src := filepath.Join(k.root, "lib", "modules", k.kver)
			if _, err := os.Stat(filepath.Join(src, "modules.dep")); err == nil {
				testkit.Skip(t, "this tree already has modules.dep")
			}
			base := t.TempDir()
			dst := filepath.Join(base, "lib", "modules", k.kver)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("cp", "-al", src, dst).CombinedOutput(); err != nil {
				t.Fatalf("cp -al: %v\n%s", err, out)
			}
			if out, err := exec.Command("depmod", "-b", base, k.kver).CombinedOutput(); err != nil {
				t.Fatalf("depmod: %v\n%s", err, out)
			}

			resolve := func(dir string) Resolution {
				ix, err := OpenIndex(dir)
				if err != nil {
					t.Fatal(err)
				}
				var want []string
				for _, d := range DefaultDrivers {
					if mod, _ := ix.Has(d); mod {
						want = append(want, d)
					}
				}
				r, err := ix.Resolve(want)
				if err != nil {
					t.Fatal(err)
				}
				return r
			}
			fromInfo, fromDep := resolve(src), resolve(dst)
			a, b := names(fromInfo.Modules), names(fromDep.Modules)
			sort.Strings(a)
			sort.Strings(b)
			if !reflect.DeepEqual(a, b) {
				t.Errorf("modules from .modinfo %v\nfrom modules.dep %v", a, b)
			}

			ix, err := OpenIndex(dst)
			if err != nil {
				t.Fatal(err)
			}
			pos := map[string]int{}
			for i, m := range fromInfo.Modules {
				pos[m.Name] = i
			}
			for i, m := range fromInfo.Modules {
				deps, err := ix.deps(m.Name)
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range deps {
					if j, ok := pos[d]; !ok || j > i {
						t.Errorf("%s loads before its dependency %s (depmod)", m.Name, d)
					}
				}
			}
		})
	}
}
