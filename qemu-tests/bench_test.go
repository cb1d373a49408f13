package qemutests

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/harness"
)

var totalRe = regexp.MustCompile(`txboot: booting tx \d+ .*total=(\d+)ms`)

// BenchmarkBoot measures direct-kernel boots of the cloud kernel, one VM at
// a time: a normal boot of tx 3, and boots where tx 3 is broken and
// initagent falls back to tx 2 in the same boot (fast verify catching a
// deleted object; full verify catching a corrupted one). Metrics per boot:
// initagent's own total (from its phase summary) and wall time from QEMU
// start to the test init's first line. Run: make bench (or
// go test -run '^$' -bench Boot -benchtime 3x ./qemu-tests/).
func BenchmarkBoot(b *testing.B) {
	cases := []struct {
		name    string
		prepare func(root string)
		cmdline string
		marker  string
	}{
		{"normal-fast", nil, "", "tx-3"},
		{"fallback-fast-object-deleted", func(root string) { os.Remove(filepath.Join(root, markerObject(3))) }, "", "tx-2"},
		{"normal-full", nil, "txboot.verify=full", "tx-3"},
		{"fallback-full-object-corrupted", nil, "txboot.verify=full", "tx-2"},
	}
	cases[3].prepare = func(root string) { corrupt(b, filepath.Join(root, markerObject(3))) }
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			k := harness.CloudKernel(b)
			var initagentMS, wallMS float64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				img := image(b, c.prepare)
				initrd := initrdFor(b, k)
				b.StartTimer()
				vm, err := harness.Start(b.Context(), harness.Config{Kernel: k.Vmlinuz, Initrd: initrd,
					Append: "console=ttyS0 panic=-1 root=UUID=" + rootUUID + " " + c.cmdline, Disk: img})
				if err != nil {
					b.Fatal(err)
				}
				m, err := vm.Expect(regexp.MustCompile(`TXTEST marker=(\S+)\n`), bootWait)
				wall := vm.Elapsed()
				if err != nil || m[1] != c.marker {
					vm.Kill()
					b.Fatalf("boot: marker %v err %v\n%s", m, err, tail(vm.Output(), 30))
				}
				tm := totalRe.FindStringSubmatch(vm.Output())
				vm.Kill()
				if tm == nil {
					b.Fatal("no phase summary")
				}
				ms, _ := strconv.Atoi(tm[1])
				initagentMS += float64(ms)
				wallMS += float64(wall / time.Millisecond)
			}
			b.ReportMetric(initagentMS/float64(b.N), "initagent-ms/boot")
			b.ReportMetric(wallMS/float64(b.N), "wall-to-init-ms/boot")
		})
	}
}
