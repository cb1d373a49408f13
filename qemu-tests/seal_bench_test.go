package qemutests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testkit"
)

// Sealed boots measured (BenchmarkSealVerify, scripts/bench-seal.sh):
// direct boots of Debian 13's cloud kernel (1 vCPU, TCG) on an ext4 with
// the verity feature whose store holds tx 1 = the Debian 13 /usr (with
// the test init) and tx 2 = tx 1 + 120,000 small files of distinct
// content. One boot seals the store in the guest (bootctl seal; the host
// cannot), then each iteration boots each tx sealed (txboot.image= pin),
// with fast verify (no pin) and with full verify, reading initagent's
// verify= phase; one more boot commits the booted /usr into an empty store
// on an ext4 with the verity feature and on one without, alternating
// (commit with fs-verity enabling against today's commit).

const (
	sealBenchFiles   = 120_000
	sealBenchPerDir  = 1000
	sealBenchBootMax = 30 * time.Minute // sealing 128k objects under TCG
	sealBenchRootMiB = 2560
	sealBenchCommits = 3
)

var (
	sealPhaseRe  = regexp.MustCompile(`txboot: booting tx (\d+) .*verify=(\d+)ms .*total=(\d+)ms`)
	sealBootInfo = regexp.MustCompile(`TXTEST bootinfo=(.*)`)
	sealFactRe   = regexp.MustCompile(`(?m)^TXTEST ([a-z0-9-]+)=(.*)$`)
)

// sealBenchHook runs in the test init of both txs; the command line says
// what to do (the same image serves every boot).
const sealBenchHook = `up() { cut -d' ' -f1 /proc/uptime; }
if grep -q 'txtest.seal=1' /proc/cmdline; then
  mount -o remount,rw /
  for id in 1 2; do
    t0=$(up); /usr/bin/bootctl seal $id 2>&1 | sed "s/^/TXTEST seal-out-$id: /"; t1=$(up)
    echo "TXTEST seal-$id=$t0 $t1"
  done
  /usr/bin/bootctl list 2>&1 | sed 's/^/TXTEST list: /'
  sync; mount -o remount,ro /
fi
if grep -q 'txtest.commitbench=1' /proc/cmdline; then
  mkdir -p /run/mv /run/mn
  mount -t ext4 /dev/vdb /run/mv || echo "TXTEST commit-mount=failed"
  mount -t ext4 /dev/vdc /run/mn || echo "TXTEST commit-mount=failed"
  for i in $(seq ` + "COMMITS" + `); do
    for fs in mv mn; do
      rm -rf /run/$fs/.txboot; sync; echo 3 >/proc/sys/vm/drop_caches
      t0=$(up); out=$(/usr/bin/bootctl --root /run/$fs commit --summary bench /usr 2>&1); rc=$?; t1=$(up)
      echo "TXTEST commit-$fs-$i=$t0 $t1 $rc"
      [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/TXTEST commit-out: /'
    done
  done
  for fs in mv mn; do
    /usr/bin/bootctl --root /run/$fs list 2>&1 | sed "s/^/TXTEST list-$fs: /"
    echo "TXTEST sealed-$fs=$(/usr/bin/bootctl --root /run/$fs --json list | tr -d ' \n' | grep -c '"sealed":true')"
  done
  umount /run/mv /run/mn
fi
`

type sealBench struct {
	img, ver, nover string // root image; empty ext4 with and without verity
	entries         [3]int // per tx id
	imageSize       [3]int64
}

// sealBenchDisk builds the root image: tx 1 the Debian 13 /usr, tx 2 with
// 120k more files; both marked good so the boots spend no tries.
func sealBenchDisk(b *testing.B) *sealBench {
	b.Helper()
	repo, err := harness.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	droot, _, err := fixture.DebianRoot(b.Context(), repo, fixture.Trixie)
	if err != nil {
		testkit.Skipf(b, "Debian 13 root: %v", err)
	}
	bins := getBins(b)
	dir := b.TempDir()
	root := filepath.Join(dir, "root")
	usr := filepath.Join(dir, "usr")
	must(b, fixture.RootSkeleton(root))
	if out, err := exec.Command("cp", "-a", filepath.Join(droot, "usr"), usr).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v %s", err, out)
	}
	os.Remove(filepath.Join(usr, "sbin", "init")) // a symlink into systemd
	hook := strings.ReplaceAll(sealBenchHook, "COMMITS", strconv.Itoa(sealBenchCommits))
	must(b, fixture.WriteTx(usr, bins, fixture.TxSpec{Marker: "debian", Hook: hook}))
	sb := &sealBench{}
	commit := func(summary string) uint64 {
		s, err := txstore.Open(root, txstore.Options{Create: true})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		tx, _, err := s.Commit(usr, txstore.CommitOptions{Summary: summary})
		if err != nil {
			b.Fatal(err)
		}
		if fi, err := os.Stat(s.ImagePath(tx.ID)); err == nil {
			sb.imageSize[tx.ID] = fi.Size()
		} else {
			b.Errorf("tx %d (%s): no image after commit: %v", tx.ID, summary, err)
		}
		m, err := s.Manifest(tx)
		if err != nil {
			b.Fatal(err)
		}
		sb.entries[tx.ID] = len(m.Entries)
		return tx.ID
	}
	start := time.Now()
	commit("debian")
	big := filepath.Join(usr, "share", "txtest-big")
	for i := range sealBenchFiles {
		d := filepath.Join(big, fmt.Sprintf("d%03d", i/sealBenchPerDir))
		if i%sealBenchPerDir == 0 {
			must(b, os.MkdirAll(d, 0o755))
		}
		must(b, os.WriteFile(filepath.Join(d, fmt.Sprintf("f%06d", i)), fmt.Appendf(nil, "txtest big tree file %d\n", i), 0o644))
	}
	commit("debian + 120k files")
	os.RemoveAll(usr)
	for _, id := range []string{"1", "2"} {
		if out, err := exec.Command(bins.Bootctl, "--root", root, "mark-good", id).CombinedOutput(); err != nil {
			b.Fatalf("mark-good %s: %v %s", id, err, out)
		}
	}
	b.Logf("committed tx 1 (%d entries, image %d bytes) and tx 2 (%d entries, image %d bytes) in %s",
		sb.entries[1], sb.imageSize[1], sb.entries[2], sb.imageSize[2], time.Since(start).Round(time.Millisecond))
	sb.img = filepath.Join(dir, "root.img")
	// -i 4096: the 120k objects need more inodes than mke2fs's default.
	if _, err := harness.MakeExt4(sb.img, root, sealBenchRootMiB, harness.Ext4Opts{UUID: rootUUID, Label: rootLabel,
		Extra: []string{"-O", "verity", "-i", "4096"}}); err != nil {
		b.Fatal(err)
	}
	os.RemoveAll(root)
	sb.ver, sb.nover = filepath.Join(dir, "ver.img"), filepath.Join(dir, "nover.img")
	if _, err := harness.MakeExt4(sb.ver, "", 1024, harness.Ext4Opts{Extra: []string{"-O", "verity"}}); err != nil {
		b.Fatal(err)
	}
	if _, err := harness.MakeExt4(sb.nover, "", 1024, harness.Ext4Opts{}); err != nil {
		b.Fatal(err)
	}
	b.Logf("disk built in %s", time.Since(start).Round(time.Millisecond))
	return sb
}

// sealBoot is one direct boot's output and facts.
type sealBoot struct {
	out    string
	facts  map[string]string
	verify int
	total  int
	info   string // boot.json as the test init printed it
}

func sealBenchBoot(b *testing.B, k harness.Kernel, initrd string, disks []string, args string) *sealBoot {
	b.Helper()
	vm, err := harness.Start(b.Context(), harness.Config{Kernel: k.Vmlinuz, Initrd: initrd, MemMiB: 1024,
		Append: "console=ttyS0 panic=-1 txboot.watchdog=0 root=UUID=" + rootUUID + " " + args, Disk: disks[0], Disks: disks[1:]})
	if err != nil {
		b.Fatal(err)
	}
	defer vm.Kill()
	if _, err := vm.Expect(regexp.MustCompile(`TXTEST done|Kernel panic|BOOT FAILED`), sealBenchBootMax); err != nil {
		b.Fatalf("boot %q: %v", args, err)
	}
	r := &sealBoot{out: vm.Output(), facts: map[string]string{}}
	if !strings.Contains(r.out, "TXTEST done") {
		b.Fatalf("boot %q failed:\n%s", args, tail(r.out, 60))
	}
	for _, m := range sealFactRe.FindAllStringSubmatch(r.out, -1) {
		r.facts[m[1]] = strings.TrimSpace(m[2])
	}
	if m := sealPhaseRe.FindStringSubmatch(r.out); m != nil {
		r.verify, _ = strconv.Atoi(m[2])
		r.total, _ = strconv.Atoi(m[3])
	}
	if m := sealBootInfo.FindStringSubmatch(r.out); m != nil {
		r.info = m[1]
	}
	return r
}

// span is "t0 t1 ..." (uptime seconds) as seconds.
func span(s string) float64 {
	f := strings.Fields(s)
	if len(f) < 2 {
		return 0
	}
	a, _ := strconv.ParseFloat(f[0], 64)
	c, _ := strconv.ParseFloat(f[1], 64)
	return c - a
}

// readBareStore copies store.db out of a bare ext4 image and opens it.
func readBareStore(b *testing.B, img string) *txstore.Store {
	b.Helper()
	data, err := harness.Ext4Image{Path: img}.ReadFile("/" + txstore.DirName + "/store.db")
	if err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	must(b, os.MkdirAll(filepath.Join(root, txstore.DirName), 0o700))
	must(b, os.WriteFile(filepath.Join(root, txstore.DirName, "store.db"), data, 0o600))
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkSealVerify: see the top of this file. Run (about 20 min):
//
//	go test -run '^$' -bench SealVerify -benchtime 1x -timeout 90m ./qemu-tests/
func BenchmarkSealVerify(b *testing.B) {
	harness.Need(b, "qemu", "disk", "debootstrap")
	k := harness.CloudKernel(b)
	sb := sealBenchDisk(b)
	initrd := initrdFor(b, k, "--add-drivers", "erofs,overlay")

	// Seal in the guest: the host's kernel has no fs-verity.
	sr := sealBenchBoot(b, k, initrd, []string{sb.img}, "txboot.tx=1 txtest.seal=1")
	for _, l := range strings.Split(sr.out, "\n") {
		if strings.HasPrefix(l, "TXTEST seal-out") || strings.HasPrefix(l, "TXTEST list") {
			b.Log(l)
		}
	}
	s := readBareStore(b, sb.img)
	pins := map[uint64]string{}
	for id := uint64(1); id <= 2; id++ {
		tx, err := s.Get(id)
		if err != nil {
			b.Fatal(err)
		}
		if !tx.Sealed || tx.Image == "" {
			b.Fatalf("tx %d not sealed after bootctl seal in the guest (image %q, note %q)", id, tx.Image, tx.SealNote)
		}
		pins[id] = tx.Image
	}
	s.Close()
	b.Logf("MEASURE bootctl seal in the guest (TCG): tx 1 (Debian 13, %d entries) %.1f s, then tx 2 (+120k files) %.1f s",
		sb.entries[1], span(sr.facts["seal-1"]), span(sr.facts["seal-2"]))

	type row struct {
		id     uint64
		mode   string
		verify []int
		total  []int
	}
	var rows []*row
	for id := uint64(1); id <= 2; id++ {
		for _, mode := range []string{"sealed", "fast", "full"} {
			rows = append(rows, &row{id: id, mode: mode})
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, r := range rows {
			args := "txboot.tx=" + strconv.FormatUint(r.id, 10)
			switch r.mode {
			case "sealed":
				args += " txboot.image=" + pins[r.id]
			case "full":
				args += " txboot.verify=full"
			}
			bt := sealBenchBoot(b, k, initrd, []string{sb.img}, args)
			sealed := strings.Contains(bt.info, `"sealed":true`)
			if sealed != (r.mode == "sealed") {
				b.Fatalf("tx %d %s: boot.json %s", r.id, r.mode, bt.info)
			}
			b.Logf("tx %d %s: verify=%dms total=%dms", r.id, r.mode, bt.verify, bt.total)
			r.verify = append(r.verify, bt.verify)
			r.total = append(r.total, bt.total)
		}
	}
	b.StopTimer()
	for _, r := range rows {
		v, tot := median(r.verify), median(r.total)
		b.Logf("MEASURE verify phase, tx %d (%d entries), %s: %d ms (initagent total %d ms; runs %v)", r.id, sb.entries[r.id], r.mode, v, tot, r.verify)
		b.ReportMetric(float64(v), fmt.Sprintf("tx%d-%s-verify-ms", r.id, r.mode))
	}
	for id := 1; id <= 2; id++ {
		b.Logf("MEASURE image size, tx %d (%d entries): %d bytes (%.2f MiB, %.0f bytes per entry)", id, sb.entries[id], sb.imageSize[id],
			float64(sb.imageSize[id])/(1<<20), float64(sb.imageSize[id])/float64(max(1, sb.entries[id])))
	}

	// Commit with and without fs-verity enabling, in the guest.
	cr := sealBenchBoot(b, k, initrd, []string{sb.img, sb.ver, sb.nover}, "txboot.tx=1 txtest.commitbench=1")
	var withV, without []float64
	for i := 1; i <= sealBenchCommits; i++ {
		for fs, dst := range map[string]*[]float64{"mv": &withV, "mn": &without} {
			f := strings.Fields(cr.facts[fmt.Sprintf("commit-%s-%d", fs, i)])
			if len(f) != 3 || f[2] != "0" {
				b.Fatalf("commit %s %d: %q\n%s", fs, i, cr.facts[fmt.Sprintf("commit-%s-%d", fs, i)], tail(cr.out, 40))
			}
			*dst = append(*dst, span(strings.Join(f[:2], " ")))
		}
	}
	for _, l := range strings.Split(cr.out, "\n") {
		if strings.HasPrefix(l, "TXTEST list-") {
			b.Log(l)
		}
	}
	// The record, not list's MODE: this tree has no kernel, so it never
	// boots sealed from an entry (the benchmark pins it by hand).
	if cr.facts["sealed-mv"] != "1" || cr.facts["sealed-mn"] != "0" {
		b.Errorf("commit on the verity ext4 sealed=%q, on the other %q; want 1 and 0", cr.facts["sealed-mv"], cr.facts["sealed-mn"])
	}
	mv, mn := median(withV), median(without)
	b.Logf("MEASURE commit of the Debian 13 /usr in the guest (TCG, empty store, cold cache): with fs-verity %.2f s, without %.2f s: %.2f× (runs %v / %v)",
		mv, mn, mv/mn, withV, without)
	b.ReportMetric(mv/mn, "commit-verity-ratio")
}

func median[T int | float64](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	return s[len(s)/2]
}
