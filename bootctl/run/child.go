package run

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/txboot/txboot/txstore/etcstate"
	"golang.org/x/sys/unix"
)

// Child is the namespace side of a run (bootctl ChildArg): PID 1 of a new
// PID namespace in a new mount namespace. It returns the process's exit
// code; what happened is in the status file for Run.
func Child() int {
	var sp Spec
	raw := os.Getenv(specEnv)
	os.Unsetenv(specEnv)
	if err := json.Unmarshal([]byte(raw), &sp); err != nil || sp.Status == "" || sp.Mnt == "" {
		fmt.Fprintf(os.Stderr, "bootctl: %s is internal to bootctl run\n", ChildArg)
		return 2
	}
	st := child(&sp)
	writeStatus(sp.Status, st)
	if st.Stage != "done" && st.Error != "" {
		return 125
	}
	return st.Code
}

func child(sp *Spec) *childStatus {
	placeholder, err := mountView(sp)
	if err != nil {
		return &childStatus{Stage: "setup", Error: err.Error()}
	}
	code, err := runCommand(sp)
	if err != nil {
		return &childStatus{Stage: "command", Code: code, Error: err.Error()}
	}
	st := &childStatus{Stage: "done", Code: code}
	if code != 0 {
		return st
	}
	if err := after(sp, placeholder, st); err != nil {
		return &childStatus{Stage: "after", Error: err.Error()}
	}
	return st
}

// shWrapper lets the chroot's own sh find the command on the chroot's
// PATH: Go's exec would look it up on the host's.
const shWrapper = `exec "$@"`

// runCommand runs the command chrooted into the view and waits for it,
// reaping everything else in the namespace meanwhile (it is PID 1 there).
// Whatever the command left running is killed when it exits: the run is
// over, and a daemon must not keep writing into the working copy.
func runCommand(sp *Spec) (int, error) {
	if _, err := os.Stat(filepath.Join(sp.Mnt, "bin/sh")); err != nil {
		return 127, fmt.Errorf("the system root has no /bin/sh to run the command with: %w", err)
	}
	argv := append([]string{"/bin/sh", "-c", shWrapper, "bootctl-run"}, sp.Argv...)
	cmd := &exec.Cmd{Path: "/bin/sh", Args: argv, Env: sp.Env, Dir: "/",
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		SysProcAttr: &unix.SysProcAttr{Chroot: sp.Mnt}}
	// The terminal's ^C and ^\ reach the command directly (same process
	// group); the child outlives them to report. SIGTERM and SIGHUP from
	// Run are passed on.
	signal.Ignore(unix.SIGINT, unix.SIGQUIT)
	fwd := make(chan os.Signal, 4)
	signal.Notify(fwd, unix.SIGTERM, unix.SIGHUP)
	defer signal.Stop(fwd)
	if err := cmd.Start(); err != nil {
		return 127, fmt.Errorf("start %s: %w", strings.Join(sp.Argv, " "), err)
	}
	go func() {
		for s := range fwd {
			cmd.Process.Signal(s)
		}
	}()
	code := reap(cmd.Process.Pid)
	unix.Kill(-1, unix.SIGKILL) // everything else in this PID namespace
	for {
		if _, err := unix.Wait4(-1, nil, 0, nil); errors.Is(err, unix.ECHILD) {
			break
		}
	}
	return code, nil
}

// reap waits for any child until pid exits, and returns pid's exit code
// (128+signal when killed, as a shell says).
func reap(pid int) int {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 127
		}
		if got != pid {
			continue
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus()
		case ws.Signaled():
			return 128 + int(ws.Signal())
		}
	}
}

// after runs once the command succeeded, still inside the namespace: the
// scripts are unbound (the placeholder removed), a kernel the command
// installed into the private /boot moves to where a tx carries it, and
// the resulting /etc is copied out for the commit.
func after(sp *Spec, placeholder bool, st *childStatus) error {
	if err := unbindScripts(sp.Mnt, placeholder); err != nil {
		return err
	}
	var err error
	if st.Kernels, st.Dropped, err = moveKernels(sp.Mnt, sp.UsrLower); err != nil {
		return err
	}
	if err := etcstate.Copy(filepath.Join(sp.Mnt, "etc"), sp.EtcOut); err != nil {
		return fmt.Errorf("copy the resulting /etc: %w", err)
	}
	return nil
}

// moveKernels: Debian's linux-image packages put vmlinuz-V in /boot (the
// private tmpfs here); a tx carries it as usr/lib/modules/V/vmlinuz. A
// modules directory whose kernel/ the command removed (its package was
// removed; dpkg does not know our vmlinuz) is dropped with the vmlinuz.
func moveKernels(m, lower string) (moved, dropped []string, err error) {
	mods := filepath.Join(m, "usr/lib/modules")
	des, err := os.ReadDir(mods)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	for _, de := range des {
		v := de.Name()
		if !de.IsDir() || strings.ContainsAny(v, " \t\r\n\"/") {
			continue
		}
		dir := filepath.Join(mods, v)
		if _, err := os.Lstat(filepath.Join(dir, "kernel")); errors.Is(err, os.ErrNotExist) {
			if _, err := os.Lstat(filepath.Join(lower, "lib/modules", v, "kernel")); err == nil {
				if err := os.RemoveAll(dir); err != nil {
					return nil, nil, err
				}
				dropped = append(dropped, v)
			}
			continue
		}
		src := filepath.Join(m, "boot", "vmlinuz-"+v)
		if fi, err := os.Lstat(src); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if err := copyFile(src, filepath.Join(dir, "vmlinuz")); err != nil {
			return nil, nil, err
		}
		moved = append(moved, v)
	}
	return moved, dropped, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}
