// Command demo-debian shows txboot on a real Debian 13 (trixie) with systemd: the
// Debian root is installed by `bootctl install`, boots under OVMF +
// systemd-boot in QEMU and proves itself healthy; a broken update (glibc
// removed) is committed, fails its tries, and the machine comes back on the
// previous transaction with no input. Then, in the running system, a
// package is installed as a transaction (`bootctl run -- dpkg -i
// hello.deb`), booted, and rolled back (`bootctl rollback`), with dpkg
// agreeing each time. Run it with `make demo-debian`.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
)

var work = flag.String("work", ".cache/demo-debian", "scratch directory")

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo-debian: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, a ...any) {
	fmt.Printf("\n\033[1m==> %s\033[0m\n", fmt.Sprintf(format, a...))
}

// story passes on the console lines that tell what happens: initagent's,
// the test unit's, a panic, and systemd-boot's own words.
var story = regexp.MustCompile(`txboot: (booting|fall|default|verif|BOOT|/etc|tx \d+'s /etc)|TXTEST (running|failed|health|hello|status:|next)|Kernel panic|Attempted to kill init|error while loading shared libraries|\breboot: `)

type storyWriter struct {
	w   *io.PipeWriter
	end chan struct{}
}

func newStory() *storyWriter {
	r, w := io.Pipe()
	s := &storyWriter{w: w, end: make(chan struct{})}
	go func() {
		defer close(s.end)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			if story.MatchString(line) {
				fmt.Printf("  | %s\n", strings.TrimPrefix(line, "TXTEST "))
			}
		}
	}()
	return s
}

func (s *storyWriter) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s *storyWriter) Close()                      { s.w.Close(); <-s.end }

func boot(sys *fixture.DebianSystem, n int, what string) error {
	step("Boot %d: %s", n, what)
	st := newStory()
	defer st.Close()
	vm, err := harness.Start(context.Background(), harness.Config{UEFI: true, VarsPath: sys.Vars, Disk: sys.Disk.Path, MemMiB: 1024, Tee: st})
	if err != nil {
		return err
	}
	defer vm.Kill()
	if err := vm.Wait(10 * time.Minute); err != nil {
		return err
	}
	fmt.Printf("  (QEMU ran %s: %s)\n", vm.Elapsed().Round(time.Second), vm.ExitReason())
	return nil
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
	step("A Debian 13 (trixie) root from debootstrap (minbase + systemd 257, udev, the cloud kernel 6.12), cached by scripts/debian-root.sh")
	droot, debs, err := fixture.DebianRoot(ctx, repo, fixture.Trixie)
	if err != nil {
		return err
	}
	fmt.Println(droot)
	hellos, _ := filepath.Glob(filepath.Join(debs, "hello_*.deb"))
	if len(hellos) != 1 {
		return fmt.Errorf("hello .deb in %s: %v", debs, hellos)
	}

	step("bootctl install: its /usr (and dpkg's database, now in /usr/lib/sysimage/dpkg) becomes tx 1, systemd-boot and the entries go onto the ESP; Debian's hello .deb waits in /var/tmp")
	putHello := func(root string) error {
		b, err := os.ReadFile(hellos[0])
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(root, "var/tmp/hello.deb"), b, 0o644)
	}
	sys, err := fixture.BuildDebian(ctx, fixture.DebianSpec{Bins: bins, Dir: w, Root: droot, Cmdline: "console=ttyS0 panic=-1", Prepare: putHello})
	if err != nil {
		if sys != nil {
			fmt.Print(sys.BootctlLog.String())
		}
		return err
	}
	fmt.Print(sys.BootctlLog.String())

	step("A broken update: tx 2 is tx 1 without glibc's libc.so.6 (systemd cannot start); 2 tries")
	tree := filepath.Join(w, "trees", "broken")
	if err := os.MkdirAll(filepath.Dir(tree), 0o755); err != nil {
		return err
	}
	if err := sys.TreeCopy(ctx, 1, tree); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(tree, "lib", "x86_64-linux-gnu", "libc.so.6")); err != nil {
		return err
	}
	out, err := sys.Run(ctx, "commit", "--no-default", "--tries", "2", "--summary", "broken update", tree)
	fmt.Print(out)
	if err != nil {
		return err
	}
	if err := sys.MakeDisk(0, 0, ""); err != nil {
		return err
	}
	// The running system makes the update its default, as an updater would.
	if err := next(sys, "/usr/lib/txboot/bootctl set-default 2\n"); err != nil {
		return err
	}

	if err := boot(sys, 1, "tx 1 under systemd; its health check blesses it; then `bootctl set-default 2` in the running system"); err != nil {
		return err
	}
	// For the boot after the heal. Written now, into the /etc tx 1 leaves
	// at the next boot: coming back to tx 1 gives it that /etc again.
	if err := next(sys, installHello); err != nil {
		return err
	}
	for n := 2; n <= 3; n++ {
		if err := boot(sys, n, "the broken update tx 2 (systemd-boot counts the try; PID 1 dies)"); err != nil {
			return err
		}
	}
	if err := boot(sys, 4, "no input: systemd-boot skips the spent entry, initagent records tx 2 bad, Debian runs on tx 1; then hello as a transaction: `bootctl run -- dpkg -i /var/tmp/hello.deb`"); err != nil {
		return err
	}
	es, err := sys.Entries()
	if err != nil {
		return err
	}
	step("The ESP after the heal (read back from the disk image)")
	fmt.Println(strings.Join(es, "\n"))
	// The last boot ran installHello: tx 3, pending.
	if err := next(sys, useHello); err != nil {
		return err
	}
	if err := boot(sys, 5, "tx 3 (tx 1 + hello) on trial: hello runs, dpkg knows it; health blesses tx 3; then `bootctl rollback`"); err != nil {
		return err
	}
	// useHello runs again: the rollback gives tx 1 the /etc it last ran
	// with, from before this boot, which held it. Without hello it only
	// reports.
	return boot(sys, 6, "rolled back to tx 1: no hello, and dpkg agrees (its database is tx 1's)")
}

// Scripts the running system runs before it powers off (/var/lib/txtest-next).
const (
	// installHello: plain dpkg refuses on the live system; as a
	// transaction it works, and nothing changes until the reboot.
	installHello = `echo "plain dpkg -i /var/tmp/hello.deb:"
dpkg -i /var/tmp/hello.deb; echo "exit $?"
/usr/lib/txboot/bootctl run -- dpkg -i /var/tmp/hello.deb 2>&1 | grep -v '^(Reading database'
echo "hello now: $(command -v hello || echo 'not here until the reboot')"
`
	useHello = `echo "dpkg -l hello: $(dpkg -l hello 2>&1 | tail -n 1)"
booted=$(/usr/lib/txboot/bootctl status | awk '/^Booted:/ {print $3; exit}')
echo "bootctl show --packages $booted: $(/usr/lib/txboot/bootctl show --packages "$booted" | grep '^hello=' || echo 'no hello')"
if command -v hello >/dev/null; then /usr/lib/txboot/bootctl rollback; fi
`
)

// next leaves a script for the running system to run at the end of its
// next boot.
func next(sys *fixture.DebianSystem, script string) error {
	return sys.Disk.RootFS().WriteFile("/var/lib/txtest-next", []byte(script), 0o644)
}
