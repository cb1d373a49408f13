package install

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/testkit"
	"golang.org/x/sys/unix"
)

const (
	fakeStatus = "Package: dpkg\nStatus: install ok installed\nVersion: 1.22.22\nArchitecture: amd64\n\n"
	fakeStates = "Package: libfoo\nArchitecture: amd64\nAuto-Installed: 1\n\n"
)

// debianize gives an osTree what Debian has: dpkg and apt, a database in
// /var/lib/dpkg, apt's extended_states.
func debianize(t *testing.T, root string) {
	t.Helper()
	write(t, filepath.Join(root, dpkgBin), "dpkg binary", 0o755)
	write(t, filepath.Join(root, aptGetBin), "apt-get binary", 0o755)
	write(t, filepath.Join(root, DpkgVarDir, "status"), fakeStatus, 0o644)
	write(t, filepath.Join(root, DpkgVarDir, "info/dpkg.list"), "/usr/bin/dpkg\n", 0o644)
	write(t, filepath.Join(root, DpkgVarDir, "lock"), "", 0o640)
	if err := os.MkdirAll(filepath.Join(root, DpkgVarDir, "updates"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, AptVarExtendedStates), fakeStates, 0o644)
	write(t, filepath.Join(root, "etc/apt/apt.conf.d/70debconf"), "// debconf\n", 0o644)
}

// applyPkgDB runs the pkgdb step alone on root, as install does.
func applyPkgDB(t *testing.T, root string) (undoLog, *tree, string, error) {
	t.Helper()
	tr, err := openTree(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	log := &bytes.Buffer{}
	p := &plan{o: Options{Log: log}, t: tr, root: root}
	var undo undoLog
	if err := p.checkPkgDB(); err != nil {
		return nil, tr, log.String(), err
	}
	err = p.installPkgDB(&undo)
	return undo, tr, log.String(), err
}

func readlinkIs(t *testing.T, p, want string) {
	t.Helper()
	if got, err := os.Readlink(p); err != nil || got != want {
		t.Errorf("%s -> %q (%v), want -> %q", p, got, err, want)
	}
}

func fileIs(t *testing.T, p, want string) {
	t.Helper()
	if b, err := os.ReadFile(p); err != nil || string(b) != want {
		t.Errorf("%s: %q %v, want %q", p, b, err, want)
	}
}

func missing(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (%v)", p, err)
	}
}

// The step moves what is there, links it, writes the guard; undo puts
// the tree back exactly; a second application changes nothing.
func TestPkgDBMove(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, r string)
		check func(t *testing.T, r string)
		logs  []string
	}{
		{"debian: dpkg and apt", debianize, func(t *testing.T, r string) {
			fileIs(t, filepath.Join(r, DpkgDir, "status"), fakeStatus)
			fileIs(t, filepath.Join(r, DpkgDir, "info/dpkg.list"), "/usr/bin/dpkg\n")
			fileIs(t, filepath.Join(r, DpkgVarDir, "status"), fakeStatus) // readers, through the link
			fileIs(t, filepath.Join(r, AptExtendedStates), fakeStates)
			missing(t, filepath.Join(r, AptVarExtendedStates))
			fileIs(t, filepath.Join(r, AptConf), string(aptConfData()))
			fileIs(t, filepath.Join(r, DpkgConf), string(dpkgConfData()))
		}, []string{"dpkg database: moved ROOT/var/lib/dpkg to ROOT/usr/lib/sysimage/dpkg", "ROOT/var/lib/dpkg -> ../../usr/lib/sysimage/dpkg",
			"apt: moved ROOT/var/lib/apt/extended_states to ROOT/usr/lib/sysimage/apt/extended_states", "wrote ROOT/etc/apt/apt.conf.d/50txboot", "wrote ROOT/etc/dpkg/dpkg.cfg.d/txboot"}},
		{"apt without extended_states: its directory is made", func(t *testing.T, r string) {
			debianize(t, r)
			os.Remove(filepath.Join(r, AptVarExtendedStates))
		}, func(t *testing.T, r string) {
			if des, err := os.ReadDir(filepath.Join(r, AptStateDir)); err != nil || len(des) != 0 {
				t.Errorf("%s: %v %v, want an empty directory", AptStateDir, des, err)
			}
		}, []string{"wrote ROOT/etc/apt/apt.conf.d/50txboot"}},
		{"dpkg without apt: no apt.conf", func(t *testing.T, r string) {
			debianize(t, r)
			os.Remove(filepath.Join(r, aptGetBin))
			os.Remove(filepath.Join(r, AptVarExtendedStates))
		}, func(t *testing.T, r string) {
			missing(t, filepath.Join(r, AptConf))
			missing(t, filepath.Join(r, AptStateDir))
			fileIs(t, filepath.Join(r, DpkgConf), string(dpkgConfData()))
			readlinkIs(t, filepath.Join(r, DpkgVarDir), DpkgDirLink)
		}, []string{"dpkg database: moved"}},
		{"an empty usr/lib/sysimage/dpkg is replaced", func(t *testing.T, r string) {
			debianize(t, r)
			if err := os.MkdirAll(filepath.Join(r, DpkgDir), 0o750); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, r string) {
			fileIs(t, filepath.Join(r, DpkgDir, "status"), fakeStatus)
		}, []string{"dpkg database: moved"}},
		{"cut short after the move: only the link is made", func(t *testing.T, r string) {
			debianize(t, r)
			os.MkdirAll(filepath.Join(r, "usr/lib/sysimage"), 0o755)
			if err := os.Rename(filepath.Join(r, DpkgVarDir), filepath.Join(r, DpkgDir)); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, r string) {
			readlinkIs(t, filepath.Join(r, DpkgVarDir), DpkgDirLink)
			fileIs(t, filepath.Join(r, DpkgDir, "status"), fakeStatus)
		}, []string{"in ROOT/usr/lib/sysimage/dpkg already (an earlier install was cut short)"}},
		{"not Debian: nothing", func(t *testing.T, r string) {}, func(t *testing.T, r string) {
			for _, rel := range []string{DpkgVarDir, DpkgDir, AptStateDir, AptConf, DpkgConf} {
				missing(t, filepath.Join(r, rel))
			}
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTree(t).root
			tt.setup(t, r)
			before := snapshot(t, r)
			undo, tr, log, err := applyPkgDB(t, r)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, r)
			log = strings.ReplaceAll(log, r, "ROOT")
			for _, w := range tt.logs {
				if !strings.Contains(log, w) {
					t.Errorf("log %q lacks %q", log, w)
				}
			}
			for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
				if line != "" && !strings.HasPrefix(line, "install: ") {
					t.Errorf("log line %q", line)
				}
			}
			done := snapshot(t, r)
			// Again: nothing to do, nothing to undo.
			undo2, _, log2, err := applyPkgDB(t, r)
			if err != nil || len(undo2) != 0 {
				t.Fatalf("second application: %v, undo %+v\n%s", err, undo2, log2)
			}
			sameSnapshot(t, "ROOT after a second application", snapshot(t, r), done)
			if left := undo.run(tr); len(left) > 0 {
				t.Fatalf("undo left %v", left)
			}
			sameSnapshot(t, "ROOT after undo", snapshot(t, r), before)
		})
	}
}

// Each refusal names the path and changes nothing, through Run.
func TestPkgDBRefusals(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(t *testing.T, r string)
		want   []string
	}{
		{"two databases", func(t *testing.T, r string) {
			write(t, filepath.Join(r, DpkgDir, "status"), "another\n", 0o644)
		}, []string{"ROOT/usr/lib/sysimage/dpkg exists and is not empty", "status"}},
		{"usr/lib/sysimage/dpkg a file", func(t *testing.T, r string) {
			write(t, filepath.Join(r, DpkgDir), "", 0o644)
		}, []string{"ROOT/usr/lib/sysimage/dpkg is a regular file"}},
		{"var/lib/dpkg links elsewhere", func(t *testing.T, r string) {
			os.RemoveAll(filepath.Join(r, DpkgVarDir))
			os.Symlink("/srv/dpkg", filepath.Join(r, DpkgVarDir))
		}, []string{"ROOT/var/lib/dpkg is a symlink to /srv/dpkg"}},
		{"var/lib/dpkg is our link, its target missing", func(t *testing.T, r string) {
			os.RemoveAll(filepath.Join(r, DpkgVarDir))
			os.Symlink(DpkgDirLink, filepath.Join(r, DpkgVarDir))
		}, []string{"ROOT/var/lib/dpkg points to ROOT/usr/lib/sysimage/dpkg", "not a directory"}},
		{"var/lib/dpkg a file", func(t *testing.T, r string) {
			os.RemoveAll(filepath.Join(r, DpkgVarDir))
			write(t, filepath.Join(r, DpkgVarDir), "", 0o644)
		}, []string{"ROOT/var/lib/dpkg is a regular file"}},
		{"a FIFO in the database", func(t *testing.T, r string) {
			if err := mkfifo(filepath.Join(r, DpkgVarDir, "fifo")); err != nil {
				t.Fatal(err)
			}
		}, []string{"ROOT/var/lib/dpkg/fifo is a FIFO"}},
		{"var/lib a symlink", func(t *testing.T, r string) {
			if err := os.Rename(filepath.Join(r, "var/lib"), filepath.Join(r, "var/lib.real")); err != nil {
				t.Fatal(err)
			}
			os.Symlink("lib.real", filepath.Join(r, "var/lib"))
		}, []string{"ROOT/var/lib: a symlink on the way"}},
		{"two extended_states", func(t *testing.T, r string) {
			write(t, filepath.Join(r, AptExtendedStates), "", 0o644)
		}, []string{"both ROOT/var/lib/apt/extended_states and ROOT/usr/lib/sysimage/apt/extended_states exist"}},
		{"extended_states a symlink", func(t *testing.T, r string) {
			os.Remove(filepath.Join(r, AptVarExtendedStates))
			os.Symlink("/"+AptExtendedStates, filepath.Join(r, AptVarExtendedStates))
		}, []string{"ROOT/var/lib/apt/extended_states is a symlink"}},
		{"our apt.conf a directory", func(t *testing.T, r string) {
			os.MkdirAll(filepath.Join(r, AptConf), 0o755)
		}, []string{"ROOT/etc/apt/apt.conf.d/50txboot is a directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newTree(t)
			debianize(t, o.root)
			tt.break_(t, o.root)
			var calls []entriesCall
			opt := o.options(&calls)
			before, espBefore := snapshot(t, o.root), snapshot(t, o.esp)
			_, err := Run(opt)
			if err == nil {
				t.Fatal("install succeeded")
			}
			if !errors.Is(err, ErrRefused) {
				t.Errorf("error %v is not ErrRefused", err)
			}
			msg := strings.ReplaceAll(err.Error(), o.root, "ROOT")
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			sameSnapshot(t, "ROOT", snapshot(t, o.root), before)
			sameSnapshot(t, "ESP", snapshot(t, o.esp), espBefore)
		})
	}
}

// Through Run: tx 1 carries the database; ROOT keeps the link and the
// guard, and an existing apt.conf of ours is replaced.
func TestInstallPkgDB(t *testing.T) {
	o := newTree(t)
	debianize(t, o.root)
	write(t, filepath.Join(o.root, AptConf), "// old\n", 0o600)
	var calls []entriesCall
	opt := o.options(&calls)
	if _, err := Run(opt); err != nil {
		t.Fatalf("install: %v\n%s", err, opt.Log)
	}
	s, err := txstore.Open(o.root, txstore.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	usr := s.TreeDir(1)
	fileIs(t, filepath.Join(usr, DpkgStatusInUsr), fakeStatus)
	fileIs(t, filepath.Join(usr, AptExtendedStatesInUsr), fakeStates)
	if probs, err := s.Verify(1, txstore.VerifyFull); err != nil || len(probs) != 0 {
		t.Fatalf("verify tx 1: %v %v", probs, err)
	}
	readlinkIs(t, filepath.Join(o.root, DpkgVarDir), DpkgDirLink)
	fileIs(t, filepath.Join(o.root, AptConf), string(aptConfData()))
	fileIs(t, filepath.Join(o.root, DpkgConf), string(dpkgConfData()))
	if fi, err := os.Stat(filepath.Join(o.root, AptConf)); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("%s: %v %v", AptConf, fi, err)
	}
	log := strings.ReplaceAll(opt.Log.(*bytes.Buffer).String(), o.root, "ROOT")
	if !strings.Contains(log, "install: dpkg database: moved ROOT/var/lib/dpkg to ROOT/usr/lib/sysimage/dpkg") {
		t.Errorf("log:\n%s", log)
	}
}

// A failed commit puts the database back in /var/lib/dpkg, and our
// apt.conf's old content back.
func TestInstallPkgDBUndone(t *testing.T) {
	o := newTree(t)
	debianize(t, o.root)
	write(t, filepath.Join(o.root, AptConf), "// old\n", 0o600)
	var calls []entriesCall
	opt := o.options(&calls)
	before := snapshot(t, o.root)
	restore, err := failpoint.EnableFunc("commit/objects-published", func() error {
		write(t, filepath.Join(o.root, "usr/lib/late"), "late", 0o644)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	if _, err = Run(opt); !errors.Is(err, txstore.ErrChanged) {
		t.Fatalf("install: %v, want ErrChanged", err)
	}
	after := snapshot(t, o.root)
	delete(after, "usr/lib/late")
	// Files taken by hardlink lose their write bits (txstore's consume).
	for k, v := range after {
		if b, ok := before[k]; ok && v != b && len(v) > 10 && len(b) > 10 && v[10:] == b[10:] {
			after[k] = b
		}
	}
	sameSnapshot(t, "ROOT after a failed commit", after, before)
}

// The guard goes through apt.conf's parser (no '"', no %XX) and dpkg's
// (one line), and refuses exactly where the database is read-only.
func TestGuard(t *testing.T) {
	if strings.ContainsAny(GuardCommand, "\"%\n") {
		t.Fatalf("GuardCommand has '\"', '%%' or a newline: %q", GuardCommand)
	}
	if strings.Contains(GuardMessage, "'") || !strings.Contains(GuardMessage, "bootctl run") {
		t.Fatalf("GuardMessage %q", GuardMessage)
	}
	for _, want := range []string{
		"\nDir::State::extended_states \"/usr/lib/sysimage/apt/extended_states\";\n",
		"\nDPkg::Pre-Invoke { \"" + GuardCommand + "\"; };\n",
	} {
		if !strings.Contains(string(aptConfData()), want) {
			t.Errorf("apt.conf lacks %q", want)
		}
	}
	if !strings.HasSuffix(string(dpkgConfData()), "\npre-invoke="+GuardCommand+"\n") {
		t.Errorf("dpkg.cfg %q", dpkgConfData())
	}
	testkit.SkipUnless(t, os.Geteuid() == 0, "needs root: mounts a read-only tmpfs")
	sh, err := exec.LookPath("sh")
	if err != nil {
		testkit.Skip(t, "no sh on $PATH")
	}
	rw, ro := t.TempDir(), t.TempDir()
	if err := unix.Mount("tmpfs", ro, "tmpfs", unix.MS_RDONLY, "size=64k"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(ro, unix.MNT_DETACH)
	for _, c := range []struct {
		dir  string
		fail bool
	}{{rw, false}, {ro, true}, {filepath.Join(rw, "missing"), true}} {
		cmd := exec.Command(sh, "-c", GuardCommand)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "DPKG_ADMINDIR=" + c.dir}
		out, err := cmd.CombinedOutput()
		if failed := err != nil; failed != c.fail || (c.fail && string(out) != GuardMessage+"\n") || (!c.fail && len(out) > 0) {
			t.Errorf("guard on %s: %v %q, want failure=%v", c.dir, err, out, c.fail)
		}
	}
}
