// Package install turns an OS tree with a merged /usr into a txboot
// system: its kernel where a tx carries it, txboot's binaries and health
// unit in its /usr, /usr committed as tx 1 (and left an empty mount
// point), systemd-boot and the entries on the ESP. `bootctl install` is
// a thin verb over Run.
package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/txboot/txboot/bootctl/bls"
	"github.com/txboot/txboot/bootctl/systemd"
	"github.com/txboot/txboot/txstore"
	"golang.org/x/sys/unix"
)

// Errors for errors.Is. Every refusal is ErrRefused; the others say why
// more precisely and wrap it.
var (
	ErrRefused       = errors.New("cannot install")
	ErrNotMerged     = fmt.Errorf("%w: /usr is not merged", ErrRefused)
	ErrNoKernel      = fmt.Errorf("%w: no kernel", ErrRefused)
	ErrNoSystemdBoot = fmt.Errorf("%w: no systemd-boot", ErrRefused)
	ErrNoRootArg     = fmt.Errorf("%w: no root= for the entries", ErrRefused)
)

// Paths: in the tree (relative to ROOT), on the ESP, on the host.
const (
	TreeSystemdBoot        = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	DefaultHostSystemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	ESPSystemdBoot         = "EFI/systemd/systemd-bootx64.efi"
	ESPRemovable           = "EFI/BOOT/BOOTX64.EFI" // what firmware boots without NVRAM entries
	ToolsDir               = "usr/lib/txboot"
	UnitDir                = "usr/lib/systemd/system"
	// loaderConf is written only when the ESP has none; bls.Sync adds
	// its `default` line and keeps the rest.
	loaderConf = "timeout 3\neditor no\n"
	maxEFI     = 64 << 20
)

// Options for Run.
type Options struct {
	Root, ESP  string
	RootArg    string // root= for the entries; "" : kernel/cmdline, else ROOT's filesystem UUID
	Options    string // extra kernel arguments (already checked by the verb)
	OptionsSet bool   // Options was given: kernel/cmdline's are not used
	// Binaries copied to ROOT/usr/lib/txboot/ unless the tree has them.
	// Initagent and Mkinitramfs are also what Entries must build the
	// initrd with: the host's, never the tree's (required even when the
	// tree has its own).
	Bootctl, Initagent, Mkinitramfs string
	HostSystemdBoot                 string // default DefaultHostSystemdBoot
	Mountinfo                       string // default /proc/self/mountinfo
	// Run runs tune2fs (the ext4 verity feature, verity.go); default
	// ExecRunner.
	Run     Runner
	Timeout time.Duration
	Log     io.Writer // one line per step
	// Entries builds tx's initrd and syncs the ESP's entries (tx is nil
	// on a re-run: re-sync only). rootArg is what to save; "" when it
	// comes from kernel/cmdline (read again on every sync).
	Entries func(s *txstore.Store, tx *txstore.Tx, rootArg string) error
}

// Result says what Run did.
type Result struct {
	Already bool        // a store with txs was there: entries re-synced only
	Tx      *txstore.Tx // tx 1, when committed
	Stats   *txstore.CommitStats
}

type kernelCopy struct{ kver, from, to string }

type toolCopy struct{ name, src string }

// plan is what the checks found; install carries it out.
type plan struct {
	o            Options
	t            *tree
	root         string
	kernels      []kernelCopy
	kvers        []string
	sdboot       []byte
	sdbootFrom   string
	tools        []toolCopy
	keptTools    []string
	units        []unitPlan
	linkKept     map[string]bool // link paths (below ROOT) already right
	rootArg      string
	rootArgFrom  string
	rootArgSaved string
	usrMode      uint32
	usrUID       int
	usrGID       int
	pkg          pkgdbPlan
}

const (
	unitNew = iota
	unitSame
	unitReplace
)

// unitPlan is one of systemd.Units(): whether its file is new, the same
// or replaced (and what it was), and the links that enable it.
type unitPlan struct {
	systemd.Unit
	links   []link
	state   int // unitNew, unitSame, unitReplace
	old     []byte
	oldMode fs.FileMode
}

func unitTarget(name string) string { return "/" + path.Join(UnitDir, name) }

// Run installs txboot into o.Root and onto o.ESP. Everything it changes
// in ROOT before the commit is undone when a step fails; after the commit
// the error says what was done and that running it again finishes.
func Run(o Options) (*Result, error) {
	if o.HostSystemdBoot == "" {
		o.HostSystemdBoot = DefaultHostSystemdBoot
	}
	if o.Mountinfo == "" {
		o.Mountinfo = "/proc/self/mountinfo"
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Run == nil {
		o.Run = ExecRunner
	}
	if o.Entries == nil {
		return nil, errors.New("install: no entries writer")
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return nil, fmt.Errorf("%w: root %s: %w", ErrRefused, root, err)
	}
	if real, err := filepath.EvalSymlinks(root); err == nil && real == "/" {
		return nil, fmt.Errorf("%w: root %s is the running system; install works on an OS tree or a mounted target disk", ErrRefused, root)
	}
	if fi, err := os.Stat(o.ESP); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return nil, fmt.Errorf("%w: ESP %s: %w (pass --esp, the mounted EFI system partition)", ErrRefused, o.ESP, err)
	}
	t, err := openTree(root)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if _, err := t.lstat(path.Join(txstore.DirName, "store.db")); err == nil {
		s, err := txstore.Open(root, txstore.Options{Timeout: o.Timeout})
		if err != nil {
			return nil, err
		}
		txs, err := s.List()
		if err != nil {
			s.Close()
			return nil, err
		}
		if len(txs) > 0 {
			defer s.Close()
			return rerun(o, t, s, txs)
		}
		s.Close() // an empty store (an earlier install that failed): install
	}
	p := &plan{o: o, t: t, root: root, linkKept: map[string]bool{}}
	if err := p.check(); err != nil {
		return nil, err
	}
	return p.install()
}

func (p *plan) log(format string, a ...any) { fmt.Fprintf(p.o.Log, "install: "+format+"\n", a...) }

func kindOf(mode uint32) string { return bls.KindOf(mode) }

// check finds everything install needs and refuses what it cannot make
// bootable, before anything is changed.
func (p *plan) check() error {
	t := p.t
	// /usr: a directory on ROOT's filesystem (it becomes the tx, then
	// the mount point initagent binds the tx onto).
	st, err := t.lstat("usr")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%w: %s is a %s; /usr must be a directory", ErrRefused, t.path("usr"), kindOf(st.Mode))
	}
	var rst unix.Stat_t
	if err := unix.Fstat(t.fd, &rst); err != nil {
		return fmt.Errorf("stat %s: %w", p.root, err)
	}
	if rst.Dev != st.Dev {
		return fmt.Errorf("%w: %s is a separate filesystem; txboot keeps /usr in the store on the root filesystem", ErrRefused, t.path("usr"))
	}
	p.usrMode, p.usrUID, p.usrGID = st.Mode&0o7777, int(st.Uid), int(st.Gid)
	if err := p.checkMerged(); err != nil {
		return err
	}
	if err := p.checkSpecialFiles(); err != nil {
		return err
	}
	if err := p.findKernels(); err != nil {
		return err
	}
	if err := p.findSystemdBoot(); err != nil {
		return err
	}
	if err := p.findTools(); err != nil {
		return err
	}
	if err := p.checkUnits(); err != nil {
		return err
	}
	if err := p.checkPkgDB(); err != nil {
		return err
	}
	if err := p.findRootArg(); err != nil {
		return err
	}
	// The ESP must not be consumed with /usr.
	if esp, err := filepath.EvalSymlinks(p.o.ESP); err == nil {
		if usr, err := filepath.EvalSymlinks(t.path("usr")); err == nil {
			if rel, err := filepath.Rel(usr, esp); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
				return fmt.Errorf("%w: ESP %s lies in %s, which becomes the tx", ErrRefused, p.o.ESP, t.path("usr"))
			}
		}
	}
	return nil
}

// checkMerged: bin, sbin and lib (and lib64/lib32/libx32 where present)
// are symlinks into usr, so that everything the OS runs is in the tx.
func (p *plan) checkMerged() error {
	for _, name := range []string{"bin", "sbin", "lib", "lib64", "lib32", "libx32"} {
		required := name == "bin" || name == "sbin" || name == "lib"
		st, err := p.t.lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			if required {
				return fmt.Errorf("%w: %s is missing; a merged /usr has %s -> usr/%s", ErrNotMerged, p.t.path(name), name, name)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			return fmt.Errorf("%w: %s is a %s, not a symlink to usr/%s", ErrNotMerged, p.t.path(name), kindOf(st.Mode), name)
		}
		target, err := p.t.readlink(name)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		if c := path.Clean(target); c != "usr/"+name && c != "/usr/"+name {
			return fmt.Errorf("%w: %s points to %s, not usr/%s", ErrNotMerged, p.t.path(name), target, name)
		}
	}
	return nil
}

// checkSpecialFiles refuses device nodes, FIFOs and sockets in /usr: the
// commit would, after it has started taking the tree.
func (p *plan) checkSpecialFiles() error {
	return filepath.WalkDir(p.t.path("usr"), func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		if d.Type()&(fs.ModeDevice|fs.ModeNamedPipe|fs.ModeSocket|fs.ModeCharDevice) != 0 {
			return fmt.Errorf("%w: %s is a %s; /usr may not hold device nodes, FIFOs or sockets", ErrRefused, q, kindOfType(d.Type()))
		}
		return nil
	})
}

func kindOfType(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "device node"
}

// findKernels: usr/lib/modules/KVER/vmlinuz is where a tx carries its
// kernel; Debian keeps it in /boot/vmlinuz-KVER, so it is copied from
// there when the modules directory has none.
func (p *plan) findKernels() error {
	const mods = "usr/lib/modules"
	var names []string
	if fd, err := p.t.openDir(mods); err == nil {
		f := os.NewFile(uintptr(fd), p.t.path(mods))
		des, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("%w: read %s: %w", ErrRefused, p.t.path(mods), err)
		}
		for _, de := range des {
			if de.IsDir() && !strings.ContainsAny(de.Name(), " \t\r\n\"") {
				names = append(names, de.Name())
			}
		}
	}
	for _, k := range names {
		vm := path.Join(mods, k, "vmlinuz")
		st, err := p.t.lstat(vm)
		if err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			p.kvers = append(p.kvers, k)
			continue
		}
		if err == nil {
			return fmt.Errorf("%w: %s is a %s", ErrNoKernel, p.t.path(vm), kindOf(st.Mode))
		}
		from := "boot/vmlinuz-" + k
		if st, err := p.t.lstat(from); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			p.kernels = append(p.kernels, kernelCopy{kver: k, from: from, to: vm})
			p.kvers = append(p.kvers, k)
		}
	}
	if len(p.kvers) == 0 {
		return fmt.Errorf("%w: no %s, and no %s for a KVER in %s", ErrNoKernel,
			p.t.path(mods+"/KVER/vmlinuz"), p.t.path("boot/vmlinuz-KVER"), p.t.path(mods))
	}
	return nil
}

func isEFI(b []byte) bool { return len(b) >= 2 && b[0] == 'M' && b[1] == 'Z' }

// findSystemdBoot: the OS's own systemd-boot (systemd-boot-efi), else the
// host's.
func (p *plan) findSystemdBoot() error {
	b, err := p.t.readFile(TreeSystemdBoot, maxEFI)
	switch {
	case err == nil:
		if !isEFI(b) {
			return fmt.Errorf("%w: %s is not an EFI binary", ErrNoSystemdBoot, p.t.path(TreeSystemdBoot))
		}
		p.sdboot, p.sdbootFrom = b, p.t.path(TreeSystemdBoot)
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %w", ErrNoSystemdBoot, err)
	}
	b, err = readHostEFI(p.o.HostSystemdBoot)
	if err != nil {
		return fmt.Errorf("%w: neither %s nor %s (install systemd-boot-efi): %w", ErrNoSystemdBoot,
			p.t.path(TreeSystemdBoot), p.o.HostSystemdBoot, err)
	}
	p.sdboot, p.sdbootFrom = b, p.o.HostSystemdBoot
	return nil
}

func readHostEFI(name string) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxEFI))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if !isEFI(b) {
		return nil, fmt.Errorf("%s is not an EFI binary", name)
	}
	return b, nil
}

// findTools: bootctl, initagent and mkinitramfs go into usr/lib/txboot/,
// where the unit and the booted system's bootctl look for them; a tree
// that already has them keeps its own. The initrd is built by the host's
// initagent and mkinitramfs (a tree is data until it has booted: nothing
// in it runs here), so those must be found even when the tree has copies.
func (p *plan) findTools() error {
	for _, tc := range []toolCopy{{"bootctl", p.o.Bootctl}, {"initagent", p.o.Initagent}, {"mkinitramfs", p.o.Mkinitramfs}} {
		rel := path.Join(ToolsDir, tc.name)
		st, err := p.t.lstat(rel)
		kept := err == nil
		if kept && st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("%w: %s is a %s", ErrRefused, p.t.path(rel), kindOf(st.Mode))
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		if kept && tc.name == "bootctl" {
			p.keptTools = append(p.keptTools, tc.name)
			continue
		}
		flag := "--" + tc.name
		if tc.name == "bootctl" {
			flag = "a bootctl binary"
		}
		if tc.src == "" {
			return fmt.Errorf("%w: %s not found (pass %s, or put it next to bootctl or on $PATH; the initrd is never built with the tree's own)", ErrRefused, tc.name, flag)
		}
		if fi, err := os.Stat(tc.src); err != nil || !fi.Mode().IsRegular() {
			if err == nil {
				err = errors.New("not a regular file")
			}
			return fmt.Errorf("%w: %s %s: %w (pass %s)", ErrRefused, tc.name, tc.src, err, flag)
		}
		if kept {
			p.keptTools = append(p.keptTools, tc.name)
		} else {
			p.tools = append(p.tools, tc)
		}
	}
	return nil
}

// checkUnits: txboot's units and the links their [Install] sections ask
// for; a foreign file where a link goes is refused, not replaced.
func (p *plan) checkUnits() error {
	for _, u := range systemd.Units() {
		up, err := p.checkUnit(u)
		if err != nil {
			return err
		}
		p.units = append(p.units, up)
	}
	return nil
}

func (p *plan) checkUnit(u systemd.Unit) (unitPlan, error) {
	up := unitPlan{Unit: u}
	links, err := enableLinks(u.Data, u.Name)
	if err != nil {
		return up, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	up.links = links
	rel := path.Join(UnitDir, u.Name)
	st, err := p.t.lstat(rel)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		up.state = unitNew
	case err != nil:
		return up, fmt.Errorf("%w: %w", ErrRefused, err)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return up, fmt.Errorf("%w: %s is a %s", ErrRefused, p.t.path(rel), kindOf(st.Mode))
	default:
		old, err := p.t.readFile(rel, 1<<20)
		if err != nil {
			return up, fmt.Errorf("%w: %w", ErrRefused, err)
		}
		up.state, up.old, up.oldMode = unitReplace, old, fs.FileMode(st.Mode&0o7777)
		if bytes.Equal(old, u.Data) {
			up.state = unitSame
		}
	}
	for _, l := range links {
		if err := p.checkLink(u.Name, path.Join(l.dir, u.Name)); err != nil {
			return up, err
		}
	}
	return up, nil
}

// checkLink: a link already pointing at the unit is kept; anything else
// there is refused.
func (p *plan) checkLink(name, lrel string) error {
	st, err := p.t.lstat(lrel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if target, err := p.t.readlink(lrel); err == nil && path.Clean(target) == unitTarget(name) {
			p.linkKept[lrel] = true
			return nil
		} else if err == nil {
			return fmt.Errorf("%w: %s exists (-> %s); remove it to enable txboot's unit", ErrRefused, p.t.path(lrel), target)
		}
	}
	return fmt.Errorf("%w: %s exists (a %s); remove it to enable txboot's unit", ErrRefused, p.t.path(lrel), kindOf(st.Mode))
}

// findRootArg: --root-arg, else root= in kernel/cmdline, else the UUID of
// the filesystem mounted at ROOT.
func (p *plan) findRootArg() error {
	kc, err := bls.ReadKernelCmdline(p.root)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	cmdlinePath := kc.Path
	if cmdlinePath == "" {
		cmdlinePath = p.t.path("etc/kernel/cmdline")
	}
	if !p.o.OptionsSet && len(kc.Dropped) > 0 {
		return fmt.Errorf("%w: %s has %s: txboot writes root=, initrd= and txboot.* into every entry itself; remove them",
			ErrRefused, kc.Path, strings.Join(kc.Dropped, " "))
	}
	if err := bls.CheckOptions(p.o.Options); err != nil {
		return fmt.Errorf("%w: --options: %w", ErrRefused, err)
	}
	switch {
	case p.o.RootArg != "":
		p.rootArg, p.rootArgFrom, p.rootArgSaved = p.o.RootArg, "--root-arg", p.o.RootArg
	case kc.Root != "":
		p.rootArg, p.rootArgFrom = kc.Root, kc.Path
	default:
		arg, err := rootArgFromMount(p.o.Mountinfo, p.root)
		if err != nil {
			return fmt.Errorf("%w: %w; pass --root-arg", ErrNoRootArg, err)
		}
		if arg == "" {
			return fmt.Errorf("%w: pass --root-arg (e.g. --root-arg PARTUUID=…): %s has no root= and %s is not a mount point",
				ErrNoRootArg, cmdlinePath, p.root)
		}
		p.rootArg, p.rootArgFrom, p.rootArgSaved = arg, "the filesystem mounted at "+p.root, arg
	}
	if strings.ContainsAny(p.rootArg, " \t\r\n\x00\"") {
		return fmt.Errorf("%w: root= %q (from %s) cannot go on a command line", ErrRefused, p.rootArg, p.rootArgFrom)
	}
	return nil
}

// undoStep reverses one change to ROOT: a created file, link or directory
// is removed; a replaced file gets its old content back; a renamed one
// goes back; an empty directory a rename replaced is made again.
type undoStep struct {
	rel     string
	dir     bool
	old     []byte
	oldMode fs.FileMode
	restore bool
	from    string // rel was renamed from here
	mkdir   bool   // rel was an empty directory (oldMode)
}

type undoLog []undoStep

func (u *undoLog) created(rel string) { *u = append(*u, undoStep{rel: rel}) }
func (u *undoLog) createdDirs(rels []string) {
	for _, r := range rels {
		*u = append(*u, undoStep{rel: r, dir: true})
	}
}

// run undoes, newest first; what it could not undo is returned by path.
func (u undoLog) run(t *tree) []string {
	var left []string
	for i := len(u) - 1; i >= 0; i-- {
		s := u[i]
		var err error
		switch {
		case s.from != "":
			err = t.rename(s.rel, s.from, true)
		case s.mkdir:
			err = t.mkdir(s.rel, s.oldMode)
		case s.restore:
			err = t.writeFile(s.rel, bytes.NewReader(s.old), s.oldMode)
		default:
			err = t.remove(s.rel, s.dir)
		}
		if err != nil {
			left = append(left, t.path(s.rel))
		}
	}
	return left
}

// install changes ROOT: the files the system needs to boot through txboot,
// then the commit of ROOT/usr as tx 1, then the ESP. Until the commit is
// recorded a failure undoes every change; after it, the error says what
// was done and that a rerun finishes.
func (p *plan) install() (res *Result, err error) {
	// First: a commit onto a filesystem with the feature seals as it
	// stores; not undone (it changes nothing a filesystem without it had).
	enableVerity(p.o.Mountinfo, p.root, p.o.Run, p.o.Log)
	var undo undoLog
	defer func() {
		if err != nil && res == nil { // nothing committed: put ROOT back
			if left := undo.run(p.t); len(left) > 0 {
				err = fmt.Errorf("%w; could not undo, remove by hand: %s", err, strings.Join(left, " "))
			}
		}
	}()
	for _, step := range []func(*undoLog) error{p.copyKernels, p.copyTools, p.installUnits, p.installPkgDB} {
		if err := step(&undo); err != nil {
			return nil, err
		}
	}
	_, serr := p.t.lstat(txstore.DirName)
	storeExisted := serr == nil
	s, err := txstore.Open(p.root, txstore.Options{Create: true, Timeout: p.o.Timeout})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	tx, st, err := p.commitUsr(s, storeExisted, &undo)
	if err != nil {
		return nil, err
	}
	return &Result{Tx: tx, Stats: st}, p.finish(s, tx)
}

// copyKernels puts each kernel where txboot ships it, in /usr.
func (p *plan) copyKernels(undo *undoLog) error {
	t := p.t
	for _, k := range p.kernels {
		f, err := t.openRegular(k.from)
		if err != nil {
			return err
		}
		err = t.writeFile(k.to, f, 0o644)
		f.Close()
		if err != nil {
			return err
		}
		undo.created(k.to)
		p.log("kernel %s: copied %s to %s", k.kver, t.path(k.from), t.path(k.to))
	}
	return nil
}

// copyTools copies the running system's txboot tools into ROOT's /usr.
func (p *plan) copyTools(undo *undoLog) error {
	t := p.t
	created, err := t.mkdirAll(ToolsDir)
	undo.createdDirs(created)
	if err != nil {
		return err
	}
	for _, tc := range p.tools {
		rel := path.Join(ToolsDir, tc.name)
		f, err := os.Open(tc.src)
		if err != nil {
			return err
		}
		err = t.writeFile(rel, f, 0o755)
		f.Close()
		if err != nil {
			return err
		}
		undo.created(rel)
		p.log("%s: copied %s to %s", tc.name, tc.src, t.path(rel))
	}
	for _, name := range p.keptTools {
		p.log("%s: keeping the tree's own %s", name, t.path(path.Join(ToolsDir, name)))
	}
	return nil
}

// installUnits writes txboot's units and enables them.
func (p *plan) installUnits(undo *undoLog) error {
	created, err := p.t.mkdirAll(UnitDir)
	undo.createdDirs(created)
	if err != nil {
		return err
	}
	for _, u := range p.units {
		if err := p.installUnit(u, undo); err != nil {
			return err
		}
	}
	return nil
}

// installUnit writes one unit and makes the links its [Install] asks for.
func (p *plan) installUnit(u unitPlan, undo *undoLog) error {
	t := p.t
	unitRel := path.Join(UnitDir, u.Name)
	if u.state != unitSame {
		if err := t.writeFile(unitRel, bytes.NewReader(u.Data), 0o644); err != nil {
			return err
		}
		if u.state == unitReplace {
			*undo = append(*undo, undoStep{rel: unitRel, old: u.old, oldMode: u.oldMode, restore: true})
		} else {
			undo.created(unitRel)
		}
	}
	var enabled []string
	for _, l := range u.links {
		lrel := path.Join(l.dir, u.Name)
		enabled = append(enabled, path.Base(l.dir))
		if p.linkKept[lrel] {
			continue
		}
		created, err := t.mkdirAll(l.dir)
		undo.createdDirs(created)
		if err != nil {
			return err
		}
		if err := t.symlink(unitTarget(u.Name), lrel); err != nil {
			return err
		}
		undo.created(lrel)
	}
	p.log("%s: installed as %s, enabled in %s", u.Name, t.path(unitRel), strings.Join(enabled, ", "))
	return nil
}

// commitUsr makes ROOT/usr tx 1 (by consuming it: its files become the
// store's objects by hardlink). Until it is recorded, a failure puts
// ROOT/usr back (txstore) and the caller's undo removes the rest, and
// the store too if this install created it.
func (p *plan) commitUsr(s *txstore.Store, storeExisted bool, undo *undoLog) (*txstore.Tx, *txstore.CommitStats, error) {
	t := p.t
	usr := t.path("usr")
	tx, st, err := s.Commit(usr, txstore.CommitOptions{Summary: "bootctl install", Consume: true, Made: "install"})
	if err == nil {
		if st.ConsumeErr != nil {
			p.log("warning: %v", st.ConsumeErr)
		}
		p.log("committed %s as tx %d %s: %d entries, %d files taken by hardlink", usr, tx.ID, tx.Digest, st.Entries, st.Linked)
		return tx, st, nil
	}
	s.Close()
	if _, lerr := t.lstat("usr"); lerr != nil {
		// Not put back: the next writer's open of the store does it.
		*undo = nil
		return nil, nil, fmt.Errorf("%w; %s is still held in %s: run `bootctl --root %s install --esp %s` again, whose store open puts it back first",
			err, usr, filepath.Join(p.root, txstore.DirName, "staging"), p.root, p.o.ESP)
	}
	if !storeExisted {
		if _, jerr := t.lstat(path.Join(txstore.DirName, "consume.json")); errors.Is(jerr, fs.ErrNotExist) {
			os.RemoveAll(filepath.Join(p.root, txstore.DirName))
		}
	}
	return nil, nil, fmt.Errorf("%w (%s was put back and install's changes undone; files taken by hardlink may have lost their write bits)", err, usr)
}

// finish leaves the empty /usr mount point, systemd-boot and the entries;
// a failure says what was done and that a rerun finishes.
func (p *plan) finish(s *txstore.Store, tx *txstore.Tx) error {
	usr := p.t.path("usr")
	done := []string{fmt.Sprintf("tx %d committed from %s", tx.ID, usr)}
	late := func(err error) error {
		return fmt.Errorf("%w; done: %s; run `bootctl --root %s install --esp %s` again to finish", trimmed{err}, strings.Join(done, ", "), p.root, p.o.ESP)
	}
	if err := p.emptyUsr(); err != nil {
		return late(err)
	}
	done = append(done, usr+" is an empty mount point")
	p.log("%s is now an empty mount point (mode %04o)", usr, p.usrMode)
	if err := installBootloader(p.o.ESP, p.sdboot, p.sdbootFrom, false, p.o.Log); err != nil {
		return late(err)
	}
	done = append(done, "systemd-boot on "+p.o.ESP)
	p.log("entries: root=%s (from %s)", p.rootArg, p.rootArgFrom)
	if err := p.o.Entries(s, tx, p.rootArgSaved); err != nil {
		return late(err)
	}
	return nil
}

// trimmed is an error without trailing white space in its text: a child
// process's output ends in a newline, which must not split a summary line.
type trimmed struct{ error }

func (e trimmed) Error() string { return strings.TrimRightFunc(e.error.Error(), unicode.IsSpace) }
func (e trimmed) Unwrap() error { return e.error }

// emptyUsr recreates ROOT/usr, now in the store, as an empty directory
// with its old mode and owner: the mount point initagent binds the tx on.
func (p *plan) emptyUsr() error {
	return makeUsr(p.t, p.usrMode, p.usrUID, p.usrGID)
}

func makeUsr(t *tree, mode uint32, uid, gid int) error {
	st, err := t.lstat("usr")
	if err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%s is a %s; it must be an empty directory", t.path("usr"), kindOf(st.Mode))
		}
		fd, err := t.openDir("usr")
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), t.path("usr"))
		names, _ := f.Readdirnames(1)
		f.Close()
		if len(names) > 0 {
			return fmt.Errorf("%s was not emptied (it holds %s); empty it by hand: it must be an empty mount point", t.path("usr"), names[0])
		}
		return nil
	}
	if err := unix.Mkdirat(t.fd, "usr", 0o700); err != nil {
		return &fs.PathError{Op: "mkdir", Path: t.path("usr"), Err: err}
	}
	if err := unix.Fchownat(t.fd, "usr", uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.EPERM) {
		return &fs.PathError{Op: "chown", Path: t.path("usr"), Err: err}
	}
	if err := unix.Fchmodat(t.fd, "usr", mode, 0); err != nil {
		return &fs.PathError{Op: "chmod", Path: t.path("usr"), Err: err}
	}
	if err := unix.Fsync(t.fd); err != nil {
		return &fs.PathError{Op: "fsync", Path: t.root, Err: err}
	}
	return nil
}

// installBootloader puts systemd-boot at its own path and at the
// removable-media path (which firmware boots without NVRAM entries), and
// writes loader.conf when the ESP has none. onlyMissing leaves files that
// are there alone (a re-run).
func installBootloader(esp string, sdboot []byte, from string, onlyMissing bool, log io.Writer) error {
	var wrote []string
	for _, rel := range []string{ESPSystemdBoot, ESPRemovable} {
		if onlyMissing {
			if _, err := os.Lstat(filepath.Join(esp, rel)); err == nil {
				continue
			}
		}
		if err := bls.WriteESPFile(esp, rel, sdboot, 0o644); err != nil {
			return fmt.Errorf("install systemd-boot: %w", err)
		}
		wrote = append(wrote, filepath.Join(esp, rel))
	}
	if len(wrote) > 0 {
		fmt.Fprintf(log, "install: systemd-boot: copied %s to %s\n", from, strings.Join(wrote, " and "))
	}
	if _, err := os.Lstat(filepath.Join(esp, bls.LoaderConf)); errors.Is(err, fs.ErrNotExist) {
		if err := bls.WriteESPFile(esp, bls.LoaderConf, []byte(loaderConf), 0o644); err != nil {
			return fmt.Errorf("install loader.conf: %w", err)
		}
		fmt.Fprintf(log, "install: wrote %s\n", filepath.Join(esp, bls.LoaderConf))
	}
	return nil
}

// rerun: ROOT is a txboot system already. Nothing is committed; what a
// failed first run may have left undone (the empty /usr, systemd-boot on
// the ESP) is finished, then the entries are re-synced.
func rerun(o Options, t *tree, s *txstore.Store, txs []*txstore.Tx) (*Result, error) {
	fmt.Fprintf(o.Log, "install: %s is already installed (%d txs in %s); re-syncing the entries\n", t.root, len(txs), s.Dir)
	enableVerity(o.Mountinfo, t.root, o.Run, o.Log)
	def, err := s.Default()
	if err != nil || def == 0 {
		def = txs[len(txs)-1].ID
	}
	usr := s.TreeDir(def)
	if _, err := t.lstat("usr"); errors.Is(err, fs.ErrNotExist) {
		var st unix.Stat_t
		if err := unix.Lstat(usr, &st); err != nil {
			return nil, fmt.Errorf("stat %s: %w", usr, err)
		}
		if err := makeUsr(t, st.Mode&0o7777, int(st.Uid), int(st.Gid)); err != nil {
			return nil, err
		}
		fmt.Fprintf(o.Log, "install: recreated %s (empty mount point)\n", t.path("usr"))
	}
	from := filepath.Join(usr, "lib/systemd/boot/efi/systemd-bootx64.efi")
	sdboot, err := readHostEFI(from)
	if err != nil {
		from = o.HostSystemdBoot
		sdboot, err = readHostEFI(from)
	}
	if err == nil {
		if err := installBootloader(o.ESP, sdboot, from, true, o.Log); err != nil {
			return nil, err
		}
	} else if missingBootloader(o.ESP) {
		return nil, fmt.Errorf("%w: %s lacks systemd-boot and none was found: %w", ErrNoSystemdBoot, o.ESP, err)
	}
	return &Result{Already: true}, o.Entries(s, nil, o.RootArg)
}

func missingBootloader(esp string) bool {
	for _, rel := range []string{ESPSystemdBoot, ESPRemovable} {
		if _, err := os.Lstat(filepath.Join(esp, rel)); err != nil {
			return true
		}
	}
	return false
}
