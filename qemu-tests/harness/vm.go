package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Config describes one QEMU run. Zero values mean the defaults noted.
type Config struct {
	// Direct kernel boot: -kernel/-initrd/-append. Append gets
	// "console=ttyS0" prepended when it names no console, since the
	// harness only sees the first serial port.
	Kernel, Initrd, Append string

	// Disk is a raw image attached as virtio-blk (the first disk, vda);
	// Disks are more, in order (vdb, ...).
	Disk  string
	Disks []string
	// DiskCache is QEMU's cache mode, default "unsafe": guest flushes are
	// not forwarded to the host. Killing QEMU still keeps every write the
	// guest had issued (they are in the host page cache), which is what a
	// power-cut test wants, and TCG runs are faster.
	DiskCache string

	// UEFI boots OVMF (read-only OVMF_CODE_4M.fd) with a writable copy of
	// OVMF_VARS_4M.fd at VarsPath, created from the template when missing;
	// reuse VarsPath across VMs of one test to keep EFI variables (boot
	// entries, systemd-boot's LoaderEntry*) across "reboots". Empty
	// VarsPath means a fresh throwaway copy.
	UEFI     bool
	VarsPath string

	// Watchdog adds an i6300esb with -action watchdog=WatchdogAction
	// (default "reset"). With AllowReboot false a watchdog reset ends the
	// run like any reset; Events then holds a WATCHDOG event.
	Watchdog       bool
	WatchdogAction string

	MemMiB int // default 512
	CPUs   int // default 1

	// SerialLog, if set, receives the serial output too (appended, with a
	// header per run, so the VMs of one test share a log).
	SerialLog string
	// Tee, if set, receives the raw serial output as it arrives (e.g.
	// os.Stderr).
	Tee io.Writer

	// AllowReboot keeps QEMU running across guest resets. The default is
	// -no-reboot: a reboot, a panic with panic=-1 or a watchdog reset ends
	// the run, and ExitReason says which.
	AllowReboot bool

	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
}

// Mark records one successful Expect, for phase timings.
type Mark struct {
	Pattern string
	Match   string
	At      time.Time
	Since   time.Duration // since the VM started
}

// VM is a running (or finished) QEMU.
type VM struct {
	cfg    Config
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	start  time.Time
	tmpDir string
	qmp    *qmpConn

	mu        sync.Mutex
	out       []byte
	cursor    int           // Expect searches out[cursor:]
	pendingCR bool          // out lacks a trailing CR that may start a CRLF
	changed   chan struct{} // closed and replaced on every change
	log       *os.File
	marks     []Mark
	stderr    bytes.Buffer
	events    []Event
	evSeen    int // ExpectEvent consumed events[:evSeen] (per scan)
	exited    bool
	exitErr   error
	endedAt   time.Time

	done chan struct{} // closed when QEMU has exited and output is drained
}

// serialWriter feeds QEMU's stdout into the VM.
type serialWriter struct{ vm *VM }

func (w serialWriter) Write(p []byte) (int, error) {
	vm := w.vm
	vm.mu.Lock()
	defer vm.mu.Unlock()
	// The serial line ends lines with CRLF; keep CR only when it is not
	// part of a CRLF so "(.*)" in a pattern does not capture a trailing CR.
	for _, c := range p {
		if vm.pendingCR {
			vm.pendingCR = false
			if c != '\n' {
				vm.out = append(vm.out, '\r')
			}
		}
		if c == '\r' {
			vm.pendingCR = true
			continue
		}
		vm.out = append(vm.out, c)
	}
	if vm.log != nil {
		// A log write error must not stop the VM; the buffer is the truth.
		_, _ = vm.log.Write(p)
	}
	if vm.cfg.Tee != nil {
		_, _ = vm.cfg.Tee.Write(p)
	}
	vm.notifyLocked()
	return len(p), nil
}

type stderrWriter struct{ vm *VM }

func (w stderrWriter) Write(p []byte) (int, error) {
	w.vm.mu.Lock()
	defer w.vm.mu.Unlock()
	w.vm.stderr.Write(p)
	return len(p), nil
}

func (vm *VM) notifyLocked() {
	close(vm.changed)
	vm.changed = make(chan struct{})
}

// cpuModel is the guest CPU under either accelerator.
const cpuModel = "max"

// Start launches QEMU. Cancelling ctx kills it. The caller must Kill or
// Wait; StartT does that on test cleanup.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.MemMiB == 0 {
		cfg.MemMiB = 512
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.DiskCache == "" {
		cfg.DiskCache = "unsafe"
	}
	if cfg.WatchdogAction == "" {
		cfg.WatchdogAction = "reset"
	}
	if cfg.Kernel == "" && !cfg.UEFI {
		return nil, errors.New("qemu: neither Kernel nor UEFI set: nothing to boot")
	}
	qemu, err := LookTool(QEMUBinary)
	if err != nil {
		return nil, err
	}
	// Short private dir: unix socket paths are limited to 108 bytes.
	tmpDir, err := os.MkdirTemp("", "txboot-vm-")
	if err != nil {
		return nil, fmt.Errorf("qemu temp dir: %w", err)
	}
	vm := &VM{cfg: cfg, tmpDir: tmpDir, changed: make(chan struct{}), done: make(chan struct{})}
	fail := func(err error) (*VM, error) {
		if vm.log != nil {
			vm.log.Close()
		}
		os.RemoveAll(tmpDir)
		return nil, err
	}

	acc, err := ChooseAccel()
	if err != nil {
		return fail(err)
	}
	qmpSock := filepath.Join(tmpDir, "qmp.sock")
	args := []string{
		"-machine", "q35", "-accel", acc.Name, "-cpu", cpuModel,
		"-m", strconv.Itoa(cfg.MemMiB), "-smp", strconv.Itoa(cfg.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none",
		// signal=off: bytes like ^C go to the guest, not to QEMU.
		"-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0",
		// wait=on: QEMU does not start the guest before we listen, so no
		// event is missed.
		"-qmp", "unix:" + qmpSock + ",server=on,wait=on",
	}
	if !cfg.AllowReboot {
		args = append(args, "-no-reboot")
	}
	if cfg.Kernel != "" {
		app := cfg.Append
		if !strings.Contains(app, "console=") {
			app = strings.TrimSpace("console=ttyS0 " + app)
		}
		args = append(args, "-kernel", cfg.Kernel, "-append", app)
		if cfg.Initrd != "" {
			args = append(args, "-initrd", cfg.Initrd)
		}
	}
	if cfg.UEFI {
		vars := cfg.VarsPath
		if vars == "" {
			vars = filepath.Join(tmpDir, "OVMF_VARS.fd")
		}
		if err := ensureVars(vars); err != nil {
			return fail(err)
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+qemuEscape(vars))
	}
	disks := cfg.Disks
	if cfg.Disk != "" {
		disks = append([]string{cfg.Disk}, disks...)
	}
	for i, d := range disks {
		if _, err := os.Stat(d); err != nil {
			return fail(fmt.Errorf("qemu disk: %w", err))
		}
		id := "disk" + strconv.Itoa(i)
		args = append(args,
			"-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=%s,cache=%s", qemuEscape(d), id, cfg.DiskCache),
			"-device", "virtio-blk-pci,drive="+id)
	}
	if cfg.Watchdog {
		args = append(args, "-device", "i6300esb", "-action", "watchdog="+cfg.WatchdogAction)
	}
	args = append(args, cfg.ExtraArgs...)

	if cfg.SerialLog != "" {
		f, err := os.OpenFile(cfg.SerialLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fail(fmt.Errorf("serial log: %w", err))
		}
		vm.log = f
		fmt.Fprintf(f, "\n=== harness: %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	}

	cmd := exec.CommandContext(ctx, qemu, args...)
	// Own process group so Kill takes QEMU and anything it spawned;
	// Pdeathsig so QEMU dies with the test binary even on a hard crash.
	// (os/exec only takes syscall.SysProcAttr, hence syscall here.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdout = serialWriter{vm}
	cmd.Stderr = stderrWriter{vm}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fail(fmt.Errorf("qemu stdin: %w", err))
	}
	vm.stdin = stdin
	vm.cmd = cmd
	vm.start = time.Now()
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start %s: %w", qemu, err))
	}
	go func() {
		err := cmd.Wait()
		vm.mu.Lock()
		vm.exited = true
		vm.exitErr = err
		vm.endedAt = time.Now()
		if vm.log != nil {
			fmt.Fprintf(vm.log, "\n=== harness: qemu exited after %v: %v\n", vm.endedAt.Sub(vm.start).Round(time.Millisecond), err)
			vm.log.Close()
			vm.log = nil
		}
		vm.notifyLocked()
		q := vm.qmp
		vm.mu.Unlock()
		if q != nil {
			q.close()
		}
		os.RemoveAll(vm.tmpDir)
		close(vm.done)
	}()

	q, err := dialQMP(qmpSock, vm.done, vm.addEvent)
	if err != nil {
		vm.Kill()
		return nil, fmt.Errorf("qemu QMP: %w\n%s", err, vm.Stderr())
	}
	vm.mu.Lock()
	vm.qmp = q
	exited := vm.exited
	vm.mu.Unlock()
	if exited {
		// The exit path ran before q was published; close it here.
		q.close()
	}
	return vm, nil
}

// qemuEscape doubles commas, QEMU's option separator, in a file name.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func killGroup(pid int) error {
	if err := unix.Kill(-pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill qemu process group %d: %w", pid, err)
	}
	return nil
}

// ensureVars creates a writable OVMF variable store from the template
// unless one exists.
func ensureVars(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	b, err := os.ReadFile(OVMFVars)
	if err != nil {
		return fmt.Errorf("OVMF vars template (install ovmf): %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("OVMF vars %s: %w", path, err)
	}
	return nil
}

// StartT starts a VM tied to t: it is killed when the test ends, and if
// the test failed the tail of the serial output is logged. With
// TXBOOT_VM_ECHO=1 in the environment the serial output is also copied to
// stderr as it arrives (for watching a test boot).
func StartT(t testing.TB, cfg Config) *VM {
	t.Helper()
	if cfg.Tee == nil && os.Getenv("TXBOOT_VM_ECHO") == "1" {
		cfg.Tee = os.Stderr
	}
	vm, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("start VM: %v", err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("serial output tail:\n%s\nqemu stderr:\n%s", vm.Tail(4096), vm.Stderr())
		}
	})
	return vm
}

// Kill ends QEMU at once (a power cut for the guest) and waits until it has
// exited. Safe to call more than once and after exit.
func (vm *VM) Kill() {
	select {
	case <-vm.done:
		return
	default:
	}
	if vm.cmd.Process != nil {
		_ = killGroup(vm.cmd.Process.Pid)
	}
	<-vm.done
}

// Wait waits for QEMU to exit on its own, killing it after timeout. It
// returns QEMU's exit error (nil for a clean exit: guest power-off, or a
// reset under -no-reboot).
func (vm *VM) Wait(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-vm.done:
	case <-t.C:
		vm.Kill()
		return fmt.Errorf("qemu did not exit within %v; killed; last output:\n%s", timeout, vm.Tail(2048))
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.exitErr != nil {
		return fmt.Errorf("qemu: %w: %s", vm.exitErr, strings.TrimSpace(vm.stderr.String()))
	}
	return nil
}

// Done is closed when QEMU has exited.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Send writes s to the serial port (the guest's or firmware's console).
func (vm *VM) Send(s string) error {
	if _, err := io.WriteString(vm.stdin, s); err != nil {
		return fmt.Errorf("qemu serial input: %w", err)
	}
	return nil
}

// Expect waits until re matches serial output after the end of the
// previous match, consumes through the end of this match and returns the
// match and its submatches. It fails on timeout or when QEMU exits first,
// with the last 2 KiB of output in the error.
func (vm *VM) Expect(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		vm.mu.Lock()
		if loc := re.FindSubmatchIndex(vm.out[vm.cursor:]); loc != nil {
			base := vm.cursor
			sub := make([]string, len(loc)/2)
			for i := range sub {
				if loc[2*i] >= 0 {
					sub[i] = string(vm.out[base+loc[2*i] : base+loc[2*i+1]])
				}
			}
			vm.cursor = base + loc[1]
			now := time.Now()
			vm.marks = append(vm.marks, Mark{Pattern: re.String(), Match: sub[0], At: now, Since: now.Sub(vm.start)})
			vm.mu.Unlock()
			return sub, nil
		}
		exited, changed := vm.exited, vm.changed
		vm.mu.Unlock()
		if exited {
			return nil, fmt.Errorf("qemu exited (%s) before %q appeared; last output:\n%s", vm.exitDesc(), re, vm.Tail(2048))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("%q did not appear within %v; last output:\n%s", re, timeout, vm.Tail(2048))
		}
	}
}

// ExpectString is Expect for a literal string.
func (vm *VM) ExpectString(s string, timeout time.Duration) error {
	_, err := vm.Expect(regexp.MustCompile(regexp.QuoteMeta(s)), timeout)
	return err
}

func (vm *VM) exitDesc() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	d := "exit status 0"
	if vm.exitErr != nil {
		d = vm.exitErr.Error()
	}
	if r := vm.exitReasonLocked(); r != "" {
		d += ", " + r
	}
	if s := strings.TrimSpace(vm.stderr.String()); s != "" {
		d += ", stderr: " + s
	}
	return d
}

// Output returns all serial output so far, with CRLF turned into LF (the
// log file and Tee get the raw bytes).
func (vm *VM) Output() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return string(vm.out)
}

// Tail returns the last n bytes of serial output.
func (vm *VM) Tail(n int) string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return string(vm.out[max(0, len(vm.out)-n):])
}

// Stderr returns what QEMU itself printed (errors, warnings).
func (vm *VM) Stderr() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.stderr.String()
}

// Marks returns the successful Expects so far, in order.
func (vm *VM) Marks() []Mark {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return append([]Mark(nil), vm.marks...)
}

// StartedAt is when QEMU was started.
func (vm *VM) StartedAt() time.Time { return vm.start }

// Elapsed is the time since the start, or the run time once QEMU exited.
func (vm *VM) Elapsed() time.Duration {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.exited {
		return vm.endedAt.Sub(vm.start)
	}
	return time.Since(vm.start)
}
