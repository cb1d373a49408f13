package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// AccelEnv chooses QEMU's accelerator: auto (default), kvm or tcg.
const AccelEnv = "TXBOOT_QEMU_ACCEL"

// ErrAccel is returned when the accelerator asked for cannot be used.
var ErrAccel = errors.New("qemu accelerator")

// probeTimeout bounds the KVM probe boot. A working KVM reaches the
// kernel's panic (no root) and exits in about a second; a broken one
// aborts at once or spins without output.
const probeTimeout = 10 * time.Second

// Accel is the accelerator every VM of this process uses.
type Accel struct {
	Name string // "kvm" or "tcg"
	Why  string // one line: how it was chosen
}

var (
	accelOnce sync.Once
	accel     Accel
	accelErr  error
)

// ChooseAccel returns the accelerator for this process, deciding once: a
// /dev/kvm that opens is not proof that QEMU's KVM works (seen: QEMU
// aborting on an MSR, or a guest hanging silently), so auto boots a real
// kernel under KVM first and falls back to TCG unless that probe reaches
// the serial console and exits cleanly. The choice is printed once on
// stderr.
func ChooseAccel() (Accel, error) {
	accelOnce.Do(func() {
		accel, accelErr = chooseAccel(os.Getenv(AccelEnv), probeKVM)
		if accelErr == nil {
			fmt.Fprintf(os.Stderr, "qemu: accelerator %s: %s\n", accel.Name, accel.Why)
		}
	})
	return accel, accelErr
}

// probeFunc boots a probe under KVM; it returns nil when KVM works, else
// an error carrying QEMU's own words.
type probeFunc func() error

func chooseAccel(env string, probe probeFunc) (Accel, error) {
	switch strings.TrimSpace(env) {
	case "tcg":
		return Accel{"tcg", AccelEnv + "=tcg"}, nil
	case "kvm":
		if err := probe(); err != nil {
			return Accel{}, fmt.Errorf("%w: %s=kvm, but KVM does not work: %w", ErrAccel, AccelEnv, err)
		}
		return Accel{"kvm", AccelEnv + "=kvm, probe boot passed"}, nil
	case "", "auto":
		if err := probe(); err != nil {
			return Accel{"tcg", fmt.Sprintf("KVM unusable (%v); using TCG (set %s=kvm|tcg to choose)", err, AccelEnv)}, nil
		}
		return Accel{"kvm", "KVM probe boot passed"}, nil
	default:
		return Accel{}, fmt.Errorf("%w: %s=%q: want auto, kvm or tcg", ErrAccel, AccelEnv, env)
	}
}

// errNoProbe marks a probe that could not run at all (no /dev/kvm, no
// kernel), as opposed to one where QEMU failed.
var errNoProbe = errors.New("cannot probe")

func probeKVM() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%w: open /dev/kvm: %w", errNoProbe, err)
	}
	unix.Close(fd)
	qemu, err := LookTool(QEMUBinary)
	if err != nil {
		return fmt.Errorf("%w: %w", errNoProbe, err)
	}
	ks, err := Kernels(KernelDir())
	if err != nil {
		return fmt.Errorf("%w: no kernel to boot: %w", errNoProbe, err)
	}
	return runProbe(qemu, ks[0].Vmlinuz, probeTimeout)
}

// runProbe boots kernel with no root under KVM with the CPU model the VMs
// use: it must print its banner on the serial console, panic, and QEMU
// must exit 0 (panic=-1 + -no-reboot) within timeout.
func runProbe(qemu, kernel string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-machine", "q35", "-accel", "kvm", "-cpu", cpuModel,
		"-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err := cmd.Run()
	qemuSaid := lastLine(stderr.String())
	switch {
	case ctx.Err() != nil:
		if qemuSaid != "" {
			return fmt.Errorf("no exit within %s (QEMU: %s)", timeout, qemuSaid)
		}
		if !bytes.Contains(out.Bytes(), []byte("Linux version")) {
			return fmt.Errorf("no serial output within %s", timeout)
		}
		return fmt.Errorf("guest did not finish within %s", timeout)
	case err != nil:
		if qemuSaid == "" {
			qemuSaid = err.Error()
		}
		return fmt.Errorf("QEMU failed: %s", qemuSaid)
	case !bytes.Contains(out.Bytes(), []byte("Linux version")):
		return fmt.Errorf("QEMU exited after %s without serial output", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// lastLine is the last non-empty line of QEMU's stderr, minus warnings
// about CPU features, which it prints on working hosts too.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !strings.Contains(l, "warning:") {
			return l
		}
	}
	return ""
}
