package bls

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

type fixture struct {
	t    *testing.T
	esp  string
	host string
	cfg  SyncConfig
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, esp: t.TempDir(), host: t.TempDir()}
	f.cfg = SyncConfig{ESP: f.esp, Root: "UUID=abcd", OSName: "Debian", Options: "quiet"}
	return f
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// hostFile writes content to a host file named after its content, so equal
// contents share a path unless name is given.
func (f *fixture) hostFile(name, content string) string {
	p := filepath.Join(f.host, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// tx is a trial tx with its own initrd and the kernel with content kernel.
func (f *fixture) tx(id uint64, kernel string) TxInfo {
	return TxInfo{
		ID:         id,
		Digest:     "sha256:" + sha(fmt.Sprint("tree", id)),
		Kernel:     "6.1.0-test",
		KernelPath: f.hostFile(fmt.Sprintf("vmlinuz-%d", id), kernel),
		InitrdPath: f.hostFile(fmt.Sprintf("initrd-%d", id), fmt.Sprint("initrd for ", id)),
		TriesLeft:  3,
	}
}

func good(t TxInfo) TxInfo { t.Good = true; return t }
func bad(t TxInfo) TxInfo  { t.Bad = true; return t }

func (f *fixture) sync(txs ...TxInfo) Report {
	f.t.Helper()
	r, err := Sync(f.cfg, txs)
	if err != nil {
		f.t.Fatalf("Sync: %v", err)
	}
	return r
}

func (f *fixture) entries() []string {
	f.t.Helper()
	des, err := os.ReadDir(filepath.Join(f.esp, EntriesDir))
	if err != nil {
		f.t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func (f *fixture) wantEntries(want ...string) {
	f.t.Helper()
	slices.Sort(want)
	if got := f.entries(); !reflect.DeepEqual(got, want) {
		f.t.Fatalf("entries = %q, want %q", got, want)
	}
}

func (f *fixture) dirNames(rel string) []string {
	f.t.Helper()
	des, err := os.ReadDir(filepath.Join(f.esp, rel))
	if err != nil {
		f.t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func (f *fixture) rename(from, to string) {
	f.t.Helper()
	dir := filepath.Join(f.esp, EntriesDir)
	if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) write(rel, content string) {
	f.t.Helper()
	p := filepath.Join(f.esp, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) read(rel string) string {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.esp, rel))
	if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

func TestSyncCreate(t *testing.T) {
	f := newFixture(t)
	f.cfg.Default = 1
	t1, t2, t3 := good(f.tx(1, "kernel A")), f.tx(2, "kernel A"), f.tx(3, "kernel B")
	t3.TriesLeft = 2
	r := f.sync(t1, t2, t3)

	f.wantEntries("txboot-1.conf", "txboot-2+3.conf", "txboot-3+2.conf")
	want := string(readTestdata(t, "tx1.golden"))
	want = strings.NewReplacer("KERNELHEX", sha("kernel A"), "INITRDHEX", sha("initrd for 1"), "DIGEST", sha("tree1")).Replace(want)
	if got := f.read("loader/entries/txboot-1.conf"); got != want {
		t.Fatalf("entry =\n%s\nwant\n%s", got, want)
	}
	// Two kernels (A shared by tx 1 and 2), three initrds.
	if got := f.dirNames(KernelsDir); !reflect.DeepEqual(got, sortedStrings(sha("kernel A"), sha("kernel B"))) {
		t.Fatalf("kernels = %q", got)
	}
	if len(f.dirNames(InitrdsDir)) != 3 {
		t.Fatalf("initrds = %q", f.dirNames(InitrdsDir))
	}
	if len(r.Copied) != 5 || r.BytesCopied != int64(len("kernel A")+len("kernel B")+3*len("initrd for 1")) {
		t.Fatalf("copied %q, %d bytes", r.Copied, r.BytesCopied)
	}
	if got := f.read(LoaderConf); got != "default txboot-[1-9]*\n" {
		t.Fatalf("loader.conf = %q", got)
	}
	if len(r.Written) != 3 || !r.LoaderConf || r.DefaultPattern != "txboot-[1-9]*" {
		t.Fatalf("report = %+v", r)
	}
	if got := f.sdbootPick(); got != "txboot-1.conf" {
		t.Fatalf("systemd-boot would boot %s", got)
	}

	// Second run: nothing to do, nothing touched.
	before := mtimes(t, f.esp)
	r = f.sync(t1, t2, t3)
	if r.Changed() || len(r.Kept) != 3 {
		t.Fatalf("second sync changed things: %+v", r)
	}
	if after := mtimes(t, f.esp); !reflect.DeepEqual(before, after) {
		t.Fatalf("second sync touched files:\n%v\n%v", before, after)
	}
}

func sortedStrings(s ...string) []string {
	slices.Sort(s)
	return s
}

// mtimes maps every path under root to its modification time.
func mtimes(t *testing.T, root string) map[string]time.Time {
	t.Helper()
	m := map[string]time.Time{}
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		m[p] = info.ModTime()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSyncBlessOnGood(t *testing.T) {
	f := newFixture(t)
	t1 := f.tx(1, "k")
	f.sync(t1)
	f.wantEntries("txboot-1+3.conf")
	content := f.read("loader/entries/txboot-1+3.conf")

	r := f.sync(good(t1))
	f.wantEntries("txboot-1.conf")
	if want := []Rename{{"loader/entries/txboot-1+3.conf", "loader/entries/txboot-1.conf"}}; !reflect.DeepEqual(r.Renamed, want) {
		t.Fatalf("renamed %v", r.Renamed)
	}
	// Only the sort-key changes: good txs sort after the default, before
	// those on trial.
	want := strings.Replace(content, "sort-key txboot-3-trial\n", "sort-key txboot-2-good\n", 1)
	if got := f.read("loader/entries/txboot-1.conf"); got != want || want == content {
		t.Fatalf("blessed entry =\n%s\nwant\n%s", got, want)
	}
}

func TestSyncKeepsFirmwareCounters(t *testing.T) {
	f := newFixture(t)
	t1 := f.tx(1, "k")
	f.sync(t1)
	// systemd-boot tried it once.
	f.rename("txboot-1+3.conf", "txboot-1+2-1.conf")
	for _, left := range []int{3, 1, 0} {
		t1.TriesLeft = left // whatever the store thinks
		r := f.sync(t1)
		f.wantEntries("txboot-1+2-1.conf")
		if r.Changed() {
			t.Fatalf("TriesLeft %d: %+v", left, r)
		}
	}
	// Options change: content rewritten in place, counters still kept.
	f.cfg.Options = "quiet splash"
	r := f.sync(t1)
	f.wantEntries("txboot-1+2-1.conf")
	if !reflect.DeepEqual(r.Written, []string{"loader/entries/txboot-1+2-1.conf"}) || len(r.Renamed) != 0 {
		t.Fatalf("report %+v", r)
	}
	if !strings.Contains(f.read("loader/entries/txboot-1+2-1.conf"), " quiet splash\n") {
		t.Fatal("options not rewritten")
	}
	// Bootloader ran out of tries before the store noticed: still kept.
	f.rename("txboot-1+2-1.conf", "txboot-1+0-3.conf")
	f.sync(t1)
	f.wantEntries("txboot-1+0-3.conf")
}

func TestSyncTriesDefault(t *testing.T) {
	f := newFixture(t)
	f.cfg.Tries = 4
	t1, t2 := f.tx(1, "k"), f.tx(2, "k")
	t1.TriesLeft, t2.TriesLeft = 0, 2
	f.sync(t1, t2)
	f.wantEntries("txboot-1+4.conf", "txboot-2+2.conf")
}

func TestSyncBad(t *testing.T) {
	tests := []struct {
		name     string
		existing string // entry file present before the sync, "" for none
		want     string
	}{
		{"fresh", "", "txboot-1+0.conf"},
		{"on trial", "txboot-1+3.conf", "txboot-1+0.conf"},
		{"tried", "txboot-1+1-2.conf", "txboot-1+0-2.conf"},
		{"out of tries", "txboot-1+0-3.conf", "txboot-1+0-3.conf"},
		{"was good", "txboot-1.conf", "txboot-1+0.conf"},
		{"widths kept", "txboot-1+02-01.conf", "txboot-1+00-01.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			t1, t2 := bad(f.tx(1, "k")), good(f.tx(2, "k"))
			if tt.existing != "" {
				f.sync(t2)
				f.write("loader/entries/"+tt.existing, f.read("loader/entries/txboot-2.conf"))
			}
			f.sync(t1, t2)
			f.wantEntries(tt.want, "txboot-2.conf")
			n, _ := ParseName(tt.want)
			if !n.Bad() {
				t.Fatalf("%s is not bad", tt.want)
			}
			if !strings.Contains(f.read("loader/entries/"+tt.want), "txboot.tx=1 ") {
				t.Fatal("content not rewritten for tx 1")
			}
		})
	}
}

func TestSyncPrune(t *testing.T) {
	f := newFixture(t)
	var txs []TxInfo
	for id := uint64(1); id <= 9; id++ {
		txs = append(txs, good(f.tx(id, fmt.Sprint("kernel ", id))))
	}
	f.cfg.Default = 2
	txs[0].Pinned = true // tx 1
	f.sync(txs...)
	f.wantEntries("txboot-1.conf", "txboot-2.conf", "txboot-5.conf", "txboot-6.conf", "txboot-7.conf", "txboot-8.conf", "txboot-9.conf")

	// Unpin tx 1 and move the default: both go; their kernels and initrds too.
	txs[0].Pinned = false
	f.cfg.Default = 9
	r := f.sync(txs...)
	f.wantEntries("txboot-5.conf", "txboot-6.conf", "txboot-7.conf", "txboot-8.conf", "txboot-9.conf")
	if want := []string{"loader/entries/txboot-1.conf", "loader/entries/txboot-2.conf"}; !reflect.DeepEqual(r.Removed, want) {
		t.Fatalf("removed %q", r.Removed)
	}
	if len(f.dirNames(KernelsDir)) != 5 || len(f.dirNames(InitrdsDir)) != 5 || len(r.RemovedFiles) != 4 {
		t.Fatalf("blobs: %q %q removed %q", f.dirNames(KernelsDir), f.dirNames(InitrdsDir), r.RemovedFiles)
	}
	for _, hx := range f.dirNames(KernelsDir) {
		if hx == sha("kernel 1") || hx == sha("kernel 2") {
			t.Fatalf("kernel of a pruned tx kept: %s", hx)
		}
	}
}

func TestSyncKeepsNewestGood(t *testing.T) {
	f := newFixture(t)
	f.cfg.Keep = 2
	t1, t2, t3, t4 := good(f.tx(1, "k")), good(f.tx(2, "k")), bad(f.tx(3, "k")), f.tx(4, "k")
	f.sync(t1, t2, t3, t4)
	// bootstate.Keep: bad tx 3 does not take one of the 2 newest slots
	// while good tx 2 is there.
	f.wantEntries("txboot-2.conf", "txboot-4+3.conf")
}

func TestSyncSharedKernels(t *testing.T) {
	f := newFixture(t)
	// tx 1 and 2 boot the same kernel content from different host paths.
	t1, t2, t3 := good(f.tx(1, "kernel A")), good(f.tx(2, "kernel A")), good(f.tx(3, "kernel B"))
	r := f.sync(t1, t2, t3)
	kernels := 0
	for _, c := range r.Copied {
		if strings.HasPrefix(c, KernelsDir+"/") {
			kernels++
		}
	}
	if kernels != 2 {
		t.Fatalf("copied %q", r.Copied)
	}
	a := filepath.Join(KernelsDir, sha("kernel A"))

	f.cfg.Keep = 2 // drops tx 1; tx 2 still needs kernel A
	f.sync(t1, t2, t3)
	if _, err := os.Stat(filepath.Join(f.esp, a, "vmlinuz")); err != nil {
		t.Fatalf("kernel A removed while tx 2 uses it: %v", err)
	}
	f.cfg.Keep = 1 // drops tx 2: kernel A is unreferenced now
	r = f.sync(t1, t2, t3)
	if _, err := os.Stat(filepath.Join(f.esp, a)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("kernel A kept after its last entry went: %v", err)
	}
	if !slices.Contains(r.RemovedFiles, filepath.ToSlash(a)) {
		t.Fatalf("removed files %q", r.RemovedFiles)
	}
}

func TestSyncRepairsESPCopy(t *testing.T) {
	f := newFixture(t)
	t1 := good(f.tx(1, "kernel A"))
	f.sync(t1)
	k := filepath.Join(KernelsDir, sha("kernel A"), "vmlinuz")
	f.write(k, "kernel X") // same size, wrong content
	r := f.sync(t1)
	if f.read(k) != "kernel A" || !reflect.DeepEqual(r.Copied, []string{filepath.ToSlash(k)}) {
		t.Fatalf("damaged kernel not replaced: %+v", r)
	}
}

func TestSyncSourceChanges(t *testing.T) {
	// The host file is hashed, then copied; a change in between must not
	// leave wrong content under the digest's name.
	esp := t.TempDir()
	src := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(src, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	d, err := openESP(esp)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := copyVerified(in, d, "vmlinuz", sha("old")); !errors.Is(err, ErrSourceChanged) {
		t.Fatalf("copyVerified = %v", err)
	}
	if des, _ := os.ReadDir(esp); len(des) != 0 {
		t.Fatalf("left files behind: %v", des)
	}
}

func TestSyncForeignEntriesUntouched(t *testing.T) {
	f := newFixture(t)
	t1 := good(f.tx(1, "kernel A"))
	f.sync(t1)
	hexA := sha("kernel A")
	foreign := map[string]string{
		"loader/entries/debian-6.1.conf":        "title Debian\nlinux /vmlinuz\n",
		"loader/entries/txboot-rescue.conf":     "title rescue\nlinux /TXBOOT/Kernels/" + hexA + "/vmlinuz\n",
		"loader/entries/txboot-012.conf":        "garbage",
		"loader/entries/other-txboot-5+3.conf":  "linux /x\n",
		"loader/entries/txboot-notes.txt":       "not an entry",
		"txboot/kernels/not-a-digest/vmlinuz":   "x",
		"loader/entries/.hidden-by-someone.tmp": "x",
	}
	for p, c := range foreign {
		f.write(p, c)
	}
	// tx 1 is replaced by tx 2 with another kernel; kernel A stays because
	// txboot-rescue.conf (not ours) names it.
	r := f.sync(good(f.tx(2, "kernel B")))
	for p, c := range foreign {
		if got := f.read(p); got != c {
			t.Fatalf("%s changed to %q", p, got)
		}
	}
	if _, err := os.Stat(filepath.Join(f.esp, KernelsDir, hexA, "vmlinuz")); err != nil {
		t.Fatalf("kernel referenced by a foreign entry removed: %v", err)
	}
	want := []string{"loader/entries/txboot-012.conf", "loader/entries/txboot-notes.txt", "loader/entries/txboot-rescue.conf"}
	if !reflect.DeepEqual(r.Ignored, want) {
		t.Fatalf("ignored %q, want %q", r.Ignored, want)
	}
	if !reflect.DeepEqual(r.Removed, []string{"loader/entries/txboot-1.conf"}) {
		t.Fatalf("removed %q", r.Removed)
	}
}

func TestSyncTwins(t *testing.T) {
	tests := []struct {
		name  string
		tx    func(TxInfo) TxInfo
		files []string
		want  string
	}{
		{"trial keeps counted", func(t TxInfo) TxInfo { return t }, []string{"txboot-1.conf", "txboot-1+1-2.conf"}, "txboot-1+1-2.conf"},
		{"good keeps plain", good, []string{"txboot-1.conf", "txboot-1+1-2.conf"}, "txboot-1.conf"},
		{"bad keeps counted", bad, []string{"txboot-1.conf", "txboot-1+1-2.conf"}, "txboot-1+0-2.conf"},
		{"fewest tries left wins", func(t TxInfo) TxInfo { return t }, []string{"txboot-1+3.conf", "txboot-1+1-2.conf", "txboot-1+2-1.conf"}, "txboot-1+1-2.conf"},
		{"good blesses one counted", good, []string{"txboot-1+3.conf", "txboot-1+2-1.conf"}, "txboot-1.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			for _, n := range tt.files {
				f.write("loader/entries/"+n, "linux /old\n")
			}
			r := f.sync(tt.tx(f.tx(1, "k")))
			f.wantEntries(tt.want)
			if len(r.Removed) != len(tt.files)-1 {
				t.Fatalf("removed %q", r.Removed)
			}
			if !strings.Contains(f.read("loader/entries/"+tt.want), "txboot.tx=1 ") {
				t.Fatal("survivor not rewritten")
			}
		})
	}
}

func TestSyncLoaderConfPreserved(t *testing.T) {
	f := newFixture(t)
	f.write(LoaderConf, string(readTestdata(t, "loader.conf")))
	f.cfg.Default = 7
	f.sync(good(f.tx(7, "k")))
	if got, want := f.read(LoaderConf), string(readTestdata(t, "loader.golden")); got != want {
		t.Fatalf("loader.conf =\n%s\nwant\n%s", got, want)
	}
	if r := f.sync(good(f.tx(7, "k"))); r.LoaderConf {
		t.Fatal("loader.conf rewritten although unchanged")
	}
	// Without a default tx the pattern is the same; no entry sorts first.
	f.cfg.Default = 0
	f.write(LoaderConf, "timeout 1\n")
	f.sync(good(f.tx(7, "k")))
	if got := f.read(LoaderConf); got != "timeout 1\ndefault txboot-[1-9]*\n" {
		t.Fatalf("loader.conf = %q", got)
	}
	if !strings.Contains(f.read("loader/entries/txboot-7.conf"), "sort-key txboot-2-good\n") {
		t.Fatal("tx 7 still sorted as the default")
	}
}

func TestSyncRemovesTempDebris(t *testing.T) {
	f := newFixture(t)
	t1 := good(f.tx(1, "k"))
	f.sync(t1)
	hx := sha("k")
	debris := []string{
		"loader/entries/.txboot-1.conf.0123456789abcdef.tmp",
		"loader/.loader.conf.0123456789abcdef.tmp",
		KernelsDir + "/" + hx + "/.vmlinuz.0123456789abcdef.tmp",
	}
	for _, d := range debris {
		f.write(d, "half written")
	}
	r := f.sync(t1)
	for _, d := range debris {
		if _, err := os.Stat(filepath.Join(f.esp, d)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s not removed: %v", d, err)
		}
	}
	if len(r.RemovedFiles) != 3 {
		t.Fatalf("removed files %q", r.RemovedFiles)
	}
}

func TestSyncErrors(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*SyncConfig, []TxInfo) []TxInfo
		err  error
	}{
		{"no ESP", func(c *SyncConfig, t []TxInfo) []TxInfo { c.ESP = ""; return t }, ErrConfig},
		{"missing ESP", func(c *SyncConfig, t []TxInfo) []TxInfo { c.ESP += "/nope"; return t }, os.ErrNotExist},
		{"plus in prefix", func(c *SyncConfig, t []TxInfo) []TxInfo { c.EntryPrefix = "tx+"; return t }, ErrConfig},
		{"slash in prefix", func(c *SyncConfig, t []TxInfo) []TxInfo { c.EntryPrefix = "a/b"; return t }, ErrConfig},
		{"no root", func(c *SyncConfig, t []TxInfo) []TxInfo { c.Root = ""; return t }, ErrConfig},
		{"newline in options", func(c *SyncConfig, t []TxInfo) []TxInfo { c.Options = "a\nlinux /x"; return t }, ErrConfig},
		{"unknown default", func(c *SyncConfig, t []TxInfo) []TxInfo { c.Default = 42; return t }, ErrUnknownDefault},
		{"duplicate ID", func(c *SyncConfig, t []TxInfo) []TxInfo { return append(t, t[0]) }, ErrTx},
		{"ID 0", func(c *SyncConfig, t []TxInfo) []TxInfo { t[0].ID = 0; return t }, ErrTx},
		{"good and bad", func(c *SyncConfig, t []TxInfo) []TxInfo { t[0].Good, t[0].Bad = true, true; return t }, ErrTx},
		{"bad digest", func(c *SyncConfig, t []TxInfo) []TxInfo { t[0].Digest = "sha256:xyz"; return t }, ErrTx},
		{"no initrd", func(c *SyncConfig, t []TxInfo) []TxInfo { t[0].InitrdPath = ""; return t }, ErrTx},
		{"missing kernel", func(c *SyncConfig, t []TxInfo) []TxInfo { t[0].KernelPath += ".gone"; return t }, os.ErrNotExist},
		{"title newline", func(c *SyncConfig, t []TxInfo) []TxInfo { t[0].Title = "a\nb"; return t }, ErrTx},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			txs := tt.mod(&f.cfg, []TxInfo{f.tx(1, "k")})
			if _, err := Sync(f.cfg, txs); !errors.Is(err, tt.err) {
				t.Fatalf("Sync error = %v, want %v", err, tt.err)
			}
		})
	}
}

func TestSelectTxs(t *testing.T) {
	mk := func(id uint64, mods ...func(*TxInfo)) TxInfo {
		t := TxInfo{ID: id}
		for _, m := range mods {
			m(&t)
		}
		return t
	}
	pinned := func(t *TxInfo) { t.Pinned = true }
	isGood := func(t *TxInfo) { t.Good = true }
	tests := []struct {
		name string
		keep int
		def  uint64
		txs  []TxInfo
		want []uint64
	}{
		{"fewer than keep", 5, 0, []TxInfo{mk(2), mk(1)}, []uint64{1, 2}},
		{"newest keep", 2, 0, []TxInfo{mk(1, isGood), mk(2, isGood), mk(3, isGood), mk(4, isGood)}, []uint64{3, 4}},
		{"pinned and default", 2, 2, []TxInfo{mk(1, pinned, isGood), mk(2, isGood), mk(3, isGood), mk(4, isGood), mk(5, isGood)}, []uint64{1, 2, 4, 5}},
		{"newest good", 1, 0, []TxInfo{mk(1, isGood), mk(2, isGood), mk(3)}, []uint64{2, 3}},
		{"unsorted input", 2, 0, []TxInfo{mk(3, isGood), mk(9, isGood), mk(5, isGood)}, []uint64{5, 9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := selectTxs(SyncConfig{Keep: tt.keep, Default: tt.def}, tt.txs)
			if err != nil {
				t.Fatal(err)
			}
			var ids []uint64
			for _, t := range got {
				ids = append(ids, t.ID)
			}
			if !reflect.DeepEqual(ids, tt.want) {
				t.Fatalf("selected %v, want %v", ids, tt.want)
			}
		})
	}
}

func TestList(t *testing.T) {
	f := newFixture(t)
	t1, t2 := good(f.tx(1, "k")), f.tx(2, "k")
	f.sync(t1, t2)
	f.write("loader/entries/txboot-3.conf", "title broken\n")
	f.write("loader/entries/other.conf", "linux /x\n")
	got, err := List(f.esp, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("List = %+v", got)
	}
	if got[0].File != "txboot-2+3.conf" || got[0].TxID != 2 || got[0].Digest != t2.Digest || !got[0].Name.Counting || got[0].Entry == nil {
		t.Fatalf("first = %+v", got[0])
	}
	if got[1].File != "txboot-1.conf" || got[1].TxID != 1 || got[1].Name.Counting {
		t.Fatalf("second = %+v", got[1])
	}
	if got[2].File != "txboot-3.conf" || !errors.Is(got[2].Err, ErrNoLinux) || got[2].Entry != nil {
		t.Fatalf("third = %+v", got[2])
	}
	// No entries directory: empty. No ESP: error.
	if l, err := List(t.TempDir(), ""); err != nil || len(l) != 0 {
		t.Fatalf("List(empty ESP) = %v, %v", l, err)
	}
	if _, err := List(filepath.Join(f.esp, "nope"), ""); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("List(missing ESP) = %v", err)
	}
}

func TestAtomicHelpers(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFileAtomic(dir, "a.conf", []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(dir, "a.conf", []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := RenameAtomic(dir, "a.conf", "b.conf"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "b.conf")); err != nil || !bytes.Equal(b, []byte("two")) {
		t.Fatalf("b.conf = %q, %v", b, err)
	}
	if err := RemoveDurable(dir, "b.conf"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveDurable(dir, "b.conf"); err != nil {
		t.Fatalf("removing a missing file: %v", err)
	}
	if des, _ := os.ReadDir(dir); len(des) != 0 {
		t.Fatalf("left %v", des)
	}
	if err := RenameAtomic(dir, "gone", "x"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("RenameAtomic(missing) = %v", err)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "nodir"), "x", nil, 0o644); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("WriteFileAtomic(missing dir) = %v", err)
	}
	if err := WriteFileAtomic(dir, "a/b", nil, 0o644); err == nil {
		t.Fatal("WriteFileAtomic accepted a name with a slash")
	}
}

// sdbootPick models how systemd-boot picks the default entry: entries
// sorted with no tries left last, then by sort-key, machine-id, version
// descending, ID descending; the first whose ID matches loader.conf's
// `default` wins. It checks that pre-v258 IDs (with counters) and v258+ IDs
// (without) pick the same file.
func (f *fixture) sdbootPick() string {
	f.t.Helper()
	type ent struct {
		file string
		n    Name
		e    *Entry
	}
	var es []ent
	for _, file := range f.entries() {
		n, err := ParseName(file)
		if err != nil {
			continue
		}
		e, err := Parse([]byte(f.read(EntriesDir + "/" + file)))
		if err != nil {
			f.t.Fatalf("%s: %v", file, err)
		}
		es = append(es, ent{file, n, e})
	}
	slices.SortStableFunc(es, func(a, b ent) int {
		if a.n.Bad() != b.n.Bad() {
			if a.n.Bad() {
				return 1
			}
			return -1
		}
		if (a.e.SortKey == "") != (b.e.SortKey == "") {
			if a.e.SortKey == "" {
				return 1
			}
			return -1
		}
		if c := strings.Compare(a.e.SortKey, b.e.SortKey); c != 0 {
			return c
		}
		if c := strings.Compare(a.e.MachineID, b.e.MachineID); c != 0 {
			return c
		}
		if c := leadingInt(b.e.Version) - leadingInt(a.e.Version); c != 0 {
			return c
		}
		return strings.Compare(b.file, a.file)
	})
	pattern := LoaderDefault([]byte(f.read(LoaderConf)))
	pick := func(id func(ent) string) string {
		for _, e := range es {
			if globMatch(pattern, id(e)) {
				return e.file
			}
		}
		return ""
	}
	old := pick(func(e ent) string { return strings.ToLower(e.file) })
	if now := pick(func(e ent) string { return e.n.ID() }); now != old {
		f.t.Fatalf("pre-v258 systemd-boot picks %s, v258+ picks %s", old, now)
	}
	return old
}

func leadingInt(s string) int {
	n := 0
	for i := 0; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}

func TestSyncDefaultFallback(t *testing.T) {
	f := newFixture(t)
	// A foreign OS sorting before us must not be picked: the pattern is ours.
	f.write("loader/entries/debian.conf", "sort-key debian\nversion 99\nlinux /vmlinuz\n")
	f.write("loader/entries/txboot-rescue.conf", "sort-key a\nlinux /vmlinuz\n")
	t1, t2, t3, t4 := good(f.tx(1, "k")), good(f.tx(2, "k")), f.tx(3, "k"), f.tx(4, "k")
	f.cfg.Default = 3
	f.sync(t1, t2, t3, t4)
	if got := f.sdbootPick(); got != "txboot-3+3.conf" {
		t.Fatalf("default on trial: systemd-boot picks %s", got)
	}
	// systemd-boot used up tx 3's tries: it falls back to the newest good
	// tx, not to tx 4 (newer, but on trial), before the store even knows.
	f.rename("txboot-3+3.conf", "txboot-3+0-3.conf")
	if got := f.sdbootPick(); got != "txboot-2.conf" {
		t.Fatalf("default out of tries: systemd-boot picks %s", got)
	}
	// The store marks tx 3 bad and keeps it as the default: still tx 2.
	f.sync(t1, t2, bad(t3), t4)
	if got := f.sdbootPick(); got != "txboot-2.conf" {
		t.Fatalf("bad default: systemd-boot picks %s", got)
	}
	// Rollback to an older good tx.
	f.cfg.Default = 1
	f.sync(t1, t2, bad(t3), t4)
	if got := f.sdbootPick(); got != "txboot-1.conf" {
		t.Fatalf("rollback: systemd-boot picks %s", got)
	}
}
