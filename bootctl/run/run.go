package run

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/txboot/txboot/bootctl/pkgdb"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/etcstate"
	"github.com/txboot/txboot/txstore/records"
	"golang.org/x/sys/unix"
)

// DefaultSourceDateEpoch is SOURCE_DATE_EPOCH for the command when the
// caller's environment has none: build tools that honour it (Python's
// bytecode, gzip, man-db…) then write the same bytes on every machine,
// so the same command from the same tx with the same .debs gives the
// same tx digest. 2000-01-01T00:00:00Z.
const DefaultSourceDateEpoch = "946684800"

// Options of one run.
type Options struct {
	Root        string   // the system root: "/" for the running system
	From        uint64   // the source tx; 0: the default (a pending one included)
	Argv        []string // the command
	Interactive bool     // bootctl shell: no non-interactive defaults
	Commit      txstore.CommitOptions
	Stdin       io.Reader
	Stdout      io.Writer
	Stderr      io.Writer
	Env         []string // extra variables for the command (TERM, …)
	// Log gets bootctl's own lines (not the command's output).
	Log func(format string, a ...any)
}

// Result says what a run did.
type Result struct {
	Code       int // the command's exit code (128+N: killed by signal N)
	From       *txstore.Tx
	Tx         *txstore.Tx // the new tx; nil when nothing was recorded
	Stats      *txstore.CommitStats
	Unchanged  bool // the command succeeded and changed nothing
	EtcChanged bool
	Kernels    []string // kernels the command installed into the new tx
	Dropped    []string // kernels whose package it removed
	Changes    []records.PkgChange
}

// Run runs o.Argv in a working copy of the source tx and commits what it
// changed. The store must be open for writing: its writer lock is held
// for the whole run, so nothing else changes the store meanwhile (and a
// crash leaves only staging/run-*, which the next writer's open removes;
// the namespace's mounts die with the child).
func Run(s *txstore.Store, o Options) (*Result, error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if len(o.Argv) == 0 {
		return nil, errors.New("run: no command")
	}
	from, err := source(s, o.From)
	if err != nil {
		return nil, err
	}
	if err := checkPkgDB(o.Root); err != nil {
		return nil, err
	}
	w, err := prepare(s, o.Root, from)
	if err != nil {
		return nil, err
	}
	defer w.remove()
	res := &Result{From: from}
	st, err := w.runChild(&o)
	if err != nil {
		return nil, err
	}
	res.Code, res.Kernels, res.Dropped = st.Code, st.Kernels, st.Dropped
	if st.Code != 0 {
		return res, nil
	}
	return res, w.commit(s, &o, res)
}

// source is the tx a run starts from.
func source(s *txstore.Store, id uint64) (*txstore.Tx, error) {
	if id == 0 {
		def, err := s.Default()
		if err != nil {
			return nil, err
		}
		if def == 0 {
			return nil, fmt.Errorf("run: %w: the store has no default tx (give --from ID)", txstore.ErrNotFound)
		}
		id = def
	}
	t, err := s.Get(id)
	if err != nil {
		return nil, fmt.Errorf("run: tx %d: %w", id, err)
	}
	if _, err := os.Stat(s.TreeDir(id)); err != nil {
		return nil, fmt.Errorf("run: tx %d has no tree: %w", id, err)
	}
	if err := mayExecute(s, t); err != nil {
		return nil, err
	}
	return t, nil
}

// ErrNotBooted: the source tx has never booted and was not made on this
// machine by install or run, so its programs (the command's sh, apt,
// dpkg, maintainer scripts) would run before the tx ever proved itself.
var ErrNotBooted = errors.New("run: the source tx has never booted")

// mayExecute allows a source tx whose programs may run: one that has
// booted, or one this machine made from such a tx (install from its own
// tree, run: stacked runs before one reboot), all the way up the chain.
// A pulled or committed tx is data until it has booted.
func mayExecute(s *txstore.Store, t *txstore.Tx) error {
	first := t
	for range 10000 {
		if t.State == txstore.StateGood || t.State == txstore.StateTrying || t.Tries > 0 || t.Made == "install" {
			return nil
		}
		if t.Made != "run" || t.Parent == 0 {
			break
		}
		p, err := s.Get(t.Parent)
		if err != nil {
			break
		}
		t = p
	}
	return fmt.Errorf("%w: tx %d (%s) would run programs of tx %d, which came from a commit or a pull and has not booted yet; "+
		"boot it first, or give --from a tx that has booted", ErrNotBooted, first.ID, printableSummary(first.Summary), t.ID)
}

func printableSummary(s string) string {
	if s == "" {
		return "no summary"
	}
	return summaryOf([]string{s})
}

// checkPkgDB refuses a Debian system whose dpkg database is a directory
// in /var: runs would change it for every tx at once.
func checkPkgDB(root string) error {
	p := filepath.Join(root, "var/lib/dpkg")
	fi, err := os.Lstat(p)
	if err != nil || fi.Mode()&fs.ModeSymlink != 0 {
		return nil // not Debian, or already /usr/lib/sysimage/dpkg
	}
	return fmt.Errorf("%w: %s is a directory, so the packages it records would not follow the tx that boots; "+
		"systems installed by this bootctl keep it in /usr/lib/sysimage/dpkg (see the README, \"Change a running system\")", ErrNoPkgDB, p)
}

// work is one run's directory under the store's staging/.
type work struct {
	dir, root, storeDir string
	from                *txstore.Tx
	sp                  Spec
	etcState            string // base/ and new/: CommitOptions.Etc
}

func prepare(s *txstore.Store, root string, from *txstore.Tx) (*work, error) {
	absRoot, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "run-")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	w := &work{dir: dir, root: absRoot, storeDir: s.Dir, from: from, etcState: filepath.Join(dir, "etcstate")}
	if err := w.setup(s); err != nil {
		w.remove()
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	return w, nil
}

func (w *work) setup(s *txstore.Store) error {
	for _, d := range []string{"usr-upper", "usr-work", "etc-upper", "etc-work", "mnt", "mnt.scratch", "etcstate"} {
		if err := os.Mkdir(filepath.Join(w.dir, d), 0o700); err != nil {
			return err
		}
	}
	// The lower of a working copy must not change under it: /etc is
	// copied, and the copy is also the base of the 3-way merge at boot.
	base := filepath.Join(w.etcState, "base")
	if err := etcstate.Copy(filepath.Join(w.root, "etc"), base); err != nil {
		return fmt.Errorf("copy %s/etc: %w", w.root, err)
	}
	lower, err := etcstate.View(w.root, w.from.ID, filepath.Join(w.dir, "etc-view"))
	if err != nil {
		return fmt.Errorf("the /etc of tx %d: %w", w.from.ID, err)
	}
	if lower == filepath.Join(w.root, "etc") {
		lower = base
	}
	// An overlay's root takes its upper directory's mode and owner.
	if err := sameOwnerMode(filepath.Join(w.dir, "usr-upper"), s.TreeDir(w.from.ID)); err != nil {
		return err
	}
	if err := sameOwnerMode(filepath.Join(w.dir, "etc-upper"), lower); err != nil {
		return err
	}
	d := func(n string) string { return filepath.Join(w.dir, n) }
	w.sp = Spec{Root: w.root, Mnt: d("mnt"), StoreDir: w.storeDir, UsrLower: s.TreeDir(w.from.ID),
		UsrUpper: d("usr-upper"), UsrWork: d("usr-work"), EtcLower: lower, EtcUpper: d("etc-upper"), EtcWork: d("etc-work"),
		EtcOut: filepath.Join(w.etcState, "new"), Status: d("status.json")}
	return nil
}

// sameOwnerMode gives dir the mode and owner of like.
func sameOwnerMode(dir, like string) error {
	var st unix.Stat_t
	if err := unix.Stat(like, &st); err != nil {
		return fmt.Errorf("stat %s: %w", like, err)
	}
	if err := os.Lchown(dir, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return unix.Chmod(dir, st.Mode&0o7777)
}

func (w *work) remove() {
	if w.dir != "" {
		os.RemoveAll(w.dir)
	}
}

// runChild starts bootctl again as the child in new namespaces and waits
// for it. ^C reaches the command (same process group); bootctl stays to
// clean up. SIGTERM and SIGHUP are passed on.
func (w *work) runChild(o *Options) (*childStatus, error) {
	w.sp.Argv, w.sp.Env = o.Argv, commandEnv(o, w.from.ID)
	spec, err := json.Marshal(&w.sp)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: []string{"bootctl", ChildArg},
		Env:   []string{specEnv + "=" + string(spec), "PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr,
		SysProcAttr: &unix.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC}}
	signal.Ignore(unix.SIGINT, unix.SIGQUIT)
	defer signal.Reset(unix.SIGINT, unix.SIGQUIT)
	fwd := make(chan os.Signal, 4)
	signal.Notify(fwd, unix.SIGTERM, unix.SIGHUP)
	defer signal.Stop(fwd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: start the namespace: %w", ErrSetup, err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-fwd:
				cmd.Process.Signal(sig)
			case <-done:
				return
			}
		}
	}()
	cmd.Wait()
	close(done)
	st, err := readStatus(w.sp.Status)
	if err != nil {
		return nil, err
	}
	switch st.Stage {
	case "setup":
		return nil, fmt.Errorf("%w: %s", ErrSetup, st.Error)
	case "command":
		return nil, fmt.Errorf("run: %s", st.Error)
	case "after":
		return nil, fmt.Errorf("run: after the command: %s (nothing recorded)", st.Error)
	}
	return st, nil
}

// commandEnv is the command's whole environment: nothing of bootctl's
// but TERM (and what the caller adds). Non-interactive runs answer dpkg's
// conffile questions the safe way (keep the admin's, put the package's
// beside it as .dpkg-dist) and apt's with their defaults.
func commandEnv(o *Options, from uint64) []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
		"INITRD=No", "TXBOOT_RUN=1"}
	sde := os.Getenv("SOURCE_DATE_EPOCH")
	if sde == "" {
		sde = DefaultSourceDateEpoch
	}
	env = append(env, "SOURCE_DATE_EPOCH="+sde)
	if t := os.Getenv("TERM"); t != "" {
		env = append(env, "TERM="+t)
	}
	if !o.Interactive {
		env = append(env, "DEBIAN_FRONTEND=noninteractive", "DPKG_FORCE=confdef,confold,downgrade,security-mac")
	} else {
		env = append(env, fmt.Sprintf("PS1=(bootctl shell: tx %d + changes) \\w# ", from))
	}
	return append(env, o.Env...)
}

// commit records what the command changed as a layer over the source tx.
func (w *work) commit(s *txstore.Store, o *Options, res *Result) error {
	// The tx carries an /etc state when what it boots with differs from
	// the live /etc; the command changed /etc when the result differs
	// from what it started from (the same unless from's /etc is not the
	// live one: a pending run's, or a saved one).
	next := filepath.Join(w.etcState, "new")
	sameAsLive, err := etcstate.Equal(filepath.Join(w.etcState, "base"), next)
	if err != nil {
		return fmt.Errorf("run: compare /etc: %w", err)
	}
	sameAsFrom := sameAsLive // the command started from the live /etc's copy
	if w.sp.EtcLower != filepath.Join(w.etcState, "base") {
		if sameAsFrom, err = etcstate.Equal(w.sp.EtcLower, next); err != nil {
			return fmt.Errorf("run: compare /etc: %w", err)
		}
	}
	co := o.Commit
	co.Parent, co.Made = w.from.ID, "run"
	if co.Summary == "" {
		co.Summary = summaryOf(o.Argv)
	}
	res.EtcChanged = !sameAsFrom
	if !sameAsLive {
		co.Etc, co.EtcInherited = w.etcState, sameAsFrom
	}
	res.Changes = w.pkgChanges()
	co.PkgChanges = res.Changes
	tx, st, err := s.CommitLayer(w.from.ID, w.sp.UsrUpper, co)
	if errors.Is(err, txstore.ErrUnchanged) {
		res.Unchanged = true
		return nil
	}
	res.Tx, res.Stats = tx, st
	return err
}

// pkgChanges compares dpkg's status in the source tx with the one the
// command left in the upper directory (none there: no change).
func (w *work) pkgChanges() []records.PkgChange {
	old, ok, err := pkgdb.ReadTree(w.sp.UsrLower)
	if err != nil || !ok {
		return nil
	}
	f, err := os.Open(filepath.Join(w.sp.UsrUpper, pkgdb.StatusRel))
	if err != nil {
		return nil
	}
	defer f.Close()
	cur, err := pkgdb.Parse(f)
	if err != nil {
		return nil
	}
	return pkgdb.Diff(old, cur)
}

// summaryOf is the default summary: the command line, one line, bounded.
func summaryOf(argv []string) string {
	s := strings.Join(argv, " ")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
