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

	"golang.org/x/sys/unix"
)

// The package database travels with /usr: dpkg's database (and apt's
// extended_states, its auto-installed marks) moves into /usr before /usr
// becomes tx 1, so every tx carries the database that describes it and
// `dpkg -l` tells the truth after any rollback. /var/lib/dpkg stays, as a
// symlink, for the programs that read it.
//
// On the running system /usr is read-only, and so is the database: dpkg
// cannot write it (EROFS, nothing half-installed is ever recorded), and
// the guard below makes a plain dpkg or apt-get say why before it starts.
// Inside `bootctl run` the working copy is writable and the guard passes.

// Paths, relative to ROOT; the …InUsr ones are relative to a tx's usr
// directory (STORE/trees/<id>/usr).
const (
	DpkgVarDir             = "var/lib/dpkg"                // where dpkg and readers look: a symlink to DpkgDir
	DpkgDir                = "usr/lib/sysimage/dpkg"       // dpkg's database (its admindir), in the tx
	DpkgDirLink            = "../../usr/lib/sysimage/dpkg" // DpkgVarDir's target
	DpkgDirInUsr           = "lib/sysimage/dpkg"
	DpkgStatusInUsr        = "lib/sysimage/dpkg/status"
	AptVarExtendedStates   = "var/lib/apt/extended_states" // apt's default, moved to AptExtendedStates
	AptStateDir            = "usr/lib/sysimage/apt"
	AptExtendedStates      = "usr/lib/sysimage/apt/extended_states"
	AptExtendedStatesInUsr = "lib/sysimage/apt/extended_states"
	AptConf                = "etc/apt/apt.conf.d/50txboot" // written when the tree has usr/bin/apt-get
	DpkgConf               = "etc/dpkg/dpkg.cfg.d/txboot"  // written when the tree has usr/bin/dpkg
	dpkgBin                = "usr/bin/dpkg"
	aptGetBin              = "usr/bin/apt-get"
)

// GuardMessage is what a plain dpkg or apt-get prints on the running
// system before it refuses (dpkg exits 2, apt-get 100).
const GuardMessage = "txboot: /usr and its package database are read-only: every change is a transaction. " +
	"Run it as one, then reboot into it: /usr/lib/txboot/bootctl run -- apt-get install PKG (or: /usr/lib/txboot/bootctl shell)"

// GuardCommand is the hook both run through sh -c: dpkg as pre-invoke
// (before it opens, locks or writes its database), apt as DPkg::Pre-Invoke
// (before it runs dpkg or writes extended_states). test -w is false on a
// read-only mount (faccessat2 reports EROFS, even for root). dpkg sets
// DPKG_ADMINDIR, so `dpkg --root DIR` on a txboot host checks DIR's
// database, not its own. apt.conf has no escape for '"' and reads %XX,
// so the command has neither (TestGuard).
const GuardCommand = "test -w ${DPKG_ADMINDIR:-/var/lib/dpkg}/ || { echo '" + GuardMessage + "' >&2; exit 1; }"

// ErrPkgDB: the package database cannot be moved into /usr.
var ErrPkgDB = fmt.Errorf("%w: package database", ErrRefused)

func aptConfData() []byte {
	return []byte("// Written by bootctl install (txboot). apt's auto-installed marks travel\n" +
		"// with /usr, like dpkg's database (/var/lib/dpkg -> /usr/lib/sysimage/dpkg);\n" +
		"// where /usr is read-only (the running system) dpkg is not run.\n" +
		"Dir::State::extended_states \"/" + AptExtendedStates + "\";\n" +
		"DPkg::Pre-Invoke { \"" + GuardCommand + "\"; };\n")
}

func dpkgConfData() []byte {
	return []byte("# Written by bootctl install (txboot). dpkg's database is in /usr\n" +
		"# (/var/lib/dpkg -> /usr/lib/sysimage/dpkg); where /usr is read-only (the\n" +
		"# running system) dpkg refuses before it touches it.\n" +
		"pre-invoke=" + GuardCommand + "\n")
}

// pkgdbPlan is what checkPkgDB found; installPkgDB carries it out.
type pkgdbPlan struct {
	move       bool        // DpkgVarDir is a directory: move it to DpkgDir
	linkOnly   bool        // DpkgVarDir is missing, DpkgDir is there (a cut-short install): link it
	done       bool        // DpkgVarDir is the link already
	emptyMode  fs.FileMode // DpkgDir is an empty directory (ModeDir|perm; the move replaces it); 0: none
	moveStates bool        // AptVarExtendedStates exists: move it to AptExtendedStates
	apt        bool        // usr/bin/apt-get: AptStateDir and AptConf
	confs      []confFile
}

// confFile is a configuration file install writes, like the unit.
type confFile struct {
	rel     string
	data    []byte
	state   int // unitNew, unitSame, unitReplace
	old     []byte
	oldMode fs.FileMode
}

// checkPkgDB finds what moving the package database into /usr takes, and
// refuses what it cannot do safely, before anything is changed.
func (p *plan) checkPkgDB() error {
	usr, err := p.t.lstat("usr")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err := p.checkDpkgDir(usr.Dev); err != nil {
		return err
	}
	if err := p.checkExtendedStates(usr.Dev); err != nil {
		return err
	}
	_, err = p.t.lstat(aptGetBin)
	p.pkg.apt = err == nil
	_, derr := p.t.lstat(dpkgBin)
	for _, c := range []struct {
		want bool
		rel  string
		data []byte
	}{{p.pkg.apt, AptConf, aptConfData()}, {derr == nil, DpkgConf, dpkgConfData()}} {
		if !c.want {
			continue
		}
		cf, err := p.checkConf(c.rel, c.data)
		if err != nil {
			return err
		}
		p.pkg.confs = append(p.pkg.confs, cf)
	}
	return nil
}

// checkDpkgDir: var/lib/dpkg is a directory to move, the link already, or
// missing; anything else is refused.
func (p *plan) checkDpkgDir(usrDev uint64) error {
	t := p.t
	st, err := t.lstat(DpkgVarDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		tst, terr := t.lstat(DpkgDir)
		p.pkg.linkOnly = terr == nil && tst.Mode&unix.S_IFMT == unix.S_IFDIR
		return nil
	case err != nil:
		return fmt.Errorf("%w: %w", ErrPkgDB, err)
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		target, err := t.readlink(DpkgVarDir)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrPkgDB, err)
		}
		if c := path.Clean(target); c != DpkgDirLink && c != "/"+DpkgDir {
			return fmt.Errorf("%w: %s is a symlink to %s, not to %s; txboot keeps dpkg's database in /%s", ErrPkgDB, t.path(DpkgVarDir), target, DpkgDirLink, DpkgDir)
		}
		if tst, err := t.lstat(DpkgDir); err != nil || tst.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%w: %s points to %s, which is not a directory", ErrPkgDB, t.path(DpkgVarDir), t.path(DpkgDir))
		}
		p.pkg.done = true
		return nil
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%w: %s is a %s, not dpkg's database directory", ErrPkgDB, t.path(DpkgVarDir), kindOf(st.Mode))
	case st.Dev != usrDev:
		return fmt.Errorf("%w: %s is on another filesystem than %s; move it into %s by hand and leave the symlink %s -> %s",
			ErrPkgDB, t.path(DpkgVarDir), t.path("usr"), t.path(DpkgDir), t.path(DpkgVarDir), DpkgDirLink)
	}
	if err := p.checkDpkgTarget(); err != nil {
		return err
	}
	// The commit refuses these in /usr, after it has started taking it.
	err = filepath.WalkDir(t.path(DpkgVarDir), func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("%w: %w", ErrPkgDB, err)
		}
		if d.Type()&(fs.ModeDevice|fs.ModeNamedPipe|fs.ModeSocket|fs.ModeCharDevice) != 0 {
			return fmt.Errorf("%w: %s is a %s; it cannot move into /usr", ErrPkgDB, q, kindOfType(d.Type()))
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.pkg.move = true
	return nil
}

// checkDpkgTarget: usr/lib/sysimage/dpkg is missing or an empty directory.
func (p *plan) checkDpkgTarget() error {
	t := p.t
	st, err := t.lstat(DpkgDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%w: %w", ErrPkgDB, err)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%w: %s is a %s; %s cannot move there", ErrPkgDB, t.path(DpkgDir), kindOf(st.Mode), t.path(DpkgVarDir))
	}
	name, err := t.firstName(DpkgDir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPkgDB, err)
	}
	if name != "" {
		return fmt.Errorf("%w: %s exists and is not empty (it holds %s): two package databases; keep one and remove the other",
			ErrPkgDB, t.path(DpkgDir), name)
	}
	p.pkg.emptyMode = fs.FileMode(st.Mode&0o777) | fs.ModeDir
	return nil
}

// checkExtendedStates: var/lib/apt/extended_states, if there, is a file
// that can move to usr/lib/sysimage/apt.
func (p *plan) checkExtendedStates(usrDev uint64) error {
	t := p.t
	st, err := t.lstat(AptVarExtendedStates)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%w: %w", ErrPkgDB, err)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return fmt.Errorf("%w: %s is a %s, not apt's state file", ErrPkgDB, t.path(AptVarExtendedStates), kindOf(st.Mode))
	case st.Dev != usrDev:
		return fmt.Errorf("%w: %s is on another filesystem than %s; move it to %s by hand",
			ErrPkgDB, t.path(AptVarExtendedStates), t.path("usr"), t.path(AptExtendedStates))
	}
	if _, err := t.lstat(AptExtendedStates); err == nil {
		return fmt.Errorf("%w: both %s and %s exist; keep one", ErrPkgDB, t.path(AptVarExtendedStates), t.path(AptExtendedStates))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", ErrPkgDB, err)
	}
	p.pkg.moveStates = true
	return nil
}

// checkConf: rel is missing, has data already, or is a file to replace.
func (p *plan) checkConf(rel string, data []byte) (confFile, error) {
	cf := confFile{rel: rel, data: data}
	st, err := p.t.lstat(rel)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		cf.state = unitNew
		return cf, nil
	case err != nil:
		return cf, fmt.Errorf("%w: %w", ErrPkgDB, err)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return cf, fmt.Errorf("%w: %s is a %s", ErrPkgDB, p.t.path(rel), kindOf(st.Mode))
	}
	old, err := p.t.readFile(rel, 1<<20)
	if err != nil {
		return cf, fmt.Errorf("%w: %w", ErrPkgDB, err)
	}
	cf.state, cf.old, cf.oldMode = unitReplace, old, fs.FileMode(st.Mode&0o7777)
	if bytes.Equal(old, data) {
		cf.state = unitSame
	}
	return cf, nil
}

// installPkgDB moves the database into /usr and writes the guard; each
// change is in undo.
func (p *plan) installPkgDB(undo *undoLog) error {
	if err := p.moveDpkgDir(undo); err != nil {
		return err
	}
	if err := p.moveExtendedStates(undo); err != nil {
		return err
	}
	for _, cf := range p.pkg.confs {
		if err := p.writeConf(cf, undo); err != nil {
			return err
		}
	}
	return nil
}

// moveDpkgDir renames var/lib/dpkg into usr/lib/sysimage (one filesystem:
// nothing is copied) and leaves the symlink. A crash between the two
// leaves var/lib/dpkg missing, which the next install links (linkOnly).
func (p *plan) moveDpkgDir(undo *undoLog) error {
	t := p.t
	switch {
	case p.pkg.done:
		p.log("dpkg database: already in %s (%s -> %s)", t.path(DpkgDir), t.path(DpkgVarDir), DpkgDirLink)
		return nil
	case !p.pkg.move && !p.pkg.linkOnly:
		return nil
	}
	if p.pkg.move {
		created, err := t.mkdirAll(path.Dir(DpkgDir))
		undo.createdDirs(created)
		if err != nil {
			return err
		}
		if err := t.rename(DpkgVarDir, DpkgDir, p.pkg.emptyMode == 0); err != nil {
			return err
		}
		if p.pkg.emptyMode != 0 {
			// The empty directory it replaced: made again after the
			// rename back (undo runs newest first).
			*undo = append(*undo, undoStep{rel: DpkgDir, mkdir: true, oldMode: p.pkg.emptyMode})
		}
		*undo = append(*undo, undoStep{rel: DpkgDir, from: DpkgVarDir})
	}
	if err := t.symlink(DpkgDirLink, DpkgVarDir); err != nil {
		return err
	}
	undo.created(DpkgVarDir)
	how := "moved " + t.path(DpkgVarDir) + " to " + t.path(DpkgDir)
	if p.pkg.linkOnly {
		how = "in " + t.path(DpkgDir) + " already (an earlier install was cut short)"
	}
	p.log("dpkg database: %s, so it travels with /usr; %s -> %s for readers", how, t.path(DpkgVarDir), DpkgDirLink)
	return nil
}

// moveExtendedStates: apt's auto-installed marks go with dpkg's database.
func (p *plan) moveExtendedStates(undo *undoLog) error {
	t := p.t
	if !p.pkg.apt && !p.pkg.moveStates {
		return nil
	}
	created, err := t.mkdirAll(AptStateDir)
	undo.createdDirs(created)
	if err != nil {
		return err
	}
	if !p.pkg.moveStates {
		return nil
	}
	if err := t.rename(AptVarExtendedStates, AptExtendedStates, true); err != nil {
		return err
	}
	*undo = append(*undo, undoStep{rel: AptExtendedStates, from: AptVarExtendedStates})
	p.log("apt: moved %s to %s", t.path(AptVarExtendedStates), t.path(AptExtendedStates))
	return nil
}

func (p *plan) writeConf(cf confFile, undo *undoLog) error {
	t := p.t
	what := "apt's extended_states in /usr; apt-get refuses where /usr is read-only, naming bootctl run"
	if cf.rel == DpkgConf {
		what = "dpkg refuses where /usr is read-only, naming bootctl run"
	}
	if cf.state == unitSame {
		p.log("%s: up to date (%s)", t.path(cf.rel), what)
		return nil
	}
	created, err := t.mkdirAll(path.Dir(cf.rel))
	undo.createdDirs(created)
	if err != nil {
		return err
	}
	if err := t.writeFile(cf.rel, bytes.NewReader(cf.data), 0o644); err != nil {
		return err
	}
	if cf.state == unitReplace {
		*undo = append(*undo, undoStep{rel: cf.rel, old: cf.old, oldMode: cf.oldMode, restore: true})
	} else {
		undo.created(cf.rel)
	}
	p.log("wrote %s (%s)", t.path(cf.rel), what)
	return nil
}

// rename moves from to to, both below the tree, and fsyncs both
// directories. noReplace: fail rather than replace what is at to.
func (t *tree) rename(from, to string, noReplace bool) error {
	ffd, err := t.openDir(path.Dir(from))
	if err != nil {
		return err
	}
	defer unix.Close(ffd)
	tfd, err := t.openDir(path.Dir(to))
	if err != nil {
		return err
	}
	defer unix.Close(tfd)
	var flags uint
	if noReplace {
		flags = unix.RENAME_NOREPLACE
	}
	if err := unix.Renameat2(ffd, path.Base(from), tfd, path.Base(to), flags); err != nil {
		return &os.LinkError{Op: "rename", Old: t.path(from), New: t.path(to), Err: err}
	}
	if err := unix.Fsync(tfd); err != nil {
		return &fs.PathError{Op: "fsync", Path: t.path(path.Dir(to)), Err: err}
	}
	if err := unix.Fsync(ffd); err != nil {
		return &fs.PathError{Op: "fsync", Path: t.path(path.Dir(from)), Err: err}
	}
	return nil
}

// mkdir creates rel with exactly mode's permission bits (no umask) and
// fsyncs its directory.
func (t *tree) mkdir(rel string, mode fs.FileMode) error {
	dfd, err := t.openDir(path.Dir(rel))
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Mkdirat(dfd, path.Base(rel), 0o700); err != nil {
		return &fs.PathError{Op: "mkdir", Path: t.path(rel), Err: err}
	}
	if err := unix.Fchmodat(dfd, path.Base(rel), uint32(mode.Perm()), 0); err != nil {
		return &fs.PathError{Op: "chmod", Path: t.path(rel), Err: err}
	}
	return unix.Fsync(dfd)
}

// firstName returns one name in directory rel, "" when it is empty.
func (t *tree) firstName(rel string) (string, error) {
	fd, err := t.openDir(rel)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), t.path(rel))
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return names[0], nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read %s: %w", t.path(rel), err)
	}
	return "", nil
}
