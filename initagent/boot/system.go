package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/txboot/txboot/initagent/cmdline"
	"github.com/txboot/txboot/initagent/kmod"
	"github.com/txboot/txboot/initagent/rootdev"
	"github.com/txboot/txboot/txstore/etcstate"
	"golang.org/x/sys/unix"
)

// System is everything the boot flow does to the machine. The flow (plan.go)
// is data and decisions on top of it; linuxSystem is the real one, and the
// flow's unit test records calls on a fake (the QEMU suite runs the real
// one).
type System interface {
	// Mount is mount(2) with m's fields, creating m.Target first when
	// m.Mkdir is set; the error is mount(2)'s own (the flow names m).
	Mount(m Mount) error
	// ReadFile reads a file of the initramfs (/proc/cmdline).
	ReadFile(name string) ([]byte, error)
	// Console is where messages go that must be seen even with quiet, and
	// the log until OpenKmsg.
	Console() io.Writer
	// OpenKmsg attaches the kernel log once /dev is mounted (and gives PID 1
	// a console on fds 0-2 if the kernel could not); nil if unavailable.
	OpenKmsg() io.Writer
	// LoadModules loads the initramfs's modules for the running kernel;
	// an error wrapping fs.ErrNotExist means there are none.
	LoadModules(params []string) (release string, sum kmod.Summary, err error)
	// WaitRoot waits up to timeout for the root device and probes its
	// filesystem type ("" if the superblock is not recognised).
	WaitRoot(ctx context.Context, spec cmdline.RootSpec, timeout time.Duration) (dev, fstype string, err error)
	// Assembler puts a tree in place as root/usr.
	Assembler(root string) Assembler
	// ArmWatchdog starts the hardware watchdog; it returns the seconds it
	// runs for (0: not armed) and what went wrong, if anything.
	ArmWatchdog(seconds int) (int, error)
	// SwitchEtc gives tx id its /etc under root (etcstate.Switch): the
	// root is mounted read-write and nothing else runs yet.
	SwitchEtc(root string, id uint64) (*etcstate.SwitchResult, error)
	// SwitchRoot makes newRoot "/" and execs init; it returns only if
	// every exec failed.
	SwitchRoot(newRoot, init string, args []string) error
	// Rescue ends a boot that cannot continue (a shell if wanted and
	// present, then a reboot). The real one never returns.
	Rescue(shell bool, why string)
	Sleep(d time.Duration)
}

// Mount is one mount step, in the way of u-root's libinit: the early mounts
// are a table of these.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	// Mkdir creates Target first. Without it a missing Target means "not
	// on this machine" and the step is skipped (efivarfs without UEFI).
	Mkdir bool
	// Required: the boot cannot go on without it; its failure is a rescue.
	Required bool
	// Lost says what is missing when an optional mount fails.
	Lost string
}

func (m Mount) String() string {
	if m.Flags&unix.MS_REMOUNT != 0 {
		return "remount " + m.Target
	}
	return fmt.Sprintf("mount %s on %s", m.FSType, m.Target)
}

// ErrNoWatchdog: the machine has no watchdog device.
var ErrNoWatchdog = errors.New("no watchdog device")

// linuxSystem is the real System of PID 1.
type linuxSystem struct{}

func (linuxSystem) Mount(m Mount) error {
	if m.Mkdir {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
	}
	return unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
}

func (linuxSystem) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

func (linuxSystem) Console() io.Writer { return os.Stdout }

func (linuxSystem) OpenKmsg() io.Writer {
	if _, err := unix.FcntlInt(0, unix.F_GETFD, 0); err != nil {
		if fd, err := unix.Open("/dev/console", unix.O_RDWR, 0); err == nil {
			for i := 0; i < 3; i++ {
				unix.Dup2(fd, i)
			}
			if fd > 2 {
				unix.Close(fd)
			}
		}
	}
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return nil
	}
	return f
}

func (linuxSystem) LoadModules(params []string) (string, kmod.Summary, error) {
	rel, err := kmod.KernelRelease()
	if err != nil {
		return "", kmod.Summary{}, err
	}
	sum, err := kmod.LoadDir(filepath.Join("/lib/modules", rel), kmod.ParamsFromCmdline(params))
	return rel, sum, err
}

func (linuxSystem) WaitRoot(ctx context.Context, spec cmdline.RootSpec, timeout time.Duration) (string, string, error) {
	dev, err := rootdev.Wait(ctx, spec, timeout, 0)
	if err != nil {
		return "", "", err
	}
	fstype := ""
	if f, err := os.Open(dev); err == nil {
		if fs, err := rootdev.Probe(f); err == nil {
			fstype = fs.Type
		}
		f.Close()
	}
	return dev, fstype, nil
}

func (linuxSystem) Assembler(root string) Assembler { return &BindAssembler{Root: root} }

// ArmWatchdog: if the boot hangs before `bootctl mark-good` disarms it, the
// machine resets and the spent try counts. The fd is closed without the
// magic 'V', which keeps the watchdog running across exec.
func (linuxSystem) ArmWatchdog(seconds int) (int, error) {
	const dev = "/dev/watchdog"
	fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %w", ErrNoWatchdog, dev, err)
	}
	defer unix.Close(fd)
	var errs errList
	if err := unix.IoctlSetPointerInt(fd, unix.WDIOC_SETTIMEOUT, seconds); err != nil {
		errs = append(errs, fmt.Errorf("%s: set timeout %d s: %w", dev, seconds, err))
	}
	if _, err := unix.Write(fd, []byte{0}); err != nil { // keepalive: start counting now
		errs = append(errs, fmt.Errorf("%s: keepalive: %w", dev, err))
	}
	return seconds, errs.err()
}

// SwitchRoot moves the API filesystems into newRoot, frees the initramfs,
// makes newRoot "/" and execs init with a real argv and environment (u-root's
// SwitchRoot passes neither). Returns only if every exec failed.
func (linuxSystem) SwitchRoot(newRoot, init string, args []string) error {
	for _, m := range []string{"/dev", "/proc", "/sys", "/run"} {
		dst := filepath.Join(newRoot, m)
		os.MkdirAll(dst, 0o755)
		if err := unix.Mount(m, dst, "", unix.MS_MOVE, ""); err != nil {
			unix.Mount(m, dst, "", unix.MS_BIND|unix.MS_REC, "")
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("chdir %s: %w", newRoot, err)
	}
	freeInitramfs()
	if err := unix.Mount(newRoot, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	env := []string{"HOME=/", "TERM=linux", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	var errs errList
	for _, c := range InitCandidates(init) {
		errs = append(errs, fmt.Errorf("%s: %w", c, unix.Exec(c, append([]string{c}, args...), env)))
	}
	if len(errs) == 0 { // never nil: returning at all means init did not start
		return errors.New("no init to start")
	}
	return errs
}

// freeInitramfs deletes the initramfs's files (not crossing into other
// mounts) so its memory returns to the system, as switch_root(8) does.
func freeInitramfs() {
	var root unix.Stat_t
	if unix.Lstat("/", &root) != nil {
		return
	}
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			var st unix.Stat_t
			if unix.Lstat(p, &st) != nil || st.Dev != root.Dev {
				continue
			}
			if e.IsDir() {
				walk(p)
				unix.Rmdir(p)
			} else {
				unix.Unlink(p)
			}
		}
	}
	walk("/")
}

// Rescue: a clear message, a shell when the initramfs has one and it was
// asked for, else a reboot after a delay. Never returns.
func (linuxSystem) Rescue(wantShell bool, why string) {
	con := os.Stdout
	fmt.Fprintf(con, "\ntxboot: the system cannot boot: %s\n", why)
	for _, sh := range []string{"/bin/sh", "/bin/busybox"} {
		if _, err := os.Stat(sh); err != nil {
			continue
		}
		if !wantShell {
			fmt.Fprintf(con, "txboot: a rescue shell is available with rd.txboot.shell=1 on the kernel command line.\n")
			break
		}
		fmt.Fprintf(con, "txboot: starting a rescue shell (%s); exit it to reboot.\n", sh)
		args := []string{}
		if strings.HasSuffix(sh, "busybox") {
			args = []string{"sh"}
		}
		cmd := exec.Command(sh, args...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "PS1=txboot-rescue# "}
		cmd.Run()
		break
	}
	delay := 10 * time.Second
	fmt.Fprintf(con, "txboot: rebooting in %d s.\n", int(delay.Seconds()))
	time.Sleep(delay)
	unix.Sync()
	for {
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		time.Sleep(time.Second)
	}
}

func (linuxSystem) Sleep(d time.Duration) { time.Sleep(d) }

func (linuxSystem) SwitchEtc(root string, id uint64) (*etcstate.SwitchResult, error) {
	return etcstate.Switch(root, id)
}
