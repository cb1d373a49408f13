// helloinit is the harness self-test's /init. It prints a marker and the
// kernel command line to the console, then, steered by the command line:
//
//	hello.modules=a,b   load /modules/a.ko, /modules/b.ko first, in order
//	hello.watchdog      open /dev/watchdog and never pet it
//	hello.wait          read console lines until "poweroff"
//
// and finally powers off.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	// The kernel mounts no devtmpfs for an initramfs; without /dev/console
	// in the archive, init has no stdout either.
	_ = os.Mkdir("/dev", 0o755)
	_ = os.Mkdir("/proc", 0o555)
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil {
		fail("mount devtmpfs: %v", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		fail("mount proc: %v", err)
	}
	con, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err != nil {
		fail("open /dev/console: %v", err)
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fail("read /proc/cmdline: %v", err)
	}
	cmdline := strings.TrimSpace(string(b))
	fmt.Fprintf(con, "HELLO-TXBOOT cmdline=%s\n", cmdline)

	params := map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		params[k] = v
	}
	if mods := params["hello.modules"]; mods != "" {
		for _, m := range strings.Split(mods, ",") {
			if err := loadModule("/modules/"+m+".ko", params[m+".params"]); err != nil {
				fail("%v", err)
			}
		}
	}
	if _, ok := params["hello.watchdog"]; ok {
		wd, err := os.OpenFile("/dev/watchdog", os.O_WRONLY, 0)
		if err != nil {
			fail("open /dev/watchdog: %v", err)
		}
		// Opening arms it; never writing again lets it expire.
		fmt.Fprintf(con, "WATCHDOG-ARMED\n")
		defer wd.Close()
		time.Sleep(time.Hour)
	}
	if _, ok := params["hello.wait"]; ok {
		fmt.Fprintf(con, "WAITING\n")
		sc := bufio.NewScanner(con)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "poweroff" {
				break
			}
		}
		fmt.Fprintf(con, "BYE\n")
	}
	con.Close()
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Returning from PID 1 would panic the kernel; wait for the power-off.
	time.Sleep(time.Hour)
}

func loadModule(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil {
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}

// fail reports through /dev/kmsg, the one channel that exists without
// /dev/console, and powers off so the test sees an exit, not a hang.
func fail(format string, args ...any) {
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		fmt.Fprintf(f, "helloinit: FAIL: "+format+"\n", args...)
		f.Close()
	}
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	time.Sleep(time.Hour)
}
