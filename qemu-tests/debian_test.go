package qemutests

// Debian 13 (TestDebian) and Debian 12 (TestDebian12) with systemd as PID
// 1, installed by the real `bootctl install` and booted under OVMF +
// systemd-boot. Debian 13: blessed (by txboot and by systemd-bless-boot),
// systemd's own `bootctl list` reading txboot's entries, file capabilities,
// xattrs and ACLs of the installed /usr, updated, a broken update healed, a
// failing health check, a damaged /usr, and /etc and /var kept throughout.
// One disk, eight QEMU runs in a row (each reboot is a new run on the same
// image and EFI variable store); between runs the host only writes
// /var/lib/txtest-next (the command the guest runs before powering off) or
// damages an object, through debugfs. Debian 12: blessed, and a broken
// update healed, in four runs.

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore"
	"golang.org/x/sys/unix"
)

// debianBootWait bounds one Debian run under TCG (about 40-60 s alone; the
// suite's other VMs share the 2 cores).
const debianBootWait = 8 * time.Minute

var (
	txtestRe     = regexp.MustCompile(`(?m)^TXTEST ([a-z-]+)=(.*)$`)
	bootingTxRe  = regexp.MustCompile(`txboot: booting tx (\d+) \(([^)]*)\)[^;]*; phases: (.*)`)
	debianPanic  = "Kernel panic"
	startupRe    = regexp.MustCompile(`Startup finished in .* = ([0-9.]+)s`)
	debianEndRe  = regexp.MustCompile(`TXTEST marker=|Kernel panic|reboot: Restarting system|reboot: Power down`)
	initTotalRe  = regexp.MustCompile(`total=(\d+)ms`)
	helloWorldRe = regexp.MustCompile(`Hello, world!`)
)

type debianRun struct {
	n      int
	out    string
	facts  map[string]string
	booted string // initagent's "booting tx N"
	state  string
	phases string
	wall   time.Duration
	up     time.Duration // QEMU start to the report: systemd's boot done
	dumped bool
}

func (r *debianRun) fact(k string) string { return r.facts[k] }

// bootDebian runs the system until QEMU exits by itself (poweroff, a
// panic with panic=-1, a reboot: the harness runs with -no-reboot).
func bootDebian(t *testing.T, sys *fixture.DebianSystem, n int) *debianRun {
	t.Helper()
	vm := harness.StartT(t, harness.Config{UEFI: true, VarsPath: sys.Vars, Disk: sys.Disk.Path,
		MemMiB: 1024, SerialLog: filepath.Join(sys.Dir, "serial.log")})
	// Every run ends in one of these: the report (then poweroff), a panic
	// (PID 1 died), a reboot (a health check failed).
	var up time.Duration
	if m, err := vm.Expect(debianEndRe, debianBootWait); err != nil {
		t.Fatalf("run %d: %v\n%s", n, err, tail(vm.Output(), 60))
	} else if strings.HasPrefix(m[0], "TXTEST") {
		up = vm.Marks()[len(vm.Marks())-1].Since
	}
	if err := vm.Wait(debianBootWait); err != nil {
		t.Fatalf("run %d: %v\n%s", n, err, tail(vm.Output(), 60))
	}
	r := &debianRun{n: n, out: vm.Output(), facts: map[string]string{}, wall: vm.Elapsed(), up: up}
	for _, m := range txtestRe.FindAllStringSubmatch(r.out, -1) {
		r.facts[m[1]] = strings.TrimSpace(m[2])
	}
	if m := bootingTxRe.FindStringSubmatch(r.out); m != nil {
		r.booted, r.state, r.phases = m[1], m[2], strings.TrimSpace(m[3])
	}
	t.Logf("run %d: initagent booted tx %s (%s), phases %s; running=%q; boot done after %s, run %s, exit %q",
		n, r.booted, r.state, r.phases, r.fact("running"), r.up.Round(time.Millisecond), r.wall.Round(time.Millisecond), vm.ExitReason())
	return r
}

func initTotal(r *debianRun) time.Duration {
	m := initTotalRe.FindStringSubmatch(r.phases)
	if m == nil {
		return 0
	}
	ms, _ := strconv.Atoi(m[1])
	return time.Duration(ms) * time.Millisecond
}

// dumpOnFailure logs the run's console once the test has failed: the
// serial log lives in a temp dir that is gone afterwards.
func (r *debianRun) dumpOnFailure(t *testing.T) {
	t.Helper()
	if t.Failed() && !r.dumped {
		r.dumped = true
		t.Logf("run %d console:\n%s", r.n, tail(r.out, 250))
	}
}

// want fails unless fact k is v.
func (r *debianRun) want(t *testing.T, k, v string) {
	t.Helper()
	if got := r.fact(k); got != v {
		t.Errorf("run %d: %s=%q, want %q", r.n, k, got, v)
	}
}

func (r *debianRun) wantBooted(t *testing.T, id string) {
	t.Helper()
	if r.booted != id {
		t.Fatalf("run %d: initagent booted tx %q, want %s; console tail:\n%s", r.n, r.booted, id, tail(r.out, 80))
	}
}

// wantHealthyUp: systemd finished the boot, no failed unit, the health
// check ran and passed, /usr read-only, /etc and /var writable.
func (r *debianRun) wantHealthyUp(t *testing.T) {
	t.Helper()
	defer r.dumpOnFailure(t)
	if r.fact("marker") != "debian" {
		t.Fatalf("run %d: the test unit never reported; console tail:\n%s", r.n, tail(r.out, 80))
	}
	r.want(t, "running", "running")
	r.want(t, "failed", "")
	r.want(t, "health", "active/success")
	r.want(t, "usr", "ro")
	r.want(t, "etc", "rw")
	r.want(t, "var", "rw")
}

// statusJSON is what the scenarios read of `bootctl status --json`.
type statusJSON struct {
	Booted       uint64          `json:"booted"`
	Requested    uint64          `json:"requested"`
	BootFailures json.RawMessage `json:"boot_failures"`
	Default      uint64          `json:"default"`
	Bad          []uint64        `json:"bad"`
}

func (r *debianRun) status(t *testing.T) statusJSON {
	t.Helper()
	var st statusJSON
	if err := json.Unmarshal([]byte(r.fact("status-json")), &st); err != nil {
		t.Fatalf("run %d: bootctl status --json: %v: %q", r.n, err, r.fact("status-json"))
	}
	return st
}

func setNext(t *testing.T, sys *fixture.DebianSystem, cmd string) {
	t.Helper()
	if err := sys.Disk.RootFS().WriteFile("/var/lib/txtest-next", []byte(cmd+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// objectOf is the store path (relative to the root) of the object behind
// path p in tx id.
func objectOf(t *testing.T, root string, id uint64, p string) string {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tx, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(tx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Entries {
		if e.Path == p {
			return "/" + filepath.Join(txstore.DirName, "objects", e.Key().RelPath())
		}
	}
	t.Fatalf("tx %d has no %s", id, p)
	return ""
}

func wantEntry(t *testing.T, sys *fixture.DebianSystem, after int, re string) {
	t.Helper()
	es, err := sys.Entries()
	if err != nil {
		t.Fatal(err)
	}
	rx := regexp.MustCompile(re)
	if !slices.ContainsFunc(es, rx.MatchString) {
		t.Errorf("after run %d: ESP entries %v, none matches %s", after, es, re)
	}
}

// debianSetup builds the cached root of suite and installs a copy of it
// (tx 1) on a new disk; prepare, if set, changes the copy first.
func debianSetup(t *testing.T, suite string, prepare func(root string) error) (sys *fixture.DebianSystem, hello, dir string) {
	t.Helper()
	return debianSetupSpec(t, suite, fixture.DebianSpec{Prepare: prepare})
}

// debianSetupSpec is debianSetup with more of the spec (Bins, Dir, Root
// and Cmdline are filled in).
func debianSetupSpec(t *testing.T, suite string, spec fixture.DebianSpec) (sys *fixture.DebianSystem, hello, dir string) {
	t.Helper()
	harness.Need(t, "uefi", "disk", "debootstrap")
	repo, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	start := time.Now()
	droot, debs, err := fixture.DebianRoot(ctx, repo, suite)
	if err != nil {
		t.Fatal(err)
	}
	hellos, _ := filepath.Glob(filepath.Join(debs, "hello_*.deb"))
	if len(hellos) != 1 {
		t.Fatalf("hello .deb in %s: %v", debs, hellos)
	}
	t.Logf("Debian root %s (%s)", droot, time.Since(start).Round(time.Millisecond))

	dir = t.TempDir()
	spec.Bins, spec.Dir, spec.Root = getBins(t), dir, droot
	spec.Cmdline = "console=ttyS0 panic=-1 txboot.watchdog=0"
	sys, err = fixture.BuildDebian(ctx, spec)
	if err != nil {
		if sys != nil {
			t.Logf("bootctl log:\n%s", sys.BootctlLog.String())
		}
		t.Fatal(err)
	}
	t.Logf("bootctl install:\n%s", sys.InstallOut)
	return sys, hellos[0], dir
}

// commitTree commits an update on the host, as a build server would: a
// copy of tx 1's /usr changed by change. --no-default: each boot chooses
// through `bootctl set-default` in the running system (/var/lib/txtest-next).
func commitTree(t *testing.T, sys *fixture.DebianSystem, dir, name string, change func(tree string), args ...string) {
	t.Helper()
	ctx := t.Context()
	tree := filepath.Join(dir, "trees", name)
	must(t, os.MkdirAll(filepath.Dir(tree), 0o755))
	if err := sys.TreeCopy(ctx, 1, tree); err != nil {
		t.Fatal(err)
	}
	change(tree)
	if _, err := sys.Run(ctx, append(append([]string{"commit", "--no-default", "--summary", name}, args...), tree)...); err != nil {
		t.Fatal(err)
	}
}

func removeLibc(t *testing.T, tree string) {
	t.Helper()
	libc, _ := filepath.Glob(filepath.Join(tree, "lib", "x86_64-linux-gnu", "libc.so.6"))
	if len(libc) != 1 {
		t.Fatal("no libc.so.6 in the tree")
	}
	must(t, os.Remove(libc[0]))
}

// Metadata probes BuildDebian's Prepare adds to the root before install
// (xattrProbes), and what the guest reports about them (DebianReport).
const (
	capcatPath = "usr/bin/capcat"         // a copy of cat with cap_dac_read_search+ep
	xattrPath  = "usr/share/txtest/xattr" // user.txtest=hello
	aclPath    = "usr/share/txtest/acl"   // 0640 root:root + user:65534:r--
	capDacRS   = 2                        // CAP_DAC_READ_SEARCH
	aclNobody  = 65534                    // nobody, the unprivileged user of the checks
	vfsCapRev2 = 0x02000000               // VFS_CAP_REVISION_2
	vfsCapEff  = 0x000001                 // VFS_CAP_FLAGS_EFFECTIVE
	aclVersion = 2                        // POSIX_ACL_XATTR_VERSION
	aclNoID    = 0xffffffff               // ACL_UNDEFINED_ID
)

// posixACL encodes a system.posix_acl_access value: version, then (tag,
// perm, id) entries sorted by tag (host has no setfacl; the kernel checks
// the encoding).
func posixACL(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

// xattrProbes gives the root's /usr a file capability, a user xattr and an
// ACL, each on a file of its own, and reads them back on the host.
func xattrProbes(root string) error {
	cat, err := os.ReadFile(filepath.Join(root, "usr", "bin", "cat"))
	if err != nil {
		return err
	}
	capcat := filepath.Join(root, capcatPath)
	if err := os.WriteFile(capcat, cat, 0o755); err != nil {
		return err
	}
	// security.capability, revision 2: effective; permitted = the bit.
	capv := binary.LittleEndian.AppendUint32(nil, vfsCapRev2|vfsCapEff)
	capv = binary.LittleEndian.AppendUint32(capv, 1<<capDacRS) // permitted, low word
	capv = binary.LittleEndian.AppendUint32(capv, 0)           // inheritable
	capv = binary.LittleEndian.AppendUint32(capv, 0)           // permitted, high word
	capv = binary.LittleEndian.AppendUint32(capv, 0)           // inheritable
	if err := unix.Setxattr(capcat, "security.capability", capv, 0); err != nil {
		return fmt.Errorf("setcap %s: %w", capcat, err)
	}
	x := filepath.Join(root, xattrPath)
	if err := os.MkdirAll(filepath.Dir(x), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(x, []byte("xattr probe\n"), 0o644); err != nil {
		return err
	}
	if err := unix.Setxattr(x, "user.txtest", []byte("hello"), 0); err != nil {
		return fmt.Errorf("setfattr %s: %w", x, err)
	}
	a := filepath.Join(root, aclPath)
	if err := os.WriteFile(a, []byte("acl probe\n"), 0o640); err != nil {
		return err
	}
	if err := os.Chmod(a, 0o640); err != nil {
		return err
	}
	const r, w = 4, 2
	acl := posixACL(
		[3]uint32{0x01, r | w, aclNoID}, // user::rw-
		[3]uint32{0x02, r, aclNobody},   // user:nobody:r--
		[3]uint32{0x04, r, aclNoID},     // group::r--
		[3]uint32{0x10, r, aclNoID},     // mask::r--
		[3]uint32{0x20, 0, aclNoID},     // other::---
	)
	if err := unix.Setxattr(a, "system.posix_acl_access", acl, 0); err != nil {
		return fmt.Errorf("setfacl %s: %w", a, err)
	}
	// Read all three back: the host filesystem must keep them for the
	// guest's checks to mean anything.
	for p, name := range map[string]string{capcat: "security.capability", x: "user.txtest", a: "system.posix_acl_access"} {
		buf := make([]byte, 256)
		if _, err := unix.Getxattr(p, name, buf); err != nil {
			return fmt.Errorf("getxattr %s %s: %w", p, name, err)
		}
	}
	return nil
}

// wantXattrs checks what the guest reported about xattrProbes' files: the
// store keeps extended attributes (file capabilities, user xattrs, ACLs)
// in its manifests and objects, so the booted /usr has them.
func (r *debianRun) wantXattrs(t *testing.T) {
	t.Helper()
	const why = "(does the store keep xattrs of /usr?)"
	// capcat has cat's content: a store that dedups objects by content
	// alone hands the capability to every file with that content.
	if got := r.fact("getcap-cat"); got != "" || r.fact("cap-plain") != "denied" {
		t.Errorf("run %d: /usr/bin/cat has capcat's capability: getcap %q, nobody's cat on /etc/shadow %q, same inode %s (the store merged the two files by content, xattrs and all)",
			r.n, got, r.fact("cap-plain"), r.fact("same-inode"))
	}
	if got := r.fact("getcap"); !strings.Contains(got, "cap_dac_read_search=ep") {
		t.Errorf("run %d: file capability lost: getcap /%s = %q, want cap_dac_read_search=ep %s", r.n, capcatPath, got, why)
	}
	if got := r.fact("cap-use"); got != "read" {
		t.Errorf("run %d: nobody cannot use /%s's capability: %q, want read %s", r.n, capcatPath, got, why)
	}
	if got := r.fact("xattr"); got != "hello" {
		t.Errorf("run %d: xattr lost: getfattr -n user.txtest /%s = %q, want hello %s", r.n, xattrPath, got, why)
	}
	if got := r.fact("acl"); !strings.Contains(got, "user:nobody:r--") {
		t.Errorf("run %d: ACL lost: getfacl /%s = %q, want user:nobody:r-- %s", r.n, aclPath, got, why)
	}
	if got := r.fact("acl-use"); got != "read" {
		t.Errorf("run %d: nobody cannot read /%s through its ACL: %q %s", r.n, aclPath, got, why)
	}
}

// sdListEntryRe: an entry's id in systemd's `bootctl list`.
var sdListEntryRe = regexp.MustCompile(`(?m)^TXTEST sd-list: +id: (\S+)`)

// wantSystemdList: systemd's own `bootctl list` in the guest lists every
// txboot entry on the ESP and reports none of them broken. ids are as
// systemd shows them: without the tries counter of the file name.
func (r *debianRun) wantSystemdList(t *testing.T, ids ...string) {
	t.Helper()
	if rc := r.fact("sd-list-rc"); rc != "0" {
		t.Errorf("run %d: systemd's bootctl list exited %q", r.n, rc)
	}
	var listed []string
	for _, m := range sdListEntryRe.FindAllStringSubmatch(r.out, -1) {
		listed = append(listed, strings.TrimSpace(m[1]))
	}
	for _, id := range ids {
		if !slices.Contains(listed, id) {
			t.Errorf("run %d: systemd's bootctl list does not list %s (ids %v)", r.n, id, listed)
		}
	}
	bad := regexp.MustCompile(`(?mi)^TXTEST sd-list: .*(No such file|not found|missing|invalid|failed|error|unreadable)`)
	if m := bad.FindAllString(r.out, -1); len(m) > 0 {
		t.Errorf("run %d: systemd's bootctl list reports problems:\n%s", r.n, strings.Join(m, "\n"))
	}
}

// logAnalyze logs systemd-analyze's line and the slowest units of a run.
func logAnalyze(t *testing.T, r *debianRun) {
	t.Helper()
	var blame []string
	for _, l := range strings.Split(r.out, "\n") {
		if b, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "TXTEST blame: "); ok {
			blame = append(blame, b)
		}
	}
	t.Logf("run %d: %s; slowest units: %s", r.n, r.fact("analyze"), strings.Join(blame, ", "))
}

func logSystemdList(t *testing.T, r *debianRun) {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(r.out, "\n") {
		if strings.HasPrefix(l, "TXTEST sd-list") {
			lines = append(lines, strings.TrimRight(l, "\r"))
		}
	}
	t.Logf("run %d: systemd's bootctl list in the guest:\n%s", r.n, strings.Join(lines, "\n"))
}

// TestDebian: Debian 13 (trixie), the main real OS.
func TestDebian(t *testing.T) {
	t.Parallel()
	start := time.Now()
	sys, hello, dir := debianSetup(t, fixture.Trixie, xattrProbes)
	ctx := t.Context()

	// The updates: tx 2 adds a real package, tx 3 lacks glibc, tx 4 ships
	// a failing required health check.
	commitTree(t, sys, dir, "hello", func(tree string) {
		must(t, fixture.UnpackDeb(ctx, hello, tree))
	})
	commitTree(t, sys, dir, "no-libc", func(tree string) {
		must(t, fixture.UnpackDeb(ctx, hello, tree))
		removeLibc(t, tree)
	}, "--tries", "2")
	commitTree(t, sys, dir, "failing-health", func(tree string) {
		must(t, fixture.UnpackDeb(ctx, hello, tree))
		p := filepath.Join(tree, "lib", "txboot", "health.d", "required", "10-txtest-fail")
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte("#!/bin/sh\necho 'txtest: this update is broken' >&2\nexit 1\n"), 0o755))
	})
	if err := sys.MakeDisk(0, 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the Debian 13 disk (4 txs) in %s", time.Since(start).Round(time.Millisecond))

	// (a) Blessed: tx 1 boots to a running system, its health check
	// blesses its entry (read back from the image, not the store's word).
	setNext(t, sys, "/usr/lib/txboot/bootctl set-default 2")
	r1 := bootDebian(t, sys, 1)
	r1.wantBooted(t, "1")
	r1.wantHealthyUp(t)
	r1.want(t, "os", "13 trixie")
	if !strings.HasPrefix(r1.fact("systemd"), "systemd 257 ") {
		t.Errorf("run 1: %q, want systemd 257", r1.fact("systemd"))
	}
	r1.want(t, "boot-complete", "active")
	if st := r1.status(t); st.Booted != 1 || st.Default != 1 {
		t.Errorf("run 1: status booted %d default %d", st.Booted, st.Default)
	}
	wantEntry(t, sys, 1, `^txboot-1\.conf$`)
	// systemd 257's own bootctl reads txboot's entries: all four, none
	// broken.
	logSystemdList(t, r1)
	r1.wantSystemdList(t, "txboot-1.conf", "txboot-2.conf", "txboot-3.conf", "txboot-4.conf")
	firstBoot := r1.fact("etc-state")
	if len(firstBoot) != 36 || r1.fact("var-state") != firstBoot {
		t.Fatalf("run 1: state files etc=%q var=%q", firstBoot, r1.fact("var-state"))
	}
	if m := startupRe.FindStringSubmatch(r1.out); m != nil {
		t.Logf("run 1: systemd: startup finished in %ss", m[1])
	}
	logAnalyze(t, r1)

	// (b) Update: tx 2 boots on trial (systemd-boot counts its entry and
	// systemd's bless generator pulls in boot-complete.target), runs the
	// new program, is blessed; (f) the first boot's /etc and /var files are
	// there. At its end it makes the broken tx 3 the default.
	setNext(t, sys, "/usr/lib/txboot/bootctl set-default 3")
	r2 := bootDebian(t, sys, 2)
	r2.wantBooted(t, "2")
	r2.wantHealthyUp(t)
	r2.want(t, "boot-complete", "active")
	if got := r2.fact("bless-boot"); !strings.HasSuffix(got, "/success") || strings.HasPrefix(got, "inactive") {
		t.Errorf("run 2: systemd-bless-boot.service %q, want it run with success", got)
	}
	if !helloWorldRe.MatchString(r2.fact("hello")) {
		t.Errorf("run 2: hello=%q", r2.fact("hello"))
	}
	r2.want(t, "etc-state", firstBoot)
	r2.want(t, "var-state", firstBoot)
	wantEntry(t, sys, 2, `^txboot-2\.conf$`)
	logSystemdList(t, r2)
	r2.wantSystemdList(t, "txboot-1.conf", "txboot-2.conf")
	logAnalyze(t, r2)

	// (c) Broken update: tx 3 (no libc) fails its 2 tries; with no input
	// the machine comes back on tx 2 under systemd, which says why.
	var broken time.Duration
	for n := 3; n <= 4; n++ {
		r := bootDebian(t, sys, n)
		broken += r.wall
		r.wantBooted(t, "3")
		if !strings.Contains(r.out, debianPanic) {
			t.Errorf("run %d: tx 3 did not fail as expected:\n%s", n, tail(r.out, 40))
		}
	}
	// The next good boot makes tx 4 the default at its end.
	setNext(t, sys, "/usr/lib/txboot/bootctl set-default 4")
	r5 := bootDebian(t, sys, 5)
	r5.wantBooted(t, "2")
	r5.wantHealthyUp(t)
	if st := r5.status(t); !slices.Contains(st.Bad, 3) {
		t.Errorf("run 5: status does not say tx 3 is bad: %s", r5.fact("status-json"))
	}
	if !strings.Contains(r5.out, "TXTEST status: ") || !regexp.MustCompile(`TXTEST status: .*3.*(tries|bad)`).MatchString(r5.out) {
		t.Errorf("run 5: bootctl status does not say why tx 3 is bad")
	}
	wantEntry(t, sys, 5, `^txboot-3\+0-2\.conf$`)
	r5.wantSystemdList(t, "txboot-1.conf", "txboot-2.conf", "txboot-3.conf", "txboot-4.conf")

	// (d) Failing health check: tx 4 is marked bad and reboots at once;
	// the next boot is the newest good tx, no try wasted.
	r6 := bootDebian(t, sys, 6)
	r6.wantBooted(t, "4")
	// Read back from the image: tx 4 bad with the check's reason after
	// one try, tx 2 the default again.
	txs, def, _ := readStore(t, &sys.UEFISystem)
	if tx := txs[4]; tx == nil || tx.State != txstore.StateBad || !strings.Contains(tx.LastFailure, "10-txtest-fail") || tx.Tries != 1 || def != 2 {
		t.Errorf("after run 6: tx 4 %+v, default %d; want bad by its health check after 1 try, default 2", tx, def)
	}
	wantEntry(t, sys, 6, `^txboot-4\+0-1\.conf$`)
	r7 := bootDebian(t, sys, 7)
	r7.wantBooted(t, "2")
	r7.wantHealthyUp(t)
	r7.want(t, "etc-state", firstBoot)

	// (e) Damaged /usr: an object of the default tx 2 deleted; initagent
	// falls back to tx 1 in the same boot, and says so in the journal.
	obj := objectOf(t, sys.RootDir, 2, "bin/hello")
	if err := sys.Disk.RootFS().Remove(obj); err != nil {
		t.Fatal(err)
	}
	r8 := bootDebian(t, sys, 8)
	r8.wantBooted(t, "1")
	r8.wantHealthyUp(t)
	r8.want(t, "hello", "none")
	// The health unit brought the entries in step: the failed tx 2 sorts
	// last, so the next boot does not try it first again.
	wantEntry(t, sys, 8, `^txboot-2\+0(-\d+)?\.conf$`)
	r8.want(t, "etc-state", firstBoot)
	r8.want(t, "var-state", firstBoot)
	if st := r8.status(t); st.Requested != 2 || st.Booted != 1 || len(st.BootFailures) < 3 {
		t.Errorf("run 8: status does not show the fallback from tx 2: %s", r8.fact("status-json"))
	}
	if n := r8.fact("journal-txboot"); n == "" || n == "0" || !regexp.MustCompile(`TXTEST journal: .*(fall|problem)`).MatchString(r8.out) {
		t.Errorf("run 8: journalctl -b -t txboot has %q lines and none about the fallback", n)
	}
	// The numbers the README reports.
	t.Logf("MEASURE Debian 13 /usr entries: %s", r1.fact("entries"))
	t.Logf("MEASURE Debian 13 boot to boot-complete (QEMU start to the report): tx 1 %s, tx 2 %s, tx 2 again %s",
		r1.up.Round(time.Millisecond), r2.up.Round(time.Millisecond), r7.up.Round(time.Millisecond))
	t.Logf("MEASURE Debian 13 in-initramfs fallback: initagent total %s for tx 1 normally, %s falling back to tx 1 from a damaged tx 2 (%+d ms)",
		initTotal(r1), initTotal(r8), (initTotal(r8) - initTotal(r1)).Milliseconds())
	t.Logf("MEASURE Debian 13 broken update (tx 3, 2 tries) first boot to tx 2 running again: %s", (broken + r5.up).Round(time.Millisecond))
	t.Logf("Debian 13 scenarios done in %s", time.Since(start).Round(time.Second))

	// File capabilities, xattrs and ACLs: of the installed /usr in the
	// booted tx 1 (install consumes /usr), and of tx 2, committed from a
	// copy of tx 1's tree (cp -a keeps them) plus a package.
	for _, r := range []*debianRun{r1, r2} {
		t.Logf("run %d: getcap=%q cap-plain=%q cap-use=%q xattr=%q acl=%q acl-use=%q", r.n, r.fact("getcap"), r.fact("cap-plain"),
			r.fact("cap-use"), r.fact("xattr"), r.fact("acl"), r.fact("acl-use"))
		r.wantXattrs(t)
	}
}

// TestDebian12: Debian 12 (bookworm) kept: installed, booted and blessed;
// a broken update (no libc, 2 tries) healed back to the good tx.
func TestDebian12(t *testing.T) {
	t.Parallel()
	start := time.Now()
	sys, _, dir := debianSetup(t, fixture.Bookworm, nil)
	commitTree(t, sys, dir, "no-libc", func(tree string) { removeLibc(t, tree) }, "--tries", "2")
	if err := sys.MakeDisk(0, 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the Debian 12 disk (2 txs) in %s", time.Since(start).Round(time.Millisecond))

	setNext(t, sys, "/usr/lib/txboot/bootctl set-default 2")
	r1 := bootDebian(t, sys, 1)
	r1.wantBooted(t, "1")
	r1.wantHealthyUp(t)
	r1.want(t, "os", "12 bookworm")
	// Unsealed: overlayfs on 6.1 has no verity=require, so the entry pins
	// no image, initagent boots with fast verify, and both say why.
	if e := entryText(t, &sys.UEFISystem, 1); strings.Contains(e, "txboot.image=") {
		t.Errorf("Debian 12's entry pins an image (6.1 kernel):\n%s", e)
	}
	b1 := r1.wantSealed(t, false, `.`)
	if l := r1.listLine(1); !strings.Contains(l, "unsealed") || !strings.Contains(l, "6.1") {
		t.Errorf("run 1: bootctl list does not say tx 1 boots unsealed because of its 6.1 kernel: %q", l)
	}
	t.Logf("run 1: unsealed_why=%q; list: %s", b1.UnsealedWhy, r1.listLine(1))
	logAnalyze(t, r1)
	wantEntry(t, sys, 1, `^txboot-1\.conf$`)
	firstBoot := r1.fact("etc-state")

	var broken time.Duration
	for n := 2; n <= 3; n++ {
		r := bootDebian(t, sys, n)
		broken += r.wall
		r.wantBooted(t, "2")
		if !strings.Contains(r.out, debianPanic) {
			t.Errorf("run %d: tx 2 did not fail as expected:\n%s", n, tail(r.out, 40))
		}
	}
	r4 := bootDebian(t, sys, 4)
	r4.wantBooted(t, "1")
	r4.wantHealthyUp(t)
	r4.want(t, "etc-state", firstBoot)
	if st := r4.status(t); !slices.Contains(st.Bad, 2) || st.Booted != 1 {
		t.Errorf("run 4: status does not say tx 2 is bad: %s", r4.fact("status-json"))
	}
	wantEntry(t, sys, 4, `^txboot-2\+0-2\.conf$`)
	t.Logf("MEASURE Debian 12 /usr entries: %s", r1.fact("entries"))
	t.Logf("MEASURE Debian 12 boot to boot-complete (QEMU start to the report): tx 1 %s, tx 1 again %s",
		r1.up.Round(time.Millisecond), r4.up.Round(time.Millisecond))
	t.Logf("MEASURE Debian 12 initagent total, tx 1: %s (%s)", initTotal(r1), r1.phases)
	t.Logf("MEASURE Debian 12 broken update (tx 2, 2 tries) first boot to tx 1 running again: %s", (broken + r4.up).Round(time.Millisecond))
	t.Logf("Debian 12 scenario done in %s", time.Since(start).Round(time.Second))
}
