package cli

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/bootctl/bls"
	"github.com/txboot/txboot/bootctl/esp"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/efivars"
	"golang.org/x/sys/unix"
)

const liveESPUUID = "5d0f2a3c-1b2e-4a8f-9c11-0123456789ab"

// liveSystem is a txboot system built offline with its ESP at a build-time
// path, then "booted": bootctl runs with --root equal to the running
// system's root (liveRoot), whose ESP is a partition systemd-boot names in
// LoaderDevicePartUUID, with fake efivarfs, sysfs, /dev and mountinfo.
type liveSystem struct {
	root, buildESP, partition, efi, dir string
	mountinfo                           string // file
	finder                              esp.Finder
}

type liveOpts struct {
	mountedAt string // "/boot/efi": mountinfo shows the partition there; "": not mounted
	loaderVar string // LoaderDevicePartUUID; "" for none
	counted   string // the counted entry file systemd-boot booted; "" none
	mountErr  error  // the private mount fails
	onTrial   bool
	// preBlessed: systemd-bless-boot already renamed the counted entry to
	// its good name.
	preBlessed bool
}

func newLiveSystem(t *testing.T, td string, o liveOpts) *liveSystem {
	t.Helper()
	ls := &liveSystem{root: t.TempDir(), buildESP: t.TempDir(), dir: t.TempDir()}
	p := func(rel string) string { return filepath.Join(ls.dir, rel) }
	// Built offline: entries on the build-time ESP, its path saved.
	if code, out := commitKernel(t, ls.root, td, "6.1.0-test", "kernel-A", "--esp", ls.buildESP, "--root-arg", "PARTUUID=1234"); code != 0 {
		t.Fatalf("commit: %s", out)
	}
	// The partition the machine boots from holds what the build wrote.
	ls.partition = p("partition")
	if o.mountedAt != "" {
		ls.partition = filepath.Join(ls.root, o.mountedAt)
	}
	copyTree(t, ls.buildESP, ls.partition)
	if o.counted != "" {
		// systemd-boot spent a try: txboot-1+3.conf -> the counted name.
		if err := os.Rename(filepath.Join(ls.partition, "loader/entries/txboot-1+3.conf"), filepath.Join(ls.partition, "loader/entries", o.counted)); err != nil {
			t.Fatal(err)
		}
		if o.preBlessed {
			if err := os.Rename(filepath.Join(ls.partition, "loader/entries", o.counted), filepath.Join(ls.partition, "loader/entries/txboot-1.conf")); err != nil {
				t.Fatal(err)
			}
		}
	}
	ls.efi = p("efivars")
	for _, d := range []string{ls.efi, p("sys/class/block/vda1"), p("dev/disk/by-partuuid"), p("run")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	setVar := func(name, val string) {
		data, err := efivars.EncodeString(val)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ls.efi, name+"-"+efivars.LoaderGUID), efivars.EncodeVar(efivars.BootserviceAccess|efivars.RuntimeAccess, data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if o.loaderVar != "" {
		setVar(efivars.LoaderDevicePartUUID, o.loaderVar)
	}
	if o.counted != "" {
		setVar(efivars.LoaderBootCountPath, `\loader\entries\`+o.counted)
	}
	os.WriteFile(p("sys/class/block/vda1/dev"), []byte("254:1\n"), 0o644)
	os.WriteFile(p("dev/vda1"), nil, 0o644)
	os.Symlink("../../vda1", p("dev/disk/by-partuuid/"+liveESPUUID))
	mi := "21 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n"
	if o.mountedAt != "" {
		mi += "41 21 254:1 / " + o.mountedAt + " rw,relatime shared:30 - vfat /dev/vda1 rw\n"
	}
	ls.mountinfo = p("mountinfo")
	os.WriteFile(ls.mountinfo, []byte(mi), 0o644)
	ls.finder = esp.Finder{Root: ls.root, EFIVarsDir: ls.efi, MountInfo: ls.mountinfo,
		ByPartUUID: p("dev/disk/by-partuuid"), SysRoot: p("sys"), DevRoot: p("dev"), MountDir: p("run"),
		Mount: func(source, target, fstype string, flags uintptr, data string) error {
			if o.mountErr != nil {
				return o.mountErr
			}
			os.Remove(target)
			return os.Symlink(ls.partition, target)
		},
		Unmount: func(target string, flags int) error {
			os.Remove(target)
			return os.Mkdir(target, 0o700)
		},
		LoadModule: func(string) error { return nil },
	}

	// Boot it.
	oldLive, oldFinder, oldInfo, oldWD := liveRoot, newESPFinder, bootInfoPath, watchdogPath
	t.Cleanup(func() {
		releaseESPs()
		liveRoot, newESPFinder, bootInfoPath, watchdogPath = oldLive, oldFinder, oldInfo, oldWD
	})
	releaseESPs()
	liveRoot = ls.root
	newESPFinder = func() *esp.Finder { f := ls.finder; return &f }
	watchdogPath = p("watchdog") // never the host's
	bootInfoPath = p("boot.json")
	info := `{"booted":1,"requested":1,"on_trial":false}`
	if o.onTrial {
		info = `{"booted":1,"requested":1,"on_trial":true}`
	}
	os.WriteFile(bootInfoPath, []byte(info), 0o644)
	return ls
}

func (ls *liveSystem) entries(t *testing.T, esp string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(esp, "loader/entries"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func (ls *liveSystem) state(t *testing.T) txstore.State {
	t.Helper()
	s, err := txstore.Open(ls.root, txstore.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tx, err := s.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	return tx.State
}

func (ls *liveSystem) events(t *testing.T) int {
	t.Helper()
	s, err := txstore.Open(ls.root, txstore.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := s.Events(1000)
	if err != nil {
		t.Fatal(err)
	}
	return len(evs)
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// In the running system, blessing goes to the ESP the boot loader was
// started from, never to the path saved when the system was built; when
// that ESP cannot be found or written, mark-good and health exit 1 and say
// that the store recorded good anyway.
func TestLiveESPBlessing(t *testing.T) {
	td := tools(t)
	const counted = "txboot-1+2-1.conf"
	tests := []struct {
		name    string
		o       liveOpts
		verb    []string
		code    int
		msg     string // in stderr
		blessed bool   // the partition has txboot-1.conf and no counted twin
	}{
		{"health, ESP mounted on /boot/efi", liveOpts{mountedAt: "/boot/efi", loaderVar: liveESPUUID, counted: counted, onTrial: true},
			[]string{"health"}, 0, "", true},
		{"health, ESP mounted on /efi", liveOpts{mountedAt: "/efi", loaderVar: strings.ToUpper(liveESPUUID), counted: counted, onTrial: true},
			[]string{"health"}, 0, "", true},
		{"health, ESP not mounted: mounted privately", liveOpts{loaderVar: liveESPUUID, counted: counted, onTrial: true},
			[]string{"health"}, 0, "", true},
		{"mark-good, ESP not mounted", liveOpts{loaderVar: liveESPUUID, counted: counted},
			[]string{"mark-good"}, 0, "", true},
		{"health, ESP cannot be mounted", liveOpts{loaderVar: liveESPUUID, counted: counted, onTrial: true, mountErr: unix.EIO},
			[]string{"health"}, ExitFail, "tx 1 is marked good in the store, but the boot loader will keep counting it down: boot entry not blessed: ESP not found: ", false},
		{"mark-good, no partition with that PARTUUID", liveOpts{loaderVar: "01234567-89ab-cdef-0123-456789abcdef", counted: counted},
			[]string{"mark-good"}, ExitFail, "no partition has this PARTUUID", false},
		// No loader variables: not booted through systemd-boot, nothing
		// counts this boot down (issue 18).
		{"mark-good, not booted by systemd-boot, nothing mounted", liveOpts{},
			[]string{"mark-good"}, 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := newLiveSystem(t, td, tt.o)
			// --root is the running system's root (liveRoot), as / is.
			code, out, errs := run(t, append([]string{"--root", ls.root}, tt.verb...)...)
			t.Logf("%v: exit %d\n%s%s", tt.verb, code, out, errs)
			if code != tt.code || !strings.Contains(errs, tt.msg) {
				t.Fatalf("%v: exit %d, want %d with %q\n%s%s", tt.verb, code, tt.code, tt.msg, out, errs)
			}
			if ls.state(t) != txstore.StateGood {
				t.Errorf("store says %s, want good", ls.state(t))
			}
			// The build-time ESP is never touched in the running system.
			if got := strings.Join(ls.entries(t, ls.buildESP), " "); got != "txboot-1+3.conf" {
				t.Errorf("build-time ESP changed: %s", got)
			}
			got := strings.Join(ls.entries(t, ls.partition), " ")
			if tt.blessed && got != "txboot-1.conf" {
				t.Errorf("ESP holds %s, want txboot-1.conf only", got)
			}
			if !tt.blessed && tt.o.counted != "" && got != tt.o.counted {
				t.Errorf("ESP holds %s, want %s untouched", got, tt.o.counted)
			}
			if ents, _ := os.ReadDir(filepath.Join(ls.dir, "run")); len(ents) != 0 {
				t.Errorf("temporary mount point left: %v", ents)
			}
			// A found ESP's path is never saved over the build-time one.
			if raw := string(savedEntriesConfig(t, ls.root)); !strings.Contains(raw, ls.buildESP) {
				t.Errorf("saved settings lost the build-time ESP: %s", raw)
			}
		})
	}
}

// An explicit --esp wins in the running system too, and is not saved.
func TestLiveExplicitESP(t *testing.T) {
	td := tools(t)
	ls := newLiveSystem(t, td, liveOpts{mountedAt: "/boot/efi", loaderVar: liveESPUUID, counted: "txboot-1+2-1.conf", onTrial: true})
	other := t.TempDir()
	copyTree(t, ls.buildESP, other)
	// Blessing goes to that ESP, not to the one found.
	code, out, errs := run(t, "--root", ls.root, "mark-good", "--esp", other)
	if got := strings.Join(ls.entries(t, other), " "); got != "txboot-1.conf" {
		t.Fatalf("--esp ESP holds %s; exit %d\n%s%s", got, code, out, errs)
	}
	if code != 0 {
		t.Fatalf("mark-good --esp: exit %d\n%s%s", code, out, errs)
	}
	if raw := string(savedEntriesConfig(t, ls.root)); strings.Contains(raw, other) {
		t.Errorf("--esp given in the running system was saved: %s", raw)
	}
}

// health on a boot that is not on trial does nothing: no checks (a
// failing one would otherwise mark a good tx bad), no store write, no
// ESP; unless the boot loader still counts the entry (an earlier blessing
// failed), which it then blesses without running the checks.
func TestHealthNotOnTrial(t *testing.T) {
	td := tools(t)
	for _, counted := range []string{"", "txboot-1+1-2.conf"} {
		t.Run("counted="+counted, func(t *testing.T) {
			ls := newLiveSystem(t, td, liveOpts{loaderVar: liveESPUUID, counted: counted})
			// Good in the store, offline (as the earlier boot's mark-good).
			liveRoot = t.TempDir()
			mustRun(t, "--root", ls.root, "mark-good", "1", "--esp", t.TempDir())
			liveRoot = ls.root
			before := ls.entries(t, ls.partition)
			check := filepath.Join(ls.root, "usr/lib/txboot/health.d/required/10-fails")
			os.MkdirAll(filepath.Dir(check), 0o755)
			marker := filepath.Join(ls.dir, "check-ran")
			os.WriteFile(check, []byte("#!/bin/sh\ntouch "+marker+"\nexit 1\n"), 0o755)
			events := ls.events(t)
			code, out, errs := run(t, "--root", ls.root, "health")
			if code != 0 {
				t.Fatalf("health: exit %d\n%s%s", code, out, errs)
			}
			if counted == "" && ls.events(t) != events {
				t.Errorf("health wrote to the store on a boot not on trial")
			}
			if _, err := os.Stat(marker); err == nil {
				t.Error("health checks ran on a boot not on trial")
			}
			if ls.state(t) != txstore.StateGood {
				t.Errorf("store says %s, want good", ls.state(t))
			}
			got := ls.entries(t, ls.partition)
			if counted == "" {
				if !strings.Contains(out, "not on trial") || strings.Join(got, " ") != strings.Join(before, " ") {
					t.Errorf("entries %v -> %v\n%s", before, got, out)
				}
				return
			}
			if strings.Join(got, " ") != "txboot-1.conf" {
				t.Errorf("still-counted entry not blessed: %v\n%s%s", got, out, errs)
			}
		})
	}
}

// Blessing happens once per boot whichever of txboot and
// systemd-bless-boot.service comes first, and never leaves a twin: txboot
// renames the counted entry; systemd-bless-boot (ordered after
// boot-complete.target, so after txboot-health) then finds the good name
// and does nothing. If systemd-bless-boot came first, txboot finds the
// entry blessed and only records good.
func TestBlessOrderWithSystemdBlessBoot(t *testing.T) {
	td := tools(t)
	const counted = "txboot-1+2-1.conf"
	for _, blessBootFirst := range []bool{false, true} {
		t.Run(map[bool]string{false: "txboot first", true: "systemd-bless-boot first"}[blessBootFirst], func(t *testing.T) {
			ls := newLiveSystem(t, td, liveOpts{mountedAt: "/boot/efi", loaderVar: liveESPUUID, counted: counted, onTrial: true, preBlessed: blessBootFirst})
			code, out, errs := run(t, "--root", ls.root, "health")
			if code != 0 {
				t.Fatalf("health: exit %d\n%s%s", code, out, errs)
			}
			if err := systemdBlessBootGood(filepath.Join(ls.partition, "loader/entries"), counted); err != nil {
				t.Fatalf("systemd-bless-boot good: %v", err)
			}
			if got := strings.Join(ls.entries(t, ls.partition), " "); got != "txboot-1.conf" {
				t.Errorf("ESP holds %s, want txboot-1.conf only", got)
			}
			if ls.state(t) != txstore.StateGood {
				t.Errorf("store says %s", ls.state(t))
			}
		})
	}
}

// systemdBlessBootGood does what `systemd-bless-boot good` does
// (src/bless-boot/bless-boot.c, verb_set): rename the booted file, else
// the bad name, to the good name without replacing; neither there but
// the good name is: already done, success.
func systemdBlessBootGood(dir, booted string) error {
	n, err := bls.ParseName(booted)
	if err != nil {
		return err
	}
	good := n.Base + ".conf"
	bad := n
	bad.Left = 0
	for _, src := range []string{booted, bad.String()} {
		err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(dir, src), unix.AT_FDCWD, filepath.Join(dir, good), unix.RENAME_NOREPLACE)
		if err == nil || errors.Is(err, unix.EEXIST) {
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, good)); err == nil {
		return nil
	}
	return errors.New("can't find boot counter source file")
}

// The file systemd-boot booted must be gone from the ESP after blessing;
// one the sync does not manage (here a counted name outside
// loader/entries) fails mark-good rather than let the loader count on.
func TestBootedFileStillCounted(t *testing.T) {
	td := tools(t)
	ls := newLiveSystem(t, td, liveOpts{mountedAt: "/boot/efi", loaderVar: liveESPUUID, counted: "txboot-1+2-1.conf", onTrial: true})
	other := `\EFI\Linux\txboot-1+2-1.conf`
	data, _ := efivars.EncodeString(other)
	if err := os.WriteFile(filepath.Join(ls.efi, efivars.LoaderBootCountPath+"-"+efivars.LoaderGUID), efivars.EncodeVar(efivars.RuntimeAccess, data), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(ls.partition, "EFI/Linux"), 0o755)
	os.WriteFile(filepath.Join(ls.partition, "EFI/Linux/txboot-1+2-1.conf"), nil, 0o644)
	code, out, errs := run(t, "--root", ls.root, "mark-good")
	if code != ExitFail || !strings.Contains(errs, "the entry the boot loader booted, EFI/Linux/txboot-1+2-1.conf, is still on") {
		t.Fatalf("mark-good: exit %d\n%s%s", code, out, errs)
	}
}

// Offline (an image being built: commit, mark good, then entries sync),
// no boot loader is counting: mark-good succeeds without an ESP and says
// the entries are written blessed when synced; with an ESP it says the
// entry is blessed (issue 18).
func TestMarkGoodOffline(t *testing.T) {
	td := tools(t)
	tests := []struct {
		name  string
		esp   bool   // commit with --esp
		code  int    // mark-good's exit status
		out   string // in stdout
		entry string // the tx's entry on the ESP after mark-good
	}{
		{"no ESP configured, root= from etc/kernel/cmdline", false, 0, "entries are written blessed when synced", ""},
		{"ESP configured", true, 0, "boot entry txboot-1.conf is blessed", "txboot-1.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, espDir := t.TempDir(), t.TempDir()
			writeTestFile(t, filepath.Join(root, "etc/kernel/cmdline"), "root=PARTUUID=feed quiet\n")
			var extra []string
			if tt.esp {
				extra = []string{"--esp", espDir}
			}
			if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", extra...); code != 0 {
				t.Fatalf("commit: %s", out)
			}
			code, out, errs := run(t, "--root", root, "mark-good", "1")
			if code != tt.code || !strings.Contains(out, tt.out) {
				t.Fatalf("mark-good: exit %d, want %d with %q\n%s%s", code, tt.code, tt.out, out, errs)
			}
			if errs != "" {
				t.Errorf("stderr: %s", errs)
			}
			if st := (&liveSystem{root: root}).state(t); st != txstore.StateGood {
				t.Fatalf("tx 1 is %s, want good", st)
			}
			ents, _ := os.ReadDir(filepath.Join(espDir, "loader/entries"))
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
			}
			if strings.Join(got, " ") != tt.entry {
				t.Errorf("ESP entries %v, want %q", got, tt.entry)
			}
		})
	}
}

func writeTestFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
