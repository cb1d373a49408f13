package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/txboot/txboot/bootctl/efivars"
	"github.com/txboot/txboot/initagent/cmdline"
	"github.com/txboot/txboot/initagent/kmod"
	"github.com/txboot/txboot/initagent/rootdev"
	"github.com/txboot/txboot/txstore"
	"golang.org/x/sys/unix"
)

// Sysroot is where the real root is mounted.
const Sysroot = "/sysroot"

// BootInfoPath (inside the new root's /run) tells userspace what happened.
const BootInfoPath = "/run/txboot/boot.json"

// Info is written to BootInfoPath for bootctl.
type Info struct {
	Booted    uint64           `json:"booted"`
	Requested uint64           `json:"requested"`
	Failures  []Failure        `json:"failures,omitempty"`
	OnTrial   bool             `json:"on_trial"`
	Watchdog  int              `json:"watchdog_seconds,omitempty"`
	PhasesMS  map[string]int64 `json:"phases_ms"`
	// NoDatabase: booted without store.db (damaged): boot counting off; why.
	NoDatabase string `json:"no_database,omitempty"`
	// SignedBy: the trusted key that signed the booted tx's digest ("":
	// the initramfs carries no keys).
	SignedBy string `json:"signed_by,omitempty"`
}

type phases struct {
	start time.Time
	last  time.Time
	names []string
	ms    map[string]int64
}

func newPhases() *phases {
	now := time.Now()
	return &phases{start: now, last: now, ms: map[string]int64{}}
}

func (p *phases) mark(name string) {
	now := time.Now()
	p.names = append(p.names, name)
	p.ms[name] = now.Sub(p.last).Milliseconds()
	p.last = now
}

func (p *phases) String() string {
	var b strings.Builder
	for _, n := range p.names {
		fmt.Fprintf(&b, "%s=%dms ", n, p.ms[n])
	}
	fmt.Fprintf(&b, "total=%dms", time.Since(p.start).Milliseconds())
	return b.String()
}

// Main is PID 1. It never returns: it execs the real init, or ends in a
// rescue shell or a reboot. A panic anywhere is caught and becomes a rescue.
func Main() {
	log := newKlog()
	defer func() {
		if r := recover(); r != nil {
			log.logf(2, "internal error: %v", r)
			rescue(log, false, "initagent hit an internal error")
		}
	}()
	ph := newPhases()
	earlyMounts(log)
	log.open()
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		log.logf(3, "cannot read /proc/cmdline: %v; using defaults", err)
	}
	cfg, warns := cmdline.Parse(string(raw))
	log.quiet, log.debug = cfg.Quiet, cfg.Debug
	for _, w := range warns {
		log.logf(4, "command line: %s", w)
	}
	log.logf(6, "initagent starting; command line: %s", strings.TrimSpace(string(raw)))

	loadModules(log, cfg)
	mountEfivarfs(log) // after modules: Debian builds efivarfs as one
	ph.mark("modules")

	if cfg.RootDelay > 0 {
		time.Sleep(cfg.RootDelay)
	}
	if cfg.RootSpec.IsZero() {
		rescue(log, cfg.Shell, fmt.Sprintf("no usable root= on the command line (got %q); add root=UUID=… or root=/dev/…", cfg.Root))
	}
	dev, err := rootdev.Wait(context.Background(), cfg.RootSpec, cfg.RootTimeout, 0)
	if err != nil {
		rescue(log, cfg.Shell, fmt.Sprintf("root device: %v", err))
	}
	ph.mark("rootdev")
	if err := mountRoot(dev, cfg); err != nil {
		rescue(log, cfg.Shell, fmt.Sprintf("mount root %s: %v", dev, err))
	}
	log.logf(6, "root %s (%s) mounted on %s", dev, cfg.RootSpec, Sysroot)
	ph.mark("mount")

	// Workers is I/O depth, not CPUs: a cold verify is the kernel reading
	// inodes and directory blocks, which overlap only across blocked
	// workers (1 vCPU under TCG, Debian /usr: verify 1.96 s with 4 workers,
	// 1.62 s with 32; 1 worker is 2-3x slower than 4).
	s, err := txstore.Open(Sysroot, txstore.Options{Timeout: 5 * time.Second, NoCleanup: true, Workers: 32, HashOnce: true})
	if err != nil {
		rescue(log, cfg.Shell, fmt.Sprintf("open the txboot store on %s: %v", dev, err))
	}
	ph.mark("store")

	req := Request{Tx: cfg.Tx, Digest: cfg.Digest, DigestInvalid: cfg.DigestInvalid, Force: cfg.Force,
		Init: cfg.Init, Verify: verifyMode(cfg.Verify), LoaderTriesLeft: -1}
	loaderCounter(log, &req)
	req.Trust = LoadTrust(TrustDir)
	asm := &BindAssembler{Root: Sysroot}
	res, err := Choose(s, req, asm, log.logf)
	ph.ms["verify"] = res.Verify.Milliseconds()
	ph.ms["assemble"] = res.Assemble.Milliseconds()
	ph.names = append(ph.names, "verify", "assemble")
	ph.last = time.Now()
	s.Close() // the database is never held open; this drops the writer lock
	if err != nil {
		for _, f := range res.Failures {
			log.logf(2, "tx %d: %s", f.Tx, f.Reason)
		}
		rescue(log, cfg.Shell, err.Error())
	}
	for _, f := range res.Failures {
		if f.Kind != "" { // on the console even with quiet
			log.console("txboot: tx %d refused: %s\n", f.Tx, f.Reason)
		}
	}
	if res.Tx.ID != res.Requested {
		log.logf(3, "FALLBACK: requested tx %d failed (%s); booting tx %d instead", res.Requested, res.Failures[0].Reason, res.Tx.ID)
	}
	wd := 0
	if res.OnTrial {
		wd = armWatchdog(log, cfg)
	}
	if res.NoDatabase != "" { // on the console even with quiet
		log.console("\ntxboot: WARNING: the store's database is damaged: %s\ntxboot: booting tx %d %s; %s\n\n", res.NoDatabase, res.Tx.ID, res.Tx.Digest, noCounting)
	}
	info := Info{Booted: res.Tx.ID, Requested: res.Requested, Failures: res.Failures, OnTrial: res.OnTrial, Watchdog: wd, PhasesMS: ph.ms, NoDatabase: res.NoDatabase, SignedBy: res.SignedBy}
	writeInfo(log, &info)
	if cfg.ReadOnly {
		if err := unix.Mount("", Sysroot, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			log.logf(4, "could not remount the root read-only: %v", err)
		}
	}
	state := "good"
	if res.NoDatabase != "" {
		state = "no database, boot counting off"
	} else if res.OnTrial {
		state = fmt.Sprintf("on trial, %d tries left", res.Tx.TriesLeft)
	}
	if res.SignedBy != "" {
		state += ", signed by " + res.SignedBy
	}
	log.logf(5, "booting tx %d (%s) %s; phases: %s", res.Tx.ID, state, res.Tx.Digest, ph)
	err = switchRoot(Sysroot, res.Init, cfg.InitArgs)
	// Only reached if every exec failed, after the root moved: nothing to
	// fall back to from here.
	rescue(log, cfg.Shell, fmt.Sprintf("could not start init %s: %v", res.Init, err))
}

func verifyMode(m cmdline.VerifyMode) txstore.VerifyMode {
	switch m {
	case cmdline.VerifyOff:
		return txstore.VerifyOff
	case cmdline.VerifyFull:
		return txstore.VerifyFull
	}
	return txstore.VerifyFast
}

func earlyMounts(log *klog) {
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			log.logf(4, "mount %s on %s: %v", m.fstype, m.dst, err)
		}
	}
	os.MkdirAll(Sysroot, 0o755)
}

// mountEfivarfs makes systemd-boot's variables readable when booted via
// UEFI; without it the bootloader's boot counter cannot be adopted.
func mountEfivarfs(log *klog) {
	const dir = "/sys/firmware/efi/efivars"
	if _, err := os.Stat(dir); err != nil {
		return // not booted via UEFI
	}
	err := unix.Mount("efivarfs", dir, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	if err != nil && !errors.Is(err, unix.EBUSY) {
		log.logf(4, "mount efivarfs on %s: %v; systemd-boot's boot counter cannot be read", dir, err)
	}
}

func loadModules(log *klog, cfg cmdline.Config) {
	rel, err := kmod.KernelRelease()
	if err != nil {
		log.logf(4, "%v", err)
		return
	}
	dir := filepath.Join("/lib/modules", rel)
	// Module parameters (mod.param=v) from the parsed, unquoted tokens.
	var params []string
	for _, p := range cfg.Unknown {
		params = append(params, p.String())
	}
	sum, err := kmod.LoadDir(dir, kmod.ParamsFromCmdline(params))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			log.logf(6, "no modules for kernel %s in the initramfs", rel)
		} else {
			log.logf(4, "modules: %v", err)
		}
		return
	}
	level := 6
	if sum.Failed > 0 {
		level = 4
		for _, r := range sum.Results {
			if r.Err != nil {
				log.logf(4, "module %s: %v", r.Name, r.Err)
			}
		}
	}
	log.logf(level, "%s", sum)
}

func mountRoot(dev string, cfg cmdline.Config) error {
	types := []string{cfg.RootFSType}
	if cfg.RootFSType == "" {
		types = nil
		if f, err := os.Open(dev); err == nil {
			fs, perr := rootdev.Probe(f)
			f.Close()
			if perr == nil {
				types = append(types, fs.Type)
			}
		}
		types = append(types, "ext4", "xfs", "btrfs")
	}
	// Always rw first: the boot attempt must be recorded; ro is restored
	// just before switch_root.
	var errs []string
	for _, t := range types {
		err := unix.Mount(dev, Sysroot, t, 0, cfg.RootFlags)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", t, err))
	}
	return errors.New(strings.Join(errs, "; "))
}

// loaderCounter reads systemd-boot's boot counter for the entry it booted,
// so the store and the bootloader never disagree about tries left.
func loaderCounter(log *klog, req *Request) {
	v := efivars.New("")
	_, entry, err := v.BootCountEntry()
	if err != nil {
		if !errors.Is(err, efivars.ErrNotExist) {
			log.logf(4, "LoaderBootCountPath: %v", err)
		}
		return
	}
	id, ok := entry.TxID("txboot-")
	if !ok || !entry.Counting {
		return
	}
	if req.Tx != 0 && req.Tx != id {
		log.logf(4, "systemd-boot counted entry %s but the command line names tx %d; ignoring the counter", entry, req.Tx)
		return
	}
	req.LoaderTx, req.LoaderTriesLeft = id, entry.Left
	log.logf(6, "systemd-boot entry %s: %d tries left", entry, entry.Left)
}

// armWatchdog starts the hardware watchdog for a tx on trial: if the boot
// hangs before `bootctl mark-good` disarms it, the machine resets and the
// spent try counts. The fd is closed without the magic 'V', which keeps
// the watchdog running across exec.
func armWatchdog(log *klog, cfg cmdline.Config) int {
	timeout := int(cfg.Watchdog / time.Second) // txboot.watchdog=, range-checked by cmdline
	if timeout == 0 {
		return 0
	}
	fd, err := unix.Open("/dev/watchdog", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		log.logf(6, "no watchdog device (%v); a hang on trial will need a manual reset", err)
		return 0
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetPointerInt(fd, unix.WDIOC_SETTIMEOUT, timeout); err != nil {
		log.logf(4, "watchdog: set timeout %d s: %v", timeout, err)
	}
	unix.Write(fd, []byte{0}) // keepalive: start counting now
	log.logf(5, "watchdog armed: %d s to reach mark-good", timeout)
	return timeout
}

func writeInfo(log *klog, info *Info) {
	data, _ := json.MarshalIndent(info, "", "  ")
	dir := filepath.Dir(BootInfoPath)
	if err := os.MkdirAll(dir, 0o755); err == nil {
		err = os.WriteFile(BootInfoPath, append(data, '\n'), 0o644)
		if err == nil {
			return
		}
		log.logf(4, "write %s: %v", BootInfoPath, err)
	}
}

// switchRoot moves the API filesystems into newRoot, frees the initramfs,
// makes newRoot "/" and execs init with a real argv and environment (u-root's
// SwitchRoot passes neither). Returns only if every exec failed.
func switchRoot(newRoot, init string, args []string) error {
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
	var errs []string
	for _, c := range InitCandidates(init) {
		err := unix.Exec(c, append([]string{c}, args...), env)
		errs = append(errs, fmt.Sprintf("%s: %v", c, err))
	}
	return errors.New(strings.Join(errs, "; "))
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

// rescue ends a boot that cannot continue: a clear message, a shell when
// the initramfs has one, else a reboot after a delay. Never returns.
func rescue(log *klog, wantShell bool, why string) {
	log.logf(2, "BOOT FAILED: %s", why)
	log.console("\ntxboot: the system cannot boot: %s\n", why)
	for _, sh := range []string{"/bin/sh", "/bin/busybox"} {
		if _, err := os.Stat(sh); err != nil {
			continue
		}
		if !wantShell {
			log.console("txboot: a rescue shell is available with rd.txboot.shell=1 on the kernel command line.\n")
			break
		}
		log.console("txboot: starting a rescue shell (%s); exit it to reboot.\n", sh)
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
	log.console("txboot: rebooting in %d s.\n", int(delay.Seconds()))
	time.Sleep(delay)
	unix.Sync()
	for {
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		time.Sleep(time.Second)
	}
}
