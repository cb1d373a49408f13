package qemutests

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore"
)

// TestRescuePaths: when nothing can boot, PID 1 says why on the console and
// either reboots (QEMU's -no-reboot turns that into an exit) or, with
// rd.txboot.shell=1, opens a working rescue shell.
func TestRescuePaths(t *testing.T) {
	k := harness.CloudKernel(t)
	noObjects := func(root string) { must(t, os.RemoveAll(filepath.Join(root, txstore.DirName, "objects"))) }
	cases := []struct {
		name    string
		prepare func(root string)
		cmdline string
		expect  []string
		shell   bool
	}{
		{name: "nothing bootable reboots", prepare: noObjects, cmdline: "root=UUID=" + rootUUID,
			expect: []string{`tx 3 cannot be booted`, `tx 1 cannot be booted`, `the system cannot boot: no transaction could be booted`, `rebooting in 10 s`}},
		{name: "root device never appears", cmdline: "root=UUID=00000000-0000-4000-8000-000000000000 txboot.timeout=2",
			expect: []string{`timed out waiting for the root device`, `vda`, `rebooting in 10 s`}},
		{name: "rescue shell", prepare: noObjects, cmdline: "root=UUID=" + rootUUID + " rd.txboot.shell=1",
			expect: []string{`starting a rescue shell`}, shell: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			img := image(t, c.prepare)
			vm := harness.StartT(t, harness.Config{Kernel: k.Vmlinuz, Initrd: initrdFor(t, k),
				Append: "console=ttyS0 panic=-1 " + c.cmdline, Disk: img})
			for _, e := range c.expect {
				if _, err := vm.Expect(regexp.MustCompile(regexp.QuoteMeta(e)), bootWait); err != nil {
					t.Fatalf("waiting for %q: %v", e, err)
				}
			}
			if c.shell {
				// Input sent before the shell reads its terminal can be lost
				// (line editing resets the tty), so wait for its prompt.
				if err := vm.ExpectString("txboot-rescue# ", time.Minute); err != nil {
					t.Fatalf("no rescue shell prompt: %v", err)
				}
				vm.Send("echo RESCUE-$((40+2))\n")
				if _, err := vm.Expect(regexp.MustCompile(`RESCUE-42`), time.Minute); err != nil {
					t.Fatalf("shell did not run a command: %v", err)
				}
				vm.Send("exit\n")
				if _, err := vm.Expect(regexp.MustCompile(`rebooting in 10 s`), time.Minute); err != nil {
					t.Fatalf("no reboot after the shell: %v", err)
				}
			}
			// The reboot ends QEMU (-no-reboot): PID 1 did not hang or panic.
			if err := vm.Wait(time.Minute); err != nil {
				t.Fatalf("QEMU did not exit after the reboot: %v", err)
			}
			if regexp.MustCompile(`Kernel panic|goroutine \d+`).MatchString(vm.Output()) {
				t.Fatalf("panic on the console:\n%s", tail(vm.Output(), 40))
			}
		})
	}
}
