package bls

import (
	"bytes"
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// damage functions for the files on the ESP.
var damages = []struct {
	name string
	why  string
	do   func(t *testing.T, p string)
}{
	{"bytes flipped", WhyMismatch, func(t *testing.T, p string) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}},
	{"truncated", WhyMismatch, func(t *testing.T, p string) {
		if err := os.Truncate(p, 3); err != nil {
			t.Fatal(err)
		}
	}},
	{"file removed", WhyMissing, func(t *testing.T, p string) {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}},
	{"directory removed", WhyMissing, func(t *testing.T, p string) {
		if err := os.RemoveAll(filepath.Dir(p)); err != nil {
			t.Fatal(err)
		}
	}},
}

func (f *fixture) heal(txs ...TxInfo) HealReport {
	f.t.Helper()
	r, err := Heal(HealConfig{ESP: f.esp, Default: f.cfg.Default}, txs)
	if err != nil {
		f.t.Fatalf("Heal: %v", err)
	}
	return r
}

func TestHealRepairsDamagedFiles(t *testing.T) {
	for _, kind := range []struct{ dir, file, content string }{
		{KernelsDir, kernelFile, "kernel A"},
		{InitrdsDir, initrdFile, "initrd for 2"},
	} {
		for _, d := range damages {
			t.Run(path.Base(kind.dir)+"/"+d.name, func(t *testing.T) {
				f := newFixture(t)
				f.cfg.Default = 2
				t1, t2 := good(f.tx(1, "kernel B")), good(f.tx(2, "kernel A"))
				f.sync(t1, t2)
				rel := path.Join(kind.dir, sha(kind.content), kind.file)
				d.do(t, filepath.Join(f.esp, rel))

				r := f.heal(t1, t2)
				if got := f.read(rel); got != kind.content {
					t.Fatalf("%s = %q after Heal, want %q", rel, got, kind.content)
				}
				want := []Repair{{TxID: 2, Path: rel, Why: d.why}}
				if !slices.EqualFunc(r.Repairs, want, func(a, b Repair) bool {
					return a.TxID == b.TxID && a.Path == b.Path && a.Why == b.Why && a.Err == nil
				}) {
					t.Fatalf("repairs = %+v, want %+v", r.Repairs, want)
				}
				if msg := r.Repairs[0].String(); msg != "repaired ESP file "+rel+" (tx 2): "+d.why {
					t.Fatalf("message %q", msg)
				}
				// Everything the entries name was checked, nothing else copied.
				if len(r.Checked) != 4 {
					t.Fatalf("checked %q, want the 2 kernels and 2 initrds", r.Checked)
				}
				// A second pass finds nothing to do.
				if r := f.heal(t1, t2); len(r.Repairs) != 0 {
					t.Fatalf("second Heal repaired %+v", r.Repairs)
				}
			})
		}
	}
}

func TestHealUnrepairable(t *testing.T) {
	f := newFixture(t)
	t1 := good(f.tx(1, "kernel A"))
	f.cfg.Default = 1
	f.sync(t1)
	rel := path.Join(KernelsDir, sha("kernel A"), kernelFile)
	f.write(rel, "kernel X")
	// The tx's kernel is gone from the store (and no other tx has it).
	if err := os.Remove(t1.KernelPath); err != nil {
		t.Fatal(err)
	}
	r := f.heal(t1)
	if len(r.Repairs) != 1 || !errors.Is(r.Repairs[0].Err, ErrUnrepairable) || r.Repairs[0].Path != rel || r.Repairs[0].TxID != 1 {
		t.Fatalf("repairs = %+v, want one unrepairable", r.Repairs)
	}
	if msg := r.Repairs[0].String(); !strings.Contains(msg, "not repaired") || !strings.Contains(msg, t1.KernelPath) {
		t.Fatalf("message %q", msg)
	}
	if got := f.read(rel); got != "kernel X" {
		t.Fatalf("unrepairable file changed to %q", got)
	}
	// A source with other content is never copied under the digest's name.
	if err := os.WriteFile(t1.KernelPath, []byte("kernel Z"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := f.heal(t1); len(r.Repairs) != 1 || !errors.Is(r.Repairs[0].Err, ErrUnrepairable) || f.read(rel) != "kernel X" {
		t.Fatalf("repairs = %+v; file %q", r.Repairs, f.read(rel))
	}
}

func TestHealFromAnotherTx(t *testing.T) {
	// tx 1's own kernel is gone from the store, but tx 2 has the same
	// content: that copy repairs the shared file.
	f := newFixture(t)
	t1, t2 := good(f.tx(1, "kernel A")), f.tx(2, "kernel A")
	f.sync(t1, t2)
	rel := path.Join(KernelsDir, sha("kernel A"), kernelFile)
	f.write(rel, "damaged!")
	os.Remove(t1.KernelPath)
	r := f.heal(t1, t2)
	if len(r.Repairs) != 1 || r.Repairs[0].Err != nil || f.read(rel) != "kernel A" {
		t.Fatalf("repairs = %+v, file %q", r.Repairs, f.read(rel))
	}
}

func TestHealLeavesForeignAlone(t *testing.T) {
	f := newFixture(t)
	t1 := good(f.tx(1, "kernel A"))
	f.sync(t1)
	// Not ours: a foreign entry naming a damaged txboot-looking file, a
	// symlink where a kernel directory belongs.
	foreign := path.Join(KernelsDir, sha("other"), kernelFile)
	f.write(foreign, "whatever")
	f.write("loader/entries/debian.conf", "title Debian\nlinux /"+foreign+"\n")
	outside := t.TempDir()
	rel := path.Join(KernelsDir, sha("kernel A"))
	if err := os.RemoveAll(filepath.Join(f.esp, rel)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(f.esp, rel)); err != nil {
		t.Fatal(err)
	}
	r := f.heal(t1)
	if f.read(foreign) != "whatever" {
		t.Fatal("foreign file changed")
	}
	if des, _ := os.ReadDir(outside); len(des) != 0 {
		t.Fatalf("wrote through a symlink: %v", des)
	}
	if len(r.Repairs) != 1 || !errors.Is(r.Repairs[0].Err, ErrNotDir) {
		t.Fatalf("repairs = %+v, want the symlinked directory reported", r.Repairs)
	}
}

func TestSyncReportsRepairs(t *testing.T) {
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Default = 1
			t1 := good(f.tx(1, "kernel A"))
			f.sync(t1)
			rel := path.Join(KernelsDir, sha("kernel A"), kernelFile)
			d.do(t, filepath.Join(f.esp, rel))
			r := f.sync(t1)
			if f.read(rel) != "kernel A" {
				t.Fatal("not repaired")
			}
			if len(r.Repaired) != 1 || r.Repaired[0].Path != rel || r.Repaired[0].TxID != 1 || r.Repaired[0].Why != d.why {
				t.Fatalf("repaired = %+v", r.Repaired)
			}
		})
	}
}

// entryFiles returns the linux and initrd paths of tx id's entry.
func (f *fixture) entryFiles(id uint64) (linux, initrd string) {
	f.t.Helper()
	es, err := List(f.esp, "")
	if err != nil {
		f.t.Fatal(err)
	}
	for _, e := range es {
		if e.TxID == id && e.Entry != nil {
			return strings.TrimPrefix(e.Entry.Linux, "/"), strings.TrimPrefix(e.Entry.Initrd[0], "/")
		}
	}
	f.t.Fatalf("no entry for tx %d", id)
	return "", ""
}

func TestSyncFallbackOwnCopy(t *testing.T) {
	f := newFixture(t)
	f.cfg.Default = 3
	// Same kernel and initrd content for every tx (the common case: a
	// /usr update that keeps the kernel).
	mk := func(id uint64) TxInfo {
		t := good(f.tx(id, "kernel A"))
		t.InitrdPath = f.hostFile("initrd-same-"+string(rune('0'+id)), "initrd same")
		return t
	}
	t1, t2, t3 := mk(1), mk(2), mk(3)
	r := f.sync(t1, t2, t3)
	kA, iA := path.Join(KernelsDir, sha("kernel A"), kernelFile), path.Join(InitrdsDir, sha("initrd same"), initrdFile)
	kF, iF := path.Join(KernelsDir, sha("kernel A")+FallbackSuffix, kernelFile), path.Join(InitrdsDir, sha("initrd same")+FallbackSuffix, initrdFile)
	if l, i := f.entryFiles(3); l != kA || i != iA {
		t.Fatalf("default's entry names %s %s", l, i)
	}
	// tx 2, the newest good tx after the default, has its own files.
	if l, i := f.entryFiles(2); l != kF || i != iF {
		t.Fatalf("fallback's entry names %s %s, want %s %s", l, i, kF, iF)
	}
	// Older ones share the default's.
	if l, _ := f.entryFiles(1); l != kA {
		t.Fatalf("tx 1's entry names %s", l)
	}
	if f.read(kF) != "kernel A" || f.read(iF) != "initrd same" || len(r.Shared) != 0 {
		t.Fatalf("fallback copies wrong, or shared %q", r.Shared)
	}
	// Damage the default's kernel: the fallback's file is another file.
	f.write(kA, "kernel X")
	if f.read(kF) != "kernel A" {
		t.Fatal("the fallback shares the default's file")
	}
	hr := f.heal(t1, t2, t3)
	if len(hr.Repairs) != 1 || hr.Repairs[0].Path != kA || hr.Repairs[0].TxID != 3 {
		t.Fatalf("repairs %+v", hr.Repairs)
	}

	// Rollback to tx 2: tx 1 is the fallback now; tx 2's copy goes.
	f.cfg.Default = 2
	f.sync(t1, t2, t3)
	if l, _ := f.entryFiles(2); l != kA {
		t.Fatalf("new default names %s", l)
	}
	if l, _ := f.entryFiles(3); l != kF {
		t.Fatalf("new fallback (tx 3, newest good) names %s", l)
	}
	// A default with another kernel: nothing shared, no -fallback copies left.
	t4 := good(f.tx(4, "kernel B"))
	f.cfg.Default = 4
	f.sync(t1, t2, t3, t4)
	if l, _ := f.entryFiles(3); l != kA {
		t.Fatalf("fallback with its own content names %s", l)
	}
	for _, d := range []string{KernelsDir, InitrdsDir} {
		for _, n := range f.dirNames(d) {
			if strings.HasSuffix(n, FallbackSuffix) {
				t.Fatalf("%s/%s left behind", d, n)
			}
		}
	}
}

func TestSyncFallbackSharesWhenFull(t *testing.T) {
	f := newFixture(t)
	big := strings.Repeat("K", 4000)
	t1 := good(f.tx(1, big))
	f.sync(t1)
	f.limitESP(1000) // room for entries, not for a second kernel
	f.cfg.Default = 2
	t2 := good(f.tx(2, big))
	r, err := f.syncWithin(t1, t2)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	kA := path.Join(KernelsDir, sha(big), kernelFile)
	if l, _ := f.entryFiles(1); l != kA {
		t.Fatalf("fallback names %s, want the shared %s", l, kA)
	}
	if len(r.Shared) != 1 || r.Shared[0].TxID != 1 || r.Shared[0].Path != kA || !errors.Is(r.Shared[0].Err, ErrNoSpace) {
		t.Fatalf("shared = %+v", r.Shared)
	}
	// Heal says so too (status shows it).
	if hr := f.heal(t1, t2); len(hr.Shared) != 1 || hr.Shared[0].Path != kA {
		t.Fatalf("heal shared = %+v", hr.Shared)
	}
}

func TestSyncRewritesGarbageLoaderConf(t *testing.T) {
	for _, c := range []struct {
		name, conf string
		keep       []string // lines that must survive
	}{
		{"NUL bytes", "timeout 4\n\x00\x00\x00\x00editor no\n", []string{"timeout 4"}},
		{"invalid UTF-8", "timeout 4\n\xff\xfe\xfd garbage\n", []string{"timeout 4"}},
		{"binary line", "console-mode keep\n\x01\x02\x1b[0m zz\n", []string{"console-mode keep"}},
		{"junk key", "timeout 3\n$%^&*( 7\n", []string{"timeout 3"}},
		{"overlong line", "timeout 2\n" + strings.Repeat("x", MaxLineLen+1) + "\n", []string{"timeout 2"}},
		{"too large", strings.Repeat("timeout 1\n", maxConfSize/10+1), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.write(LoaderConf, c.conf)
			t1 := good(f.tx(1, "kernel A"))
			r := f.sync(t1)
			got := f.read(LoaderConf)
			if err := checkLoaderConf([]byte(got)); err != nil {
				t.Fatalf("loader.conf still does not parse: %v\n%q", err, got)
			}
			if LoaderDefault([]byte(got)) != "txboot-[1-9]*" {
				t.Fatalf("loader.conf = %q", got)
			}
			for _, l := range c.keep {
				if !strings.Contains(got, l+"\n") {
					t.Fatalf("lost %q: %q", l, got)
				}
			}
			// The old content is kept beside it, byte for byte.
			if old := f.read(LoaderConf + DamagedSuffix); old != c.conf {
				t.Fatalf("backup holds %d bytes, want the %d of the old loader.conf", len(old), len(c.conf))
			}
			if !r.LoaderConf || len(r.Repaired) != 1 || r.Repaired[0].Path != LoaderConf {
				t.Fatalf("report: loader.conf %v, repaired %+v", r.LoaderConf, r.Repaired)
			}
		})
	}
	t.Run("valid one is kept byte for byte", func(t *testing.T) {
		f := newFixture(t)
		conf := "# mine\r\ntimeout 4\n\n  editor\tno\nsome-future-key 1\ndefault txboot-[1-9]*\n"
		f.write(LoaderConf, conf)
		f.sync(good(f.tx(1, "kernel A")))
		if got := f.read(LoaderConf); got != conf {
			t.Fatalf("loader.conf = %q", got)
		}
		if _, err := os.Stat(filepath.Join(f.esp, LoaderConf+DamagedSuffix)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("backup of a valid loader.conf: %v", err)
		}
	})
}

func TestSyncRewritesDamagedEntries(t *testing.T) {
	for _, c := range []struct{ name, content string }{
		{"truncated", ""}, // replaced below by half the entry
		{"empty", "-"},
		{"garbage", "\x00\xff\xfe binary"},
		{"no linux", "title x\noptions root=UUID=abcd\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Default = 1
			t1 := good(f.tx(1, "kernel A"))
			f.sync(t1)
			rel := "loader/entries/txboot-1.conf"
			want := f.read(rel)
			switch c.content {
			case "":
				f.write(rel, want[:len(want)/2])
			case "-":
				f.write(rel, "")
			default:
				f.write(rel, c.content)
			}
			foreign := "loader/entries/debian.conf"
			f.write(foreign, "title Debian\nlinux /vmlin") // truncated, not ours
			f.sync(t1)
			if got := f.read(rel); got != want {
				t.Fatalf("entry = %q, want %q", got, want)
			}
			if _, err := Parse([]byte(f.read(rel))); err != nil {
				t.Fatal(err)
			}
			if got := f.read(foreign); got != "title Debian\nlinux /vmlin" {
				t.Fatalf("foreign entry changed: %q", got)
			}
		})
	}
}

func TestCheckLoaderConf(t *testing.T) {
	for _, c := range []struct {
		conf string
		ok   bool
	}{
		{"", true},
		{"timeout 3\n", true},
		{"# comment \xff\n", false},
		{"timeout\n", true},
		{"Timeout 3\n", false},
		{"default \"txboot-[1-9]*\"\r\n", true},
		{"\ttimeout 3\n", true},
		{"timeout 3\x00", false},
		{"time\x7fout 3\n", false},
	} {
		if err := checkLoaderConf([]byte(c.conf)); (err == nil) != c.ok {
			t.Errorf("checkLoaderConf(%q) = %v, want ok %v", c.conf, err, c.ok)
		}
	}
	if !bytes.Equal(cleanLoaderConf([]byte("a 1\n\x00x\nb 2")), []byte("a 1\nb 2\n")) {
		t.Errorf("cleanLoaderConf = %q", cleanLoaderConf([]byte("a 1\n\x00x\nb 2")))
	}
}
