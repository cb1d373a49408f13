package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/txboot/txboot/initagent/cmdline"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/bootinfo"
	"golang.org/x/sys/unix"
)

// Plan is the boot flow's data: where things are and what is mounted
// before anything else. DefaultPlan is PID 1's; tests point the paths into
// a temp dir.
type Plan struct {
	Sysroot  string // where the real root is mounted
	Cmdline  string // the kernel command line, /proc/cmdline
	InfoPath string // boot.json, in the initramfs's /run (moved into the new root)
	TrustDir string // the initramfs's trusted keys
	EFIVars  string // efivarfs ("": the real one)
	// Early is mounted in order before anything else; Late after the
	// modules are loaded.
	Early, Late []Mount
}

// EarlyMounts are the API filesystems, before the command line is read.
var EarlyMounts = []Mount{
	{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755", Mkdir: true, Required: true},
	{Source: "proc", Target: "/proc", FSType: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, Mkdir: true, Required: true},
	{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, Mkdir: true, Required: true},
	{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=0755", Mkdir: true,
		Lost: "the new root gets no /run from the initramfs"},
}

// LateMounts follow the modules: Debian builds efivarfs as one. Without
// UEFI its mount point does not exist and it is skipped.
var LateMounts = []Mount{
	{Source: "efivarfs", Target: "/sys/firmware/efi/efivars", FSType: "efivarfs", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC,
		Lost: "systemd-boot's boot counter cannot be read"},
}

// DefaultPlan is the real machine's.
func DefaultPlan() Plan {
	return Plan{Sysroot: Sysroot, Cmdline: "/proc/cmdline", InfoPath: bootinfo.Path, TrustDir: TrustDir,
		Early: EarlyMounts, Late: LateMounts}
}

// ErrNoRoot: the command line names no usable root device.
var ErrNoRoot = errors.New("no usable root= on the command line")

// ErrInternal: a phase panicked (a bug); PID 1 turns it into a rescue.
var ErrInternal = errors.New("initagent hit an internal error")

// step is one phase of the boot. timed: the loop records its duration
// under name; choose records its parts (verify, assemble) itself.
type step struct {
	name  string
	timed bool
	run   func(*run) error
}

// flow is the boot, in order. Any error ends it in the one rescue of Run.
var flow = []step{
	{"early", true, (*run).early},        // API filesystems, kernel log, command line
	{"modules", true, (*run).modules},    // the initramfs's modules, then LateMounts
	{"rootdev", true, (*run).rootdev},    // wait for root=
	{"mount", true, (*run).mountRoot},    // on Sysroot, read-write (the try is recorded)
	{"store", true, (*run).openStore},    // the txboot store
	{"choose", false, (*run).choose},     // verify + assemble, with fallback; closes the store
	{"etc", true, (*run).switchEtc},      // the chosen tx's /etc (etcstate); never fails the boot
	{"handover", false, (*run).handOver}, // watchdog, boot.json, remount, summary line
	{"switch-root", false, (*run).switchRoot},
}

// run is one boot's state, filled in by the steps.
type run struct {
	sys    System
	plan   Plan
	log    *klog
	ph     *phases
	cfg    cmdline.Config
	dev    string // the root device
	fstype string // its probed filesystem type, or ""
	store  *txstore.Store
	res    *Result
	etc    string // what the etc step did, for boot.json
	kernel string // the running kernel's release (from the modules step)
}

// Run boots: each step in order, timed; a step's error or panic ends in
// exactly one sys.Rescue. With the real System it never returns.
func Run(sys System, plan Plan) {
	r := &run{sys: sys, plan: plan, log: newKlog(sys.Console()), ph: newPhases()}
	for _, st := range flow {
		if err := r.do(st); err != nil {
			r.closeStore() // a rescue shell may want to repair it
			r.log.logf(2, "BOOT FAILED: %s", err)
			sys.Rescue(r.cfg.Shell, err.Error())
			return
		}
		if st.timed {
			r.ph.mark(st.name)
		} else {
			r.ph.skip()
		}
	}
}

// do runs one step; a panic becomes an error, so PID 1 never panics.
func (r *run) do(st step) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.logf(2, "internal error in phase %s: %v", st.name, p)
			r.log.logf(7, "%s", debug.Stack())
			err = fmt.Errorf("%w (phase %s: %v)", ErrInternal, st.name, p)
		}
	}()
	return st.run(r)
}

func (r *run) closeStore() {
	if r.store != nil {
		r.store.Close() // the database is never held open; this drops the writer lock
		r.store = nil
	}
}

// mount runs one table entry: an optional mount that fails is a warning,
// a required one ends the boot.
func (r *run) mount(m Mount) error {
	err := r.sys.Mount(m)
	switch {
	case err == nil, errors.Is(err, unix.EBUSY): // EBUSY: already mounted
		return nil
	case !m.Mkdir && errors.Is(err, unix.ENOENT): // not on this machine
		return nil
	case m.Required:
		return fmt.Errorf("%s: %w", m, err)
	}
	if m.Lost != "" {
		r.log.logf(4, "%s: %v; %s", m, err, m.Lost)
	} else {
		r.log.logf(4, "%s: %v", m, err)
	}
	return nil
}

func (r *run) early() error {
	for _, m := range r.plan.Early {
		if err := r.mount(m); err != nil {
			return err
		}
	}
	if w := r.sys.OpenKmsg(); w != nil {
		r.log.kmsg = w
	}
	raw, err := r.sys.ReadFile(r.plan.Cmdline)
	if err != nil {
		r.log.logf(3, "cannot read %s: %v; using defaults", r.plan.Cmdline, err)
	}
	var warns []cmdline.Warning
	r.cfg, warns = cmdline.Parse(string(raw))
	r.log.debug = r.cfg.Debug
	for _, w := range warns {
		r.log.logf(4, "command line: %s", w)
	}
	r.log.logf(6, "initagent starting; command line: %s", strings.TrimSpace(string(raw)))
	return nil
}

func (r *run) modules() error {
	// Module parameters (mod.param=v) from the parsed, unquoted tokens.
	var params []string
	for _, p := range r.cfg.Unknown {
		params = append(params, p.String())
	}
	rel, sum, err := r.sys.LoadModules(params)
	r.kernel = rel
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.log.logf(6, "no modules for kernel %s in the initramfs", rel)
	case err != nil:
		r.log.logf(4, "modules: %v", err)
	default:
		level := 6
		if sum.Failed > 0 {
			level = 4
			for _, res := range sum.Results {
				if res.Err != nil {
					r.log.logf(4, "module %s: %v", res.Name, res.Err)
				}
			}
		}
		r.log.logf(level, "%s", sum)
	}
	for _, m := range r.plan.Late {
		if err := r.mount(m); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) rootdev() error {
	if r.cfg.RootSpec.IsZero() {
		return fmt.Errorf("%w (got %q); add root=UUID=… or root=/dev/…", ErrNoRoot, r.cfg.Root)
	}
	if r.cfg.RootDelay > 0 {
		r.sys.Sleep(r.cfg.RootDelay)
	}
	dev, fstype, err := r.sys.WaitRoot(context.Background(), r.cfg.RootSpec, r.cfg.RootTimeout)
	if err != nil {
		return fmt.Errorf("root device: %w", err)
	}
	r.dev, r.fstype = dev, fstype
	return nil
}

// mountRoot mounts the root always read-write first: the boot attempt must
// be recorded; ro is restored just before switch_root.
func (r *run) mountRoot() error {
	types := []string{r.cfg.RootFSType}
	if r.cfg.RootFSType == "" {
		types = nil
		for _, t := range []string{r.fstype, "ext4", "xfs", "btrfs"} {
			if t != "" && !slices.Contains(types, t) {
				types = append(types, t)
			}
		}
	}
	var errs errList
	for _, t := range types {
		err := r.sys.Mount(Mount{Source: r.dev, Target: r.plan.Sysroot, FSType: t, Data: r.cfg.RootFlags, Mkdir: true})
		if err == nil {
			r.log.logf(6, "root %s (%s) mounted on %s", r.dev, r.cfg.RootSpec, r.plan.Sysroot)
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", t, err))
	}
	return fmt.Errorf("mount root %s: %w", r.dev, errs.err())
}

func (r *run) openStore() error {
	// Workers is I/O depth, not CPUs: a cold verify is the kernel reading
	// inodes and directory blocks, which overlap only across blocked
	// workers (1 vCPU under TCG, Debian /usr: verify 1.96 s with 4 workers,
	// 1.62 s with 32; 1 worker is 2-3x slower than 4).
	s, err := txstore.Open(r.plan.Sysroot, txstore.Options{Timeout: 5 * time.Second, NoCleanup: true, Workers: 32, HashOnce: true})
	if err != nil {
		return fmt.Errorf("open the txboot store on %s: %w", r.dev, err)
	}
	r.store = s
	return nil
}

func (r *run) choose() error {
	cfg := r.cfg
	req := Request{Tx: cfg.Tx, Digest: cfg.Digest, DigestInvalid: cfg.DigestInvalid, Image: cfg.Image, ImageInvalid: cfg.ImageInvalid,
		Force: cfg.Force, Init: cfg.Init, Verify: verifyMode(cfg.Verify), LoaderTriesLeft: -1, Kernel: r.kernel}
	loaderCounter(r.log, &req, r.plan.EFIVars)
	req.Trust = LoadTrust(r.plan.TrustDir)
	res, err := Choose(r.store, req, r.sys.Assembler(r.plan.Sysroot), r.log.logf)
	r.closeStore()
	if res != nil {
		r.ph.record("verify", res.Verify)
		r.ph.record("assemble", res.Assemble)
	}
	if err != nil {
		if res != nil {
			for _, f := range res.Failures {
				r.log.logf(2, "tx %d: %s", f.Tx, f.Reason)
			}
		}
		return err
	}
	r.res = res
	return nil
}

// handOver tells the system what happened (console, boot.json), arms the
// watchdog for a tx on trial and restores ro.
func (r *run) handOver() error {
	res, log := r.res, r.log
	for _, f := range res.Failures {
		if f.Kind != "" { // on the console even with quiet
			log.console("txboot: tx %d refused: %s\n", f.Tx, f.Reason)
		}
	}
	if res.Tx.ID != res.Requested && len(res.Failures) > 0 {
		log.logf(3, "FALLBACK: requested tx %d failed (%s); booting tx %d instead", res.Requested, res.Failures[0].Reason, res.Tx.ID)
	}
	wd := 0
	if secs := int(r.cfg.Watchdog / time.Second); res.OnTrial && secs > 0 { // txboot.watchdog=, range-checked by cmdline
		n, err := r.sys.ArmWatchdog(secs)
		switch {
		case errors.Is(err, ErrNoWatchdog):
			log.logf(6, "%v; a hang on trial will need a manual reset", err)
		case err != nil:
			log.logf(4, "watchdog: %v", err)
		}
		if n > 0 {
			log.logf(5, "watchdog armed: %d s to reach mark-good", n)
		}
		wd = n
	}
	if res.NoDatabase != "" { // on the console even with quiet
		log.console("\ntxboot: WARNING: the store's database is damaged: %s\ntxboot: booting tx %d %s; %s\n\n", res.NoDatabase, res.Tx.ID, res.Tx.Digest, noCounting)
	}
	info := &bootinfo.Info{Booted: res.Tx.ID, Requested: res.Requested, OnTrial: res.OnTrial, Watchdog: wd,
		PhasesMS: r.ph.ms, NoDatabase: res.NoDatabase, SignedBy: res.SignedBy, Etc: r.etc,
		Sealed: res.Sealed, UnsealedWhy: res.UnsealedWhy}
	for _, f := range res.Failures {
		info.Failures = append(info.Failures, bootinfo.Failure{Tx: f.Tx, Reason: f.Reason, Kind: string(f.Kind)})
	}
	if err := bootinfo.Write(r.plan.InfoPath, info); err != nil {
		log.logf(4, "%v; bootctl will not know what this boot did", err)
	}
	if r.cfg.ReadOnly {
		if err := r.sys.Mount(Mount{Target: r.plan.Sysroot, Flags: unix.MS_REMOUNT | unix.MS_RDONLY}); err != nil {
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
	// The summary keeps its shape, "booting tx N (STATE) DIGEST; phases:
	// …", which people and tests parse; how /usr is checked has its own
	// line (and is in boot.json).
	if res.Sealed {
		log.logf(5, "tx %d: /usr is sealed: the kernel checks every file against image %s", res.Tx.ID, res.Tx.Image)
	} else {
		log.logf(5, "tx %d: /usr is unsealed: %s", res.Tx.ID, res.UnsealedWhy)
	}
	log.logf(5, "booting tx %d (%s) %s; phases: %s", res.Tx.ID, state, res.Tx.Digest, r.ph)
	return nil
}

// switchRoot returns only if every exec failed, after the root moved:
// nothing to fall back to from there.
func (r *run) switchRoot() error {
	if err := r.sys.SwitchRoot(r.plan.Sysroot, r.res.Init, r.cfg.InitArgs); err != nil {
		return fmt.Errorf("could not start init %s: %w", r.res.Init, err)
	}
	return nil
}

// phases times the boot's steps for the summary line and boot.json.
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

// mark ends phase name now.
func (p *phases) mark(name string) {
	now := time.Now()
	p.add(name, now.Sub(p.last))
	p.last = now
}

// record adds a phase measured elsewhere (Choose's verify and assemble).
func (p *phases) record(name string, d time.Duration) { p.add(name, d) }

// skip starts the next phase now, leaving the time since the last mark out
// of every phase (but in the total).
func (p *phases) skip() { p.last = time.Now() }

func (p *phases) add(name string, d time.Duration) {
	if _, ok := p.ms[name]; !ok {
		p.names = append(p.names, name)
	}
	p.ms[name] += d.Milliseconds()
}

func (p *phases) String() string {
	var b strings.Builder
	for _, n := range p.names {
		fmt.Fprintf(&b, "%s=%dms ", n, p.ms[n])
	}
	fmt.Fprintf(&b, "total=%dms", time.Since(p.start).Milliseconds())
	return b.String()
}

// errList keeps every error for errors.Is and errors.As (as errors.Join
// does) but reads as one line: it ends up in a one-line rescue message.
type errList []error

func (l errList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (l errList) Unwrap() []error { return l }

// err is nil for an empty list.
func (l errList) err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}
