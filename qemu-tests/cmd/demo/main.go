// Command demo shows txboot doing its job: transactions committed with
// bootctl, verified, then booted by initagent in QEMU on Debian's kernel —
// including a broken update that initagent detects and falls back from.
// Run it with `make demo`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore"
)

var work = flag.String("work", ".cache/demo", "scratch directory")

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, a ...any) {
	fmt.Printf("\n\033[1m==> %s\033[0m\n", fmt.Sprintf(format, a...))
}

func sh(name string, args ...string) error {
	fmt.Printf("$ %s %s\n", filepath.Base(name), strings.Join(args, " "))
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	return cmd.Run()
}

func run() error {
	ctx := context.Background()
	repo, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	w, _ := filepath.Abs(*work)
	os.RemoveAll(w)
	if err := os.MkdirAll(w, 0o755); err != nil {
		return err
	}
	bins, err := fixture.Build(ctx, repo, filepath.Join(w, "bin"))
	if err != nil {
		return err
	}
	k, err := harness.FindKernel(harness.KernelDir(), true)
	if err != nil {
		return fmt.Errorf("%v (run `make deps`)", err)
	}
	root := filepath.Join(w, "root")
	if err := fixture.RootSkeleton(root); err != nil {
		return err
	}

	step("Three /usr trees, each with busybox, bootctl and an init that reports which tx runs")
	for i := 1; i <= 3; i++ {
		if err := fixture.WriteTx(filepath.Join(w, fmt.Sprintf("usr-%d", i)), bins, fixture.TxSpec{Marker: fmt.Sprintf("tx-%d", i)}); err != nil {
			return err
		}
	}
	step("Commit them as transactions (content-addressed, deduplicated, hardlinked trees)")
	for i := 1; i <= 3; i++ {
		if err := sh(bins.Bootctl, "--root", root, "commit", filepath.Join(w, fmt.Sprintf("usr-%d", i)), "--summary", fmt.Sprintf("update %d", i)); err != nil {
			return err
		}
	}
	sh(bins.Bootctl, "--root", root, "list")
	step("Verify every transaction (full: re-hash all content)")
	if err := sh(bins.Bootctl, "--root", root, "verify", "--full"); err != nil {
		return err
	}

	initrd := filepath.Join(w, "initrd.img")
	step("Build the initramfs for %s with mkinitramfs", k.Version)
	start := time.Now()
	if err := fixture.Initramfs(ctx, bins, k.Version, k.ModRoot, initrd); err != nil {
		return err
	}
	fi, _ := os.Stat(initrd)
	fmt.Printf("initramfs: %d KiB in %d ms\n", fi.Size()/1024, time.Since(start).Milliseconds())

	step("Boot the default transaction (tx 3) in QEMU")
	if err := bootOnce(k, initrd, root, filepath.Join(w, "disk1.img"), ""); err != nil {
		return err
	}

	step("Break tx 3: delete one of its objects from the store (a damaged update)")
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		return err
	}
	obj := ""
	m, err := s.Manifest(mustGet(s, 3))
	if err != nil {
		return err
	}
	for _, e := range m.Entries {
		if e.Path == "share/txtest/marker" {
			obj = s.Objects().Path(e.Key())
		}
	}
	s.Close()
	fmt.Printf("$ rm %s\n", obj)
	if err := os.Remove(obj); err != nil {
		return err
	}
	sh(bins.Bootctl, "--root", root, "verify", "3")

	step("Boot again: initagent detects the damage and falls back to tx 2 in the same boot")
	if err := bootOnce(k, initrd, root, filepath.Join(w, "disk2.img"), ""); err != nil {
		return err
	}
	fmt.Println("\nThe machine came up on tx 2 by itself.")
	if err := uefiDemo(ctx, w, bins, k); err != nil {
		return err
	}
	fmt.Println("\nRun `make test` for every scenario.")
	return nil
}

// uefiDemo: real firmware (OVMF) and real systemd-boot. tx 1 is proven
// good; tx 2 is a new update whose init dies before it can be marked good.
// Each reboot is a new QEMU run on the same disk and EFI variables; nobody
// touches the menu.
func uefiDemo(ctx context.Context, w string, bins *fixture.Bins, k harness.Kernel) error {
	step("UEFI: OVMF firmware + systemd-boot; tx 1 is good, tx 2 is an update whose init fails before the good mark")
	sys, err := fixture.BuildUEFISystem(ctx, fixture.UEFISpec{Bins: bins, Dir: filepath.Join(w, "uefi"), Txs: []fixture.UEFITx{
		{Marker: "tx-1", Kernel: k, Good: true, Hook: fixture.HookHealth},
		{Marker: "tx-2", Kernel: k, Tries: 2, Hook: "echo \"TXTEST tx 2 is broken: its init exits before the good mark\"\nexit 1\n"},
	}})
	if err != nil {
		return err
	}
	show := func() {
		ents, _ := sys.Entries()
		fmt.Printf("ESP loader/entries: %s\n", strings.Join(ents, "  "))
	}
	show()
	for run := 1; run <= 4; run++ {
		step("UEFI boot %d (no input)", run)
		vm, err := harness.Start(ctx, harness.Config{UEFI: true, VarsPath: sys.Vars, Disk: sys.Disk.Path, Tee: prefixWriter{}})
		if err != nil {
			return err
		}
		m, err := vm.Expect(regexp.MustCompile(`TXTEST marker=(\S+)\n`), 4*time.Minute)
		if err != nil {
			vm.Kill()
			return err
		}
		vm.Wait(2 * time.Minute) // the broken init panics the kernel; panic=-1 reboots, which ends QEMU
		vm.Kill()
		show()
		if m[1] == "tx-1" {
			break
		}
	}
	tmp, _ := os.MkdirTemp("", "txboot-demo-")
	defer os.RemoveAll(tmp)
	s, err := sys.ReadStore(tmp)
	if err != nil {
		return err
	}
	root := s.Root
	s.Close()
	step("The store, read back from the disk image")
	sh(bins.Bootctl, "--root", root, "list")
	sh(bins.Bootctl, "--root", root, "log", "-n", "8")
	fmt.Println("\ntx 2 used its 2 tries; systemd-boot skipped its +0 entry and booted tx 1 with no input; initagent recorded tx 2 as bad and made tx 1 the default; tx 1 passed its health check.")
	return nil
}

func mustGet(s *txstore.Store, id uint64) *txstore.Tx {
	t, err := s.Get(id)
	if err != nil {
		panic(err)
	}
	return t
}

func bootOnce(k harness.Kernel, initrd, root, img, extra string) error {
	uuid := harness.NewUUID()
	if _, err := harness.MakeExt4(img, root, 64, harness.Ext4Opts{UUID: uuid}); err != nil {
		return err
	}
	appendLine := "console=ttyS0 panic=-1 root=UUID=" + uuid + " " + extra
	acc, err := harness.ChooseAccel()
	if err != nil {
		return err
	}
	fmt.Printf("$ qemu-system-x86_64 -accel %s -kernel %s -initrd %s -append %q\n", acc.Name, filepath.Base(k.Vmlinuz), filepath.Base(initrd), appendLine)
	vm, err := harness.Start(context.Background(), harness.Config{Kernel: k.Vmlinuz, Initrd: initrd, Append: appendLine, Disk: img, Tee: prefixWriter{}})
	if err != nil {
		return err
	}
	defer vm.Kill()
	if _, err := vm.Expect(regexp.MustCompile(`TXTEST done|BOOT FAILED|Kernel panic`), 3*time.Minute); err != nil {
		return err
	}
	vm.Wait(time.Minute)
	return nil
}

// prefixWriter shows only txboot's and the test init's console lines.
type prefixWriter struct{}

var partial string

func (prefixWriter) Write(p []byte) (int, error) {
	partial += strings.ReplaceAll(string(p), "\r", "")
	for {
		i := strings.IndexByte(partial, '\n')
		if i < 0 {
			break
		}
		line := partial[:i]
		partial = partial[i+1:]
		if strings.Contains(line, "txboot:") || strings.Contains(line, "TXTEST") {
			fmt.Println("  | " + strings.TrimSpace(line))
		}
	}
	return len(p), nil
}
