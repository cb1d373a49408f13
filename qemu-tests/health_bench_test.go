package qemutests

// The health unit's ESP check on a boot not on trial, measured in a real
// Debian 13 guest (BenchmarkHealthESP, scripts/bench-health.sh): OVMF +
// systemd-boot, the ESP a vfat partition, TCG, 1 GiB. The store holds 5
// good txs, each with its own kernel and initrd on the ESP (tx 1 the
// installed Debian 13 /usr; txs 2-5 copies of it plus Debian's hello whose
// kernel and busybox carry a tag of their own, as a kernel update would
// make them differ: their files on the ESP are distinct, though never
// booted). The default is tx 1, so the fallback is tx 5. In the booted
// guest, after the boot is done, each of 5 rounds runs the health verb of
// the bootctl before e4ba7ed (every entry's kernel and initrd hashed;
// $TXBOOT_OLD_BOOTCTL, copied to /root/bootctl-old) and the installed one
// (the default's and the fallback's only), in alternating order, with
// the caches dropped before each run (the ESP stays mounted at /efi;
// drop_caches empties its page and buffer cache: every run reads the
// same bytes from the disk). Per run: wall time, bytes read from the ESP
// partition (/sys/class/block/vda1/stat) and the exit code. A warm-up run
// first is not counted.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/bootctl/bls"
	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore/testkit"
)

const (
	// healthBenchOldEnv names the bootctl built from before the change
	// (scripts/bench-health.sh builds it from e4ba7ed^).
	healthBenchOldEnv = "TXBOOT_OLD_BOOTCTL"
	healthBenchTxs    = 5
	healthBenchRounds = 5
	healthBenchOldBin = "/root/bootctl-old"
)

// healthBenchScript runs as /var/lib/txtest-next (the report unit's last
// step, after the boot is done and the health unit has run). Each line it
// prints reaches the console as "TXTEST next-out: …".
const healthBenchScript = `st() { awk '{print $3}' /sys/class/block/vda1/stat; }
grep ' vfat ' /proc/mounts | sed 's/^/HBMOUNT /'
# The health unit of this boot (the installed bootctl, at boot, cold).
u0=$(systemctl show -P ExecMainStartTimestampMonotonic txboot-health.service)
u1=$(systemctl show -P ExecMainExitTimestampMonotonic txboot-health.service)
echo "HBUNIT txboot-health.service at boot: $(( (u1 - u0) / 1000 )) ms ($(systemctl show -P Result txboot-health.service))"
# A warm-up run, not counted: the first run after the boot was twice as
# slow whichever bootctl it was (the guest still settling).
sync; echo 3 >/proc/sys/vm/drop_caches
s0=$(st); t0=$(date +%s%N)
/usr/lib/txboot/bootctl health >/dev/null 2>&1
t1=$(date +%s%N); s1=$(st)
echo "HBWARM new $(( (t1 - t0) / 1000000 )) ms, $(( (s1 - s0) * 512 )) bytes read from the ESP"
for i in $(seq ROUNDS); do
  order="old new"; [ $((i % 2)) = 0 ] && order="new old"
  for v in $order; do
    bin=/usr/lib/txboot/bootctl; [ $v = old ] && bin=OLDBIN
    sync; echo 3 >/proc/sys/vm/drop_caches
    s0=$(st); t0=$(date +%s%N)
    out=$($bin health 2>&1); rc=$?
    t1=$(date +%s%N); s1=$(st)
    echo "HB $v $i $(( (t1 - t0) / 1000000 )) $(( (s1 - s0) * 512 )) $rc"
    printf '%s\n' "$out" | sed "s/^/HBOUT $v $i: /"
  done
done
`

var healthBenchRe = regexp.MustCompile(`(?m)^TXTEST next-out: HB (old|new) (\d+) (\d+) (\d+) (\d+)\s*$`)

// healthBenchDisk builds the 5-tx Debian 13 system and returns it with
// the bytes of each tx's kernel + initrd on the ESP.
func healthBenchDisk(b *testing.B, old string) (*fixture.DebianSystem, map[uint64]int64) {
	b.Helper()
	harness.Need(b, "uefi", "disk", "debootstrap")
	repo, err := harness.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	droot, debs, err := fixture.DebianRoot(ctx, repo, fixture.Trixie)
	if err != nil {
		testkit.Skipf(b, "Debian 13 root: %v", err)
	}
	hellos, _ := filepath.Glob(filepath.Join(debs, "hello_*.deb"))
	if len(hellos) != 1 {
		b.Fatalf("hello .deb in %s: %v", debs, hellos)
	}
	dir := b.TempDir()
	sys, err := fixture.BuildDebian(ctx, fixture.DebianSpec{Bins: getBins(b), Dir: dir, Root: droot,
		Cmdline: "console=ttyS0 panic=-1 txboot.watchdog=0", NoDisk: true,
		Prepare: func(root string) error { return copyFileMode(old, filepath.Join(root, healthBenchOldBin), 0o755) }})
	if err != nil {
		b.Fatal(err)
	}
	for n := 2; n <= healthBenchTxs; n++ {
		name := fmt.Sprintf("variant-%d", n)
		tree := filepath.Join(dir, "trees", name)
		must(b, os.MkdirAll(filepath.Dir(tree), 0o755))
		must(b, sys.TreeCopy(ctx, 1, tree))
		must(b, fixture.UnpackDeb(ctx, hellos[0], tree))
		must(b, healthBenchVariant(tree, n))
		if _, err := sys.Run(ctx, "commit", "--no-default", "--summary", name, tree); err != nil {
			b.Fatal(err)
		}
		must(b, os.RemoveAll(tree))
	}
	for n := 1; n <= healthBenchTxs; n++ {
		if _, err := sys.Run(ctx, "mark-good", strconv.Itoa(n)); err != nil {
			b.Fatal(err)
		}
	}
	sizes, err := healthBenchSizes(sys.ESPDir)
	if err != nil {
		b.Fatal(err)
	}
	if len(sizes) != healthBenchTxs {
		b.Fatalf("entries on the ESP for %d txs, want %d: %v", len(sizes), healthBenchTxs, sizes)
	}
	espMiB, err := duMiBDir(sys.ESPDir)
	if err != nil {
		b.Fatal(err)
	}
	must(b, sys.MakeDisk(0, max(128, espMiB+64), ""))
	return sys, sizes
}

// healthBenchVariant makes tx n's kernel and busybox (which goes into its
// initrd) differ from every other tx's: a tag of its own after the end of
// each file (never booted; only its content on the ESP matters here).
func healthBenchVariant(tree string, n int) error {
	ks, _ := filepath.Glob(filepath.Join(tree, "lib", "modules", "*", "vmlinuz"))
	if len(ks) != 1 {
		return fmt.Errorf("kernels in %s: %v", tree, ks)
	}
	bb := filepath.Join(tree, "bin", "busybox")
	if err := copyFileMode(fixture.Busybox, bb, 0o755); err != nil {
		return err
	}
	for _, p := range []string{ks[0], bb} {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(f, "\ntxtest health bench variant %d\n", n)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("tag %s: %w", p, err)
		}
	}
	return nil
}

// healthBenchSizes sums, per tx, the sizes of the kernel and initrds its
// entry on the ESP names.
func healthBenchSizes(esp string) (map[uint64]int64, error) {
	confs, err := filepath.Glob(filepath.Join(esp, "loader", "entries", "txboot-*.conf"))
	if err != nil {
		return nil, err
	}
	out := map[uint64]int64{}
	for _, c := range confs {
		data, err := os.ReadFile(c)
		if err != nil {
			return nil, err
		}
		e, err := bls.Parse(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c, err)
		}
		id, _ := bls.CmdlineTx(e.Options)
		for _, p := range append([]string{e.Linux}, e.Initrd...) {
			fi, err := os.Stat(filepath.Join(esp, filepath.FromSlash(strings.ReplaceAll(p, `\`, "/"))))
			if err != nil {
				return nil, fmt.Errorf("%s names %s: %w", c, p, err)
			}
			out[id] += fi.Size()
		}
	}
	return out, nil
}

func duMiBDir(dir string) (int, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	return int((n + 1<<20 - 1) >> 20), err
}

func copyFileMode(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	os.Remove(dst)
	return os.WriteFile(dst, data, mode)
}

// BenchmarkHealthESP: see the top of this file. Run (about 5 min) with
// scripts/bench-health.sh, which builds the old bootctl, or:
//
//	TXBOOT_OLD_BOOTCTL=/path/to/old/bootctl go test -run '^$' -bench HealthESP -benchtime 1x -timeout 30m ./qemu-tests/
func BenchmarkHealthESP(b *testing.B) {
	old := os.Getenv(healthBenchOldEnv)
	if old == "" {
		testkit.Skip(b, "$"+healthBenchOldEnv+" unset: scripts/bench-health.sh builds the bootctl of e4ba7ed^ and runs this")
	}
	start := time.Now()
	sys, sizes := healthBenchDisk(b, old)
	var all int64
	for id := uint64(1); id <= healthBenchTxs; id++ {
		all += sizes[id]
		b.Logf("tx %d: kernel + initrd on the ESP %d bytes (%.1f MiB)", id, sizes[id], float64(sizes[id])/(1<<20))
	}
	next := sizes[1] + sizes[healthBenchTxs] // the default (1) and its fallback (the newest good other)
	b.Logf("built the Debian 13 disk (%d txs) in %s", healthBenchTxs, time.Since(start).Round(time.Second))
	script := strings.NewReplacer("ROUNDS", strconv.Itoa(healthBenchRounds), "OLDBIN", healthBenchOldBin).Replace(healthBenchScript)

	runs := map[string][]int{}
	read := map[string][]int{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		must(b, sys.Disk.RootFS().WriteFile("/var/lib/txtest-next", []byte(script), 0o644))
		out := healthBenchBoot(b, sys, i+1)
		ms := healthBenchRe.FindAllStringSubmatch(out, -1)
		if len(ms) != 2*healthBenchRounds {
			b.Fatalf("boot %d: %d measurements, want %d:\n%s", i+1, len(ms), 2*healthBenchRounds, tail(out, 80))
		}
		for _, m := range ms {
			if m[5] != "0" {
				b.Fatalf("boot %d: %s bootctl health exited %s:\n%s", i+1, m[1], m[5], healthBenchLines(out, "HBOUT"))
			}
			t, _ := strconv.Atoi(m[3])
			n, _ := strconv.Atoi(m[4])
			runs[m[1]] = append(runs[m[1]], t)
			read[m[1]] = append(read[m[1]], n)
		}
		b.Logf("boot %d:\n%s\n%s\n%s\n%s", i+1, healthBenchLines(out, "HBMOUNT"), healthBenchLines(out, "HBUNIT"), healthBenchLines(out, "HBWARM"), healthBenchLines(out, "HBOUT"))
	}
	b.StopTimer()
	mib := func(n int) float64 { return float64(n) / (1 << 20) }
	for _, v := range []string{"old", "new"} {
		b.Logf("MEASURE health ESP check, Debian 13 guest, %d entries, cold cache, %s bootctl: %d ms median (runs %v ms), read from the ESP %.1f MiB median (runs %v bytes)",
			healthBenchTxs, v, median(runs[v]), runs[v], mib(median(read[v])), read[v])
		b.ReportMetric(float64(median(runs[v])), v+"-ms")
		b.ReportMetric(mib(median(read[v])), v+"-esp-MiB")
	}
	b.Logf("MEASURE bytes hashed: before (every entry) %d (%.1f MiB), after (default tx 1 + fallback tx %d) %d (%.1f MiB)",
		all, mib(int(all)), healthBenchTxs, next, mib(int(next)))
}

// healthBenchBoot boots the system once and returns its console output.
func healthBenchBoot(b *testing.B, sys *fixture.DebianSystem, n int) string {
	b.Helper()
	vm := harness.StartT(b, harness.Config{UEFI: true, VarsPath: sys.Vars, Disk: sys.Disk.Path,
		MemMiB: 1024, SerialLog: filepath.Join(sys.Dir, "serial.log")})
	if _, err := vm.Expect(regexp.MustCompile(`TXTEST done|Kernel panic|reboot: Restarting system`), debianBootWait); err != nil {
		b.Fatalf("boot %d: %v\n%s", n, err, tail(vm.Output(), 60))
	}
	if err := vm.Wait(time.Minute); err != nil {
		b.Logf("boot %d: %v", n, err)
	}
	out := vm.Output()
	if !strings.Contains(out, "TXTEST done") {
		b.Fatalf("boot %d did not finish:\n%s", n, tail(out, 80))
	}
	if !strings.Contains(out, "TXTEST health=active/success") {
		b.Errorf("boot %d: the health unit did not succeed:\n%s", n, tail(out, 80))
	}
	if !regexp.MustCompile(`txboot: booting tx 1 `).MatchString(out) {
		b.Errorf("boot %d: did not boot tx 1 (the default)", n)
	}
	return out
}

// healthBenchLines is the script's lines that start with tag.
func healthBenchLines(out, tag string) string {
	var ls []string
	for _, l := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "TXTEST next-out: "+tag); ok {
			ls = append(ls, tag+s)
		}
	}
	return strings.Join(ls, "\n")
}
