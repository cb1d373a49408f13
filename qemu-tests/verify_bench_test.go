package qemutests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testkit"
)

var vbPhaseRe = regexp.MustCompile(`txboot: booting tx \d+ .*verify=(\d+)ms .*total=(\d+)ms`)

var (
	vbImgOnce sync.Once
	vbImg     string
	vbImgErr  error
)

// verifyBenchImage builds (once per run) an ext4 root whose store holds a real
// Debian 12 /usr (scripts/debian-root.sh, ~8.6k entries) plus the test init
// as tx 1, the default. The cached Debian root is only read: its /usr is
// copied first.
func verifyBenchImage(b *testing.B) string {
	b.Helper()
	vbImgOnce.Do(func() {
		repo, err := harness.RepoRoot()
		if err != nil {
			vbImgErr = err
			return
		}
		out, err := exec.Command("bash", filepath.Join(repo, "scripts", "debian-root.sh"), "bookworm").Output()
		if err != nil {
			vbImgErr = err
			return
		}
		src := strings.TrimSpace(string(out))
		dir := filepath.Join(workDir, "debian")
		root := filepath.Join(dir, "root")
		usr := filepath.Join(dir, "usr")
		if vbImgErr = fixture.RootSkeleton(root); vbImgErr != nil {
			return
		}
		if out, err := exec.Command("cp", "-a", filepath.Join(src, "usr"), usr).CombinedOutput(); err != nil {
			vbImgErr = fmt.Errorf("cp: %v %s", err, out)
			return
		}
		// Debian's sbin/init is a symlink into systemd; the test init
		// replaces it (in the copy) instead of being written through it.
		os.Remove(filepath.Join(usr, "sbin", "init"))
		if vbImgErr = fixture.WriteTx(usr, nil, fixture.TxSpec{Marker: "debian"}); vbImgErr != nil {
			return
		}
		s, err := txstore.Open(root, txstore.Options{Create: true})
		if err != nil {
			vbImgErr = err
			return
		}
		_, _, err = s.Commit(usr, txstore.CommitOptions{Summary: "debian"})
		s.Close()
		if err != nil {
			vbImgErr = err
			return
		}
		os.RemoveAll(usr)
		vbImg = filepath.Join(dir, "root.img")
		_, vbImgErr = harness.MakeExt4(vbImg, root, 1024, harness.Ext4Opts{UUID: rootUUID, Label: rootLabel})
		os.RemoveAll(root)
	})
	if vbImgErr != nil {
		testkit.Skipf(b, "debian image: %v", vbImgErr)
	}
	return vbImg
}

// BenchmarkVerifyDebianUsr boots the cloud kernel (1 vCPU, TCG unless KVM
// works) on a root whose tx 1 is a real Debian /usr and reports initagent's
// verify= and total= phases. Every boot is a fresh VM, so the guest's page
// cache is cold. With TXBOOT_BENCH_BASELINE_INITAGENT=<static initagent>
// each iteration also boots the same image with that initagent, so both are
// measured side by side (alternating) and the ratio is reported.
// TXBOOT_BENCH_QEMU_ARGS adds QEMU arguments, e.g. "-icount shift=4,sleep=off":
// guest time then counts instructions, so a comparison is not skewed by
// other load on the host (the absolute numbers are not TCG's). Run:
//
//	go test -run '^$' -bench VerifyDebianUsr -benchtime 3x ./qemu-tests/
func BenchmarkVerifyDebianUsr(b *testing.B) {
	harness.Need(b, "qemu")
	k := harness.CloudKernel(b)
	img := verifyBenchImage(b)
	type variant struct {
		name, initrd string
		verify, tot  float64
	}
	vs := []*variant{{name: "current", initrd: initrdFor(b, k)}}
	if base := os.Getenv("TXBOOT_BENCH_BASELINE_INITAGENT"); base != "" {
		bins := *getBins(b)
		bins.Initagent = base
		out := filepath.Join(b.TempDir(), "initrd-baseline.img")
		if err := fixture.Initramfs(context.Background(), &bins, k.Version, k.ModRoot, out, "--add-file", fixture.Busybox+":/bin/busybox"); err != nil {
			b.Fatal(err)
		}
		vs = append([]*variant{{name: "baseline", initrd: out}}, vs...)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for n := range vs {
			v := vs[(n+i)%len(vs)] // alternate which goes first
			b.StopTimer()
			disk := filepath.Join(b.TempDir(), "root.img")
			if err := fixture.CopyFile(img, disk); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			vm, err := harness.Start(b.Context(), harness.Config{Kernel: k.Vmlinuz, Initrd: v.initrd,
				Append: "console=ttyS0 panic=-1 root=UUID=" + rootUUID, Disk: disk,
				ExtraArgs: strings.Fields(os.Getenv("TXBOOT_BENCH_QEMU_ARGS"))})
			if err != nil {
				b.Fatal(err)
			}
			m, err := vm.Expect(regexp.MustCompile(`TXTEST marker=(\S+)\n`), bootWait)
			if err != nil || m[1] != "debian" {
				vm.Kill()
				b.Fatalf("%s boot: marker %v err %v\n%s", v.name, m, err, tail(vm.Output(), 30))
			}
			pm := vbPhaseRe.FindStringSubmatch(vm.Output())
			vm.Kill()
			os.Remove(disk)
			if pm == nil {
				b.Fatalf("%s boot: no phase summary", v.name)
			}
			ver, _ := strconv.Atoi(pm[1])
			tot, _ := strconv.Atoi(pm[2])
			b.Logf("%s: verify=%dms total=%dms", v.name, ver, tot)
			v.verify += float64(ver)
			v.tot += float64(tot)
		}
	}
	for _, v := range vs {
		prefix := ""
		if v.name != "current" {
			prefix = v.name + "-"
		}
		b.ReportMetric(v.verify/float64(b.N), prefix+"verify-ms/boot")
		b.ReportMetric(v.tot/float64(b.N), prefix+"total-ms/boot")
	}
	if len(vs) == 2 && vs[0].verify > 0 {
		b.ReportMetric(vs[1].verify/vs[0].verify, "verify-ratio")
	}
}
