package boot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/initagent/cmdline"
	"github.com/txboot/txboot/initagent/kmod"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/bootinfo"
	"github.com/txboot/txboot/txstore/etcstate"
	"github.com/txboot/txboot/txstore/testtree"
	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// fakeSys records what the flow does to the machine. The store is real (in
// a temp dir at the plan's Sysroot); mounts, the root device, the watchdog,
// switch_root and the rescue are recorded. The QEMU suite runs the real
// System.
type fakeSys struct {
	root      string           // the plan's Sysroot
	infoPath  string           // the plan's InfoPath
	cmdline   string           // /proc/cmdline
	mountErr  map[string]error // by target
	rootErr   error            // WaitRoot's
	panicIn   string           // "waitroot": WaitRoot panics; "etc": SwitchEtc does
	switchErr error
	etcErr    error // SwitchEtc's (else the real etcstate.Switch runs on root)

	calls    []string // every call, in order
	rescues  []string
	shell    []bool
	switched []string // newRoot, init, args...
	// lockHeld: the store's writer lock was still taken at switch_root or
	// at the rescue; info is boot.json as it was at switch_root.
	lockHeld bool
	info     *bootinfo.Info
	out      bytes.Buffer // console and kernel log
}

func (f *fakeSys) call(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeSys) Mount(m Mount) error {
	f.call("%s", m)
	return f.mountErr[m.Target]
}

func (f *fakeSys) ReadFile(name string) ([]byte, error) {
	if name != "/proc/cmdline" {
		return nil, fmt.Errorf("fake: read %s: %w", name, os.ErrNotExist)
	}
	return []byte(f.cmdline + "\n"), nil
}

func (f *fakeSys) Console() io.Writer  { return &f.out }
func (f *fakeSys) OpenKmsg() io.Writer { f.call("kmsg"); return &f.out }

func (f *fakeSys) LoadModules(params []string) (string, kmod.Summary, error) {
	f.call("modules %s", strings.Join(params, " "))
	return "6.1.0-test", kmod.Summary{Loaded: 1}, nil
}

// WaitRoot only records: the root device is a name in the command line
// (/dev/txboot-test-root, which no host has); nothing here opens a device.
func (f *fakeSys) WaitRoot(_ context.Context, spec cmdline.RootSpec, timeout time.Duration) (string, string, error) {
	if f.panicIn == "waitroot" {
		panic("boom")
	}
	f.call("waitroot %s %s", spec, timeout)
	if f.rootErr != nil {
		return "", "", f.rootErr
	}
	return "/dev/txboot-test-root", "ext4", nil
}

func (f *fakeSys) Assembler(root string) Assembler { return &fakeAssembler{sys: f, root: root} }

func (f *fakeSys) ArmWatchdog(seconds int) (int, error) {
	f.call("watchdog %d", seconds)
	return seconds, nil
}

func (f *fakeSys) SwitchEtc(root string, id uint64) (*etcstate.SwitchResult, error) {
	f.call("etc %d", id)
	if f.panicIn == "etc" {
		panic("etc boom")
	}
	if f.etcErr != nil {
		return nil, f.etcErr
	}
	return etcstate.Switch(root, id)
}

func (f *fakeSys) SwitchRoot(newRoot, init string, args []string) error {
	f.call("switch-root")
	f.switched = append([]string{newRoot, init}, args...)
	f.lockHeld = f.lockHeld || f.storeLocked()
	f.info, _ = bootinfo.Read(f.infoPath)
	return f.switchErr
}

func (f *fakeSys) Rescue(shell bool, why string) {
	f.call("rescue")
	f.rescues = append(f.rescues, why)
	f.shell = append(f.shell, shell)
	f.lockHeld = f.lockHeld || f.storeLocked()
}

func (f *fakeSys) Sleep(d time.Duration) { f.call("sleep %s", d) }

// storeLocked says whether someone holds the store's writer lock.
func (f *fakeSys) storeLocked() bool {
	fd, err := unix.Open(filepath.Join(f.root, txstore.DirName, "lock"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false // no store, so no lock
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	unix.Flock(fd, unix.LOCK_UN)
	return false
}

// fakeAssembler stands in for the bind mount: it records it and looks for
// init inside the tree it was given.
type fakeAssembler struct {
	sys  *fakeSys
	root string
	tree string
}

func (a *fakeAssembler) Mount(tree string) error {
	a.sys.call("bind %s on %s/usr", strings.TrimPrefix(tree, a.root), a.root)
	a.tree = tree
	return nil
}

func (a *fakeAssembler) Unmount() error { a.sys.call("unbind"); a.tree = ""; return nil }

// MeasureImage computes the digest (the host has no fs-verity);
// MountSealed records the mount and stands the image's tree in for it.
func (a *fakeAssembler) MeasureImage(image string) (verity.Sum, error) {
	return verity.DigestPath(image)
}
func (a *fakeAssembler) MountSealed(image, objects string) error {
	a.sys.call("sealed %s %s on %s/usr", strings.TrimPrefix(image, a.root), strings.TrimPrefix(objects, a.root), a.root)
	a.tree = filepath.Join(filepath.Dir(image), "usr")
	return nil
}

func (a *fakeAssembler) FindInit(c []string) (string, error) {
	for _, p := range c {
		rel := strings.TrimPrefix(strings.TrimPrefix(p, "/usr"), "/")
		if fi, err := os.Stat(filepath.Join(a.tree, rel)); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("no init")
}

// flowStore commits txs 1..n at root (2 tries each, so on trial); those in
// noInit have no sbin/init; those in good are marked good.
func flowStore(t *testing.T, root string, n int, noInit, good []uint64) {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{Create: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := uint64(1); i <= uint64(n); i++ {
		files := append(testtree.Sample(), testtree.File{Path: "share/marker", Data: fmt.Sprint(i), Mode: 0o644})
		if !slices.Contains(noInit, i) {
			files = append(files, testtree.File{Path: "sbin/init", Data: "#!init", Mode: 0o755})
		}
		d := t.TempDir()
		if err := testtree.Write(d, files, time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Commit(d, txstore.CommitOptions{Tries: 2}); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(good, i) {
			if _, err := s.Update(i, txstore.Event{Kind: "mark-good"}, func(x *txstore.Tx) error { x.MarkGood(); return nil }); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// testPlan is DefaultPlan with every path in temp dirs.
func testPlan(t *testing.T) (Plan, *fakeSys) {
	dir := t.TempDir()
	p := DefaultPlan()
	p.Sysroot = filepath.Join(dir, "sysroot")
	p.InfoPath = filepath.Join(dir, "run/txboot/boot.json")
	p.TrustDir = filepath.Join(dir, "trusted.d") // missing: no keys
	p.EFIVars = filepath.Join(dir, "efivars")    // missing: not UEFI
	os.MkdirAll(filepath.Join(p.Sysroot, "etc"), 0o755)
	return p, &fakeSys{root: p.Sysroot, infoPath: p.InfoPath, mountErr: map[string]error{}}
}

// TestRunBoots: the whole flow on a good path, call by call.
func TestRunBoots(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cmdline  string
		noInit   []uint64
		good     []uint64
		booted   uint64
		onTrial  bool
		watchdog int      // armed for; 0: ArmWatchdog never called
		args     []string // init's
		remount  bool
		log      []string
	}{
		{name: "on trial", cmdline: "root=/dev/txboot-test-root rootdelay=2 txboot.watchdog=30 -- single x",
			booted: 3, onTrial: true, watchdog: 30, args: []string{"single", "x"}, remount: true,
			log: []string{"watchdog armed: 30 s", "booting tx 3 (on trial, 1 tries left)", "phases: early="}},
		{name: "good: no watchdog", cmdline: "root=/dev/txboot-test-root rw txboot.watchdog=30", good: []uint64{3},
			booted: 3, log: []string{"booting tx 3 (good)"}},
		{name: "on trial, txboot.watchdog=0", cmdline: "root=/dev/txboot-test-root txboot.watchdog=0", booted: 3, onTrial: true, remount: true},
		{name: "fallback", cmdline: "root=/dev/txboot-test-root txboot.watchdog=10 mymod.opt=1", noInit: []uint64{3},
			booted: 2, onTrial: true, watchdog: 10, remount: true,
			log: []string{"FALLBACK: requested tx 3 failed", "booting tx 2 instead"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, sys := testPlan(t)
			sys.cmdline = tc.cmdline
			flowStore(t, plan.Sysroot, 3, tc.noInit, tc.good)
			Run(sys, plan)

			if len(sys.rescues) != 0 {
				t.Fatalf("rescue: %q\n%s", sys.rescues, sys.out.String())
			}
			root := plan.Sysroot
			want := []string{
				"mount devtmpfs on /dev", "mount proc on /proc", "mount sysfs on /sys", "mount tmpfs on /run",
				"kmsg", "modules " + strings.Join(moduleParams(tc.cmdline), " "),
				"mount efivarfs on /sys/firmware/efi/efivars",
			}
			if strings.Contains(tc.cmdline, "rootdelay=2") {
				want = append(want, "sleep 2s")
			}
			want = append(want, "waitroot /dev/txboot-test-root 30s", "mount ext4 on "+root)
			if len(tc.noInit) > 0 { // tx 3 is bound, has no init, is unbound
				want = append(want, fmt.Sprintf("bind /.txboot/trees/3/usr on %s/usr", root), "unbind")
			}
			want = append(want, fmt.Sprintf("bind /.txboot/trees/%d/usr on %s/usr", tc.booted, root), fmt.Sprintf("etc %d", tc.booted))
			if tc.watchdog > 0 {
				want = append(want, fmt.Sprintf("watchdog %d", tc.watchdog))
			}
			if tc.remount {
				want = append(want, "remount "+root)
			}
			want = append(want, "switch-root")
			if !reflect.DeepEqual(sys.calls, want) {
				t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(sys.calls, "\n  "), strings.Join(want, "\n  "))
			}
			if sys.lockHeld {
				t.Error("the store was still open at switch_root")
			}
			if w := append([]string{root, "/sbin/init"}, tc.args...); !reflect.DeepEqual(sys.switched, w) {
				t.Errorf("switch_root %q, want %q", sys.switched, w)
			}
			info := sys.info
			if info == nil {
				t.Fatalf("no boot.json at switch_root\n%s", sys.out.String())
			}
			if info.Booted != tc.booted || info.Requested != 3 || info.OnTrial != tc.onTrial || info.Watchdog != tc.watchdog {
				t.Errorf("boot.json %+v: want booted %d, requested 3, on trial %v, watchdog %d", info, tc.booted, tc.onTrial, tc.watchdog)
			}
			if len(tc.noInit) > 0 && (len(info.Failures) != 1 || info.Failures[0].Tx != 3) {
				t.Errorf("boot.json failures %+v, want tx 3's", info.Failures)
			}
			for _, ph := range []string{"early", "modules", "rootdev", "mount", "store", "verify", "assemble", "etc"} {
				if _, ok := info.PhasesMS[ph]; !ok {
					t.Errorf("boot.json has no phase %s: %v", ph, info.PhasesMS)
				}
			}
			// The try is recorded in the store before switch_root.
			s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if tx, err := s.Get(tc.booted); err != nil || (tc.onTrial && tx.TriesLeft != 1) {
				t.Errorf("tx %d after boot: %+v %v, want 1 try left", tc.booted, tx, err)
			}
			for _, l := range tc.log {
				if !strings.Contains(sys.out.String(), l) {
					t.Errorf("log lacks %q:\n%s", l, sys.out.String())
				}
			}
		})
	}
}

func moduleParams(cmd string) []string {
	cfg, _ := cmdline.Parse(cmd)
	var p []string
	for _, u := range cfg.Unknown {
		p = append(p, u.String())
	}
	return p
}

// TestRunFails: every way the boot cannot go on ends in exactly one rescue
// with a message that says what to do, no switch_root, and the store closed.
func TestRunFails(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cmdline  string
		store    bool     // commit 2 txs
		noInit   []uint64 // of those
		setup    func(f *fakeSys)
		want     []string // in the rescue message
		shell    bool
		switched bool // switch_root was tried
	}{
		{name: "no root=", cmdline: "quiet", store: true,
			want: []string{"no usable root= on the command line", "add root=UUID="}},
		{name: "bad root=", cmdline: "root=nonsense rd.txboot.shell=1", store: true, shell: true,
			want: []string{`no usable root= on the command line (got "nonsense")`}},
		{name: "root device timeout", cmdline: "root=UUID=00000000-0000-4000-8000-000000000000 txboot.timeout=2", store: true,
			setup: func(f *fakeSys) {
				f.rootErr = errors.New("timed out after 2s waiting for the root device UUID=00000000-0000-4000-8000-000000000000; block devices seen: vda")
			},
			want: []string{"root device: timed out", "block devices seen: vda"}},
		{name: "root mount fails", cmdline: "root=/dev/txboot-test-root", store: true,
			setup: func(f *fakeSys) { f.mountErr[f.root] = unix.EINVAL },
			want:  []string{"mount root /dev/txboot-test-root: ext4: invalid argument; xfs: invalid argument; btrfs: invalid argument"}},
		{name: "root mount fails, rootfstype", cmdline: "root=/dev/txboot-test-root rootfstype=xfs", store: true,
			setup: func(f *fakeSys) { f.mountErr[f.root] = unix.ENODEV },
			want:  []string{"mount root /dev/txboot-test-root: xfs: no such device"}},
		{name: "required mount fails", cmdline: "root=/dev/txboot-test-root", store: true,
			setup: func(f *fakeSys) { f.mountErr["/proc"] = unix.EPERM },
			want:  []string{"mount proc on /proc: operation not permitted"}},
		{name: "no store", cmdline: "root=/dev/txboot-test-root",
			want: []string{"open the txboot store on /dev/txboot-test-root", "no txboot store"}},
		{name: "every tx broken", cmdline: "root=/dev/txboot-test-root rd.txboot.shell=1", store: true, noInit: []uint64{1, 2}, shell: true,
			want: []string{"no transaction could be booted"}},
		{name: "exec fails", cmdline: "root=/dev/txboot-test-root init=/bin/nope", store: true, switched: true,
			setup: func(f *fakeSys) {
				f.switchErr = errList{fmt.Errorf("/bin/nope: %w", unix.ENOENT), fmt.Errorf("/sbin/init: %w", unix.ENOEXEC)}
			},
			want: []string{"could not start init /sbin/init: /bin/nope: no such file or directory; /sbin/init: exec format error"}},
		{name: "panic in a phase", cmdline: "root=/dev/txboot-test-root", store: true,
			setup: func(f *fakeSys) { f.panicIn = "waitroot" },
			want:  []string{"initagent hit an internal error (phase rootdev: boom)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, sys := testPlan(t)
			sys.cmdline = tc.cmdline
			if tc.store {
				flowStore(t, plan.Sysroot, 2, tc.noInit, nil)
			}
			if tc.setup != nil {
				tc.setup(sys)
			}
			Run(sys, plan)

			if len(sys.rescues) != 1 {
				t.Fatalf("%d rescues %q, want 1\n%s", len(sys.rescues), sys.rescues, sys.out.String())
			}
			why := sys.rescues[0]
			for _, w := range tc.want {
				if !strings.Contains(why, w) {
					t.Errorf("rescue message %q lacks %q", why, w)
				}
			}
			if strings.Contains(why, "\n") {
				t.Errorf("rescue message is not one line: %q", why)
			}
			if sys.shell[0] != tc.shell {
				t.Errorf("rescue shell %v, want %v", sys.shell[0], tc.shell)
			}
			if got := slices.Contains(sys.calls, "switch-root"); got != tc.switched {
				t.Errorf("switch_root called: %v, want %v (calls %q)", got, tc.switched, sys.calls)
			}
			if sys.calls[len(sys.calls)-1] != "rescue" {
				t.Errorf("last call %q, want the rescue", sys.calls[len(sys.calls)-1])
			}
			if sys.lockHeld {
				t.Error("the store was still open at the rescue")
			}
			if n := strings.Count(sys.out.String(), "BOOT FAILED: "+why); n != 1 {
				t.Errorf("BOOT FAILED logged %d times, want 1:\n%s", n, sys.out.String())
			}
		})
	}
}

// TestRunOptionalMounts: an optional mount that fails is a warning; a
// missing efivarfs mount point (no UEFI) is skipped silently.
func TestRunOptionalMounts(t *testing.T) {
	plan, sys := testPlan(t)
	sys.cmdline = "root=/dev/txboot-test-root"
	sys.mountErr["/run"] = unix.EPERM
	sys.mountErr["/sys/firmware/efi/efivars"] = unix.ENOENT
	sys.mountErr["/dev"] = unix.EBUSY // already mounted by the kernel
	flowStore(t, plan.Sysroot, 1, nil, nil)
	Run(sys, plan)
	if len(sys.rescues) != 0 || !slices.Contains(sys.calls, "switch-root") {
		t.Fatalf("boot did not complete: rescues %q\n%s", sys.rescues, sys.out.String())
	}
	out := sys.out.String()
	if !strings.Contains(out, "mount tmpfs on /run: operation not permitted; the new root gets no /run") {
		t.Errorf("no warning for /run:\n%s", out)
	}
	if strings.Contains(out, "efivarfs") || strings.Contains(out, "/dev:") {
		t.Errorf("warned about a skipped or already mounted filesystem:\n%s", out)
	}
}

// sealStore records tx id sealed, as `bootctl seal` would on a kernel with
// fs-verity, and returns its image's digest (the fake assembler computes
// the image's digest: this host cannot measure it).
func sealStore(t *testing.T, root string, id uint64) string {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	x, err := s.Update(id, txstore.Event{Kind: "seal"}, func(x *txstore.Tx) error { x.Sealed = true; return nil })
	if err != nil || x.Image == "" {
		t.Fatalf("tx %d: %+v, %v; want an image recorded at commit", id, x, err)
	}
	return x.Image
}

// TestRunSealed: a pinned, sealed tx is mounted from its image and
// boot.json and the summary line say so; an image that does not match the
// pin falls back in the same boot to a tx verified from its tree.
func TestRunSealed(t *testing.T) {
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%v", damaged), func(t *testing.T) {
			plan, sys := testPlan(t)
			flowStore(t, plan.Sysroot, 3, nil, []uint64{2, 3})
			pin := sealStore(t, plan.Sysroot, 3)
			if damaged { // replaced by another tx's image
				img := filepath.Join(plan.Sysroot, txstore.DirName, "trees/%d/image.erofs")
				if err := os.Remove(fmt.Sprintf(img, 3)); err != nil {
					t.Fatal(err)
				}
				if err := os.Link(fmt.Sprintf(img, 2), fmt.Sprintf(img, 3)); err != nil {
					t.Fatal(err)
				}
			}
			sys.cmdline = "root=/dev/txboot-test-root txboot.tx=3 txboot.image=" + pin
			Run(sys, plan)
			if len(sys.rescues) != 0 || sys.info == nil {
				t.Fatalf("rescue %q, boot.json %+v\n%s", sys.rescues, sys.info, sys.out.String())
			}
			root, info, out := plan.Sysroot, sys.info, sys.out.String()
			sealedCall := fmt.Sprintf("sealed /%s/trees/3/image.erofs /%s/objects on %s/usr", txstore.DirName, txstore.DirName, root)
			if slices.Contains(sys.calls, sealedCall) == damaged {
				t.Errorf("calls %q: want %q (damaged %v)", sys.calls, sealedCall, damaged)
			}
			if !damaged {
				if info.Booted != 3 || !info.Sealed || info.UnsealedWhy != "" || !strings.Contains(out, "tx 3: /usr is sealed: the kernel checks every file against image sha256:") || !strings.Contains(out, "booting tx 3 (good) "+pinOf(t, root, 3)+"; phases:") {
					t.Errorf("boot.json %+v\n%s", info, out)
				}
				return
			}
			if info.Booted != 2 || info.Sealed || info.UnsealedWhy == "" || len(info.Failures) != 1 ||
				!strings.Contains(info.Failures[0].Reason, "does not match the pinned "+pin) || !strings.Contains(out, "tx 2: /usr is unsealed: ") {
				t.Errorf("boot.json %+v\n%s", info, out)
			}
		})
	}
}

// pinOf is tx id's digest.
func pinOf(t *testing.T, root string, id uint64) string {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	x, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return x.Digest
}
