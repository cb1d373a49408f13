package qemutests

// UEFI scenarios: OVMF + systemd-boot on a GPT disk built without root,
// entries written by the real `bootctl entries sync` / `bootctl commit
// --esp` on the host. Every reboot is a new QEMU run on the same disk image
// and the same OVMF variable store; after a run the ESP (mtools) and the
// store (debugfs, then txstore read-only) are read back from the image.

import (
	"crypto/sha256"
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
	"github.com/txboot/txboot/txstore/cas"
)

const uefiBootWait = 4 * time.Minute

var (
	uefiMarkerRe  = regexp.MustCompile(`TXTEST marker=(\S*)`)
	uefiBootingRe = regexp.MustCompile(`txboot: booting tx (\d+) \(([^)]*)\) \S+; phases: (.*)`)
	uefiEndRe     = regexp.MustCompile(`TXTEST done|BOOT FAILED|Kernel panic`)
	uefiTotalRe   = regexp.MustCompile(`total=(\d+)ms`)
)

// healthyCheck is a required health check that passes.
const healthyCheck = "#!/usr/bin/busybox sh\necho \"health check: marker $(cat /usr/share/txtest/marker)\"\ntest -s /usr/share/txtest/marker\n"

// uefiSystem builds a UEFI system disk in a fresh temp dir.
func uefiSystem(t *testing.T, spec fixture.UEFISpec) *fixture.UEFISystem {
	t.Helper()
	harness.Need(t, "uefi", "disk")
	spec.Bins = getBins(t)
	if spec.Dir == "" {
		spec.Dir = t.TempDir()
	}
	start := time.Now()
	sys, err := fixture.BuildUEFISystem(t.Context(), spec)
	if err != nil {
		if sys != nil {
			t.Logf("bootctl log:\n%s", sys.BootctlLog.String())
		}
		t.Fatal(err)
	}
	t.Logf("built UEFI disk (%d txs) in %s", len(spec.Txs), time.Since(start).Round(time.Millisecond))
	return sys
}

// uefiRun is one QEMU run (one "boot") of a UEFI system.
type uefiRun struct {
	n      int
	vm     *harness.VM
	out    string
	marker string        // the test init's TXTEST marker=
	booted string        // tx id from initagent's "booting tx N" line
	state  string        // "good" or "on trial, N tries left"
	phases string        // initagent's phase timings
	total  time.Duration // initagent's total
	toInit time.Duration // wall time from QEMU start to the test init's first line
	wall   time.Duration // QEMU's whole run
}

type uefiOpts struct {
	watchdog bool
	// interact, if set, runs against the live VM before the boot is awaited
	// (e.g. keys for the menu).
	interact func(vm *harness.VM) error
	// hang: the run is expected to end without the test init finishing
	// (a watchdog reset); wait for QEMU to exit instead.
	hang bool
}

// bootUEFI runs the system once: QEMU with OVMF on the disk and the shared
// variable store, until the test init powers off (or, with o.hang, until
// QEMU exits by itself).
func bootUEFI(t *testing.T, sys *fixture.UEFISystem, n int, o uefiOpts) *uefiRun {
	t.Helper()
	vm := harness.StartT(t, harness.Config{UEFI: true, VarsPath: sys.Vars, Disk: sys.Disk.Path,
		Watchdog: o.watchdog, SerialLog: filepath.Join(sys.Dir, "serial.log")})
	r := &uefiRun{n: n, vm: vm}
	if o.interact != nil {
		if err := o.interact(vm); err != nil {
			t.Fatalf("run %d: %v", n, err)
		}
	}
	if _, err := vm.Expect(uefiMarkerRe, uefiBootWait); err == nil {
		r.toInit = vm.Marks()[len(vm.Marks())-1].Since
	}
	if o.hang {
		if err := vm.Wait(uefiBootWait); err != nil {
			t.Fatalf("run %d: %v", n, err)
		}
	} else {
		if _, err := vm.Expect(uefiEndRe, uefiBootWait); err != nil {
			t.Fatalf("run %d did not finish: %v", n, err)
		}
		if err := vm.Wait(time.Minute); err != nil {
			t.Fatalf("run %d: %v", n, err)
		}
	}
	r.wall = vm.Elapsed()
	r.out = vm.Output()
	if m := uefiMarkerRe.FindStringSubmatch(r.out); m != nil {
		r.marker = m[1]
	}
	if m := uefiBootingRe.FindStringSubmatch(r.out); m != nil {
		r.booted, r.state, r.phases = m[1], m[2], strings.TrimSpace(m[3])
		if tm := uefiTotalRe.FindStringSubmatch(r.phases); tm != nil {
			ms, _ := strconv.Atoi(tm[1])
			r.total = time.Duration(ms) * time.Millisecond
		}
	}
	t.Logf("run %d: marker %q, initagent booted tx %s (%s), phases %s; init after %s, run %s, exit %q",
		n, r.marker, r.booted, r.state, r.phases, r.toInit.Round(time.Millisecond), r.wall.Round(time.Millisecond), vm.ExitReason())
	return r
}

// want fails the test unless the run's console has every string.
func (r *uefiRun) want(t *testing.T, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(r.out, s) {
			t.Errorf("run %d: console lacks %q", r.n, s)
		}
	}
}

func (r *uefiRun) wantMarker(t *testing.T, marker string) {
	t.Helper()
	if r.marker != marker {
		t.Fatalf("run %d booted marker %q, want %q; console tail:\n%s", r.n, r.marker, marker, tail(r.out, 60))
	}
}

// readStore reads the tx records and the event log back from the image.
func readStore(t *testing.T, sys *fixture.UEFISystem) (map[uint64]*txstore.Tx, uint64, []txstore.Event) {
	t.Helper()
	s, err := sys.ReadStore(t.TempDir())
	if err != nil {
		t.Fatalf("read store: %v", err)
	}
	defer s.Close()
	txs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	def, err := s.Default()
	if err != nil {
		t.Fatal(err)
	}
	evs, err := s.Events(200)
	if err != nil {
		t.Fatal(err)
	}
	m := map[uint64]*txstore.Tx{}
	for _, tx := range txs {
		m[tx.ID] = tx
	}
	return m, def, evs
}

func entries(t *testing.T, sys *fixture.UEFISystem) []string {
	t.Helper()
	es, err := sys.Entries()
	if err != nil {
		t.Fatalf("ESP entries: %v", err)
	}
	return es
}

func wantEntries(t *testing.T, sys *fixture.UEFISystem, want ...string) {
	t.Helper()
	got := entries(t, sys)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ESP entries %v, want %v", got, want)
	}
}

func hasEvent(evs []txstore.Event, tx uint64, kind string) bool {
	for _, e := range evs {
		if e.TxID == tx && e.Kind == kind {
			return true
		}
	}
	return false
}

func describeEvents(evs []txstore.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %d %-12s tx %d %s\n", e.Seq, e.Kind, e.TxID, e.Detail)
	}
	return b.String()
}

// TestUEFIBlessHealthy (a): a new tx boots under OVMF + systemd-boot, its
// health check passes, its entry is blessed and the store says good.
func TestUEFIBlessHealthy(t *testing.T) {
	t.Parallel()
	k := harness.CloudKernel(t)
	sys := uefiSystem(t, fixture.UEFISpec{Txs: []fixture.UEFITx{
		{Marker: "tx-1", Kernel: k, Good: true, Hook: fixture.HookHealth},
		{Marker: "tx-2", Kernel: k, Hook: fixture.HookHealth,
			Health: map[string]string{"required/10-marker": healthyCheck}},
	}})
	wantEntries(t, sys, "txboot-1.conf", "txboot-2+3.conf")

	r := bootUEFI(t, sys, 1, uefiOpts{})
	r.wantMarker(t, "tx-2")
	r.want(t, "TXTEST entries-before=txboot-1.conf txboot-2+2-1.conf ",
		"health check: marker tx-2", "health: ok   (required)", "tx 2 marked good",
		"entries: renamed loader/entries/txboot-2+2-1.conf -> loader/entries/txboot-2.conf",
		"TXTEST health=0", "TXTEST entries-after=txboot-1.conf txboot-2.conf ")
	if r.booted != "2" || !strings.HasPrefix(r.state, "on trial") {
		t.Errorf("initagent booted tx %s (%s), want tx 2 on trial", r.booted, r.state)
	}
	wantEntries(t, sys, "txboot-1.conf", "txboot-2.conf")
	txs, def, evs := readStore(t, sys)
	if tx := txs[2]; tx == nil || tx.State != txstore.StateGood || tx.Tries != 1 {
		t.Errorf("store: tx 2 = %+v, want good after 1 try", tx)
	}
	if def != 2 {
		t.Errorf("store default %d, want 2", def)
	}
	if !hasEvent(evs, 2, "boot") || !hasEvent(evs, 2, "mark-good") {
		t.Errorf("event log lacks tx 2's boot and mark-good:\n%s", describeEvents(evs))
	}

	// The blessed entry boots without counting from now on.
	r2 := bootUEFI(t, sys, 2, uefiOpts{})
	r2.wantMarker(t, "tx-2")
	r2.want(t, "TXTEST entries-before=txboot-1.conf txboot-2.conf ")
	if r2.booted != "2" || r2.state != "good" {
		t.Errorf("run 2: initagent booted tx %s (%s), want tx 2 good", r2.booted, r2.state)
	}
	if txs, _, _ := readStore(t, sys); txs[2].Tries != 1 || txs[2].State != txstore.StateGood {
		t.Errorf("run 2: store tx 2 %+v, want good, still 1 try spent", txs[2].Boot)
	}
}

// failingHook is an init that dies before anything marks the tx good:
// PID 1 exits, the kernel panics and (panic=-1) reboots.
const failingHook = `echo "TXTEST failing before the good mark"
exit 1
`

// TestUEFIFailingTxFallsBack (b): a new tx whose init fails before the
// good mark gets exactly its tries (2) and then, with no input, the machine
// comes up on the previous good tx; the store marks the new tx bad with a
// reason and its entry sorts last (+0-N).
func TestUEFIFailingTxFallsBack(t *testing.T) {
	t.Parallel()
	k := harness.CloudKernel(t)
	sys := uefiSystem(t, fixture.UEFISpec{Txs: []fixture.UEFITx{
		{Marker: "tx-1", Kernel: k, Good: true, Hook: fixture.HookHealth},
		{Marker: "tx-2", Kernel: k, Tries: 2, Hook: failingHook},
	}})
	wantEntries(t, sys, "txboot-1.conf", "txboot-2+2.conf")

	start := time.Now()
	var runs []*uefiRun
	for n := 1; n <= 4; n++ {
		r := bootUEFI(t, sys, n, uefiOpts{})
		runs = append(runs, r)
		if r.marker == "tx-1" {
			break
		}
		r.wantMarker(t, "tx-2")
		r.want(t, "TXTEST failing before the good mark")
		txs, _, _ := readStore(t, sys)
		if tx := txs[2]; tx.Tries != n {
			t.Errorf("after run %d: store says tx 2 spent %d tries, want %d (%+v)", n, tx.Tries, n, tx.Boot)
		}
		t.Logf("after run %d: entries %v, store tx 2 %+v", n, entries(t, sys), txs[2].Boot)
	}
	last := runs[len(runs)-1]
	last.wantMarker(t, "tx-1")
	// Wall clock from the first QEMU start to tx 1's init (includes the
	// host's reads of the image between runs), and the machine's own time:
	// the failed runs plus the last run up to the init.
	recovered := last.vm.StartedAt().Add(last.toInit).Sub(start)
	machine := last.toInit
	for _, r := range runs[:len(runs)-1] {
		machine += r.wall
	}
	t.Logf("failing tx to previous tx running: %s wall, %s of VM time, over %d runs (%d failed boots of tx 2)",
		recovered.Round(time.Millisecond), machine.Round(time.Millisecond), len(runs), len(runs)-1)
	if got := len(runs) - 1; got != 2 {
		t.Errorf("tx 2's init ran %d times, want exactly its 2 tries", got)
	}
	last.want(t, "TXTEST health=0")
	if last.booted != "1" {
		t.Errorf("run %d: initagent booted tx %q, want 1", last.n, last.booted)
	}
	if strings.Contains(last.out, "FALLBACK") {
		t.Logf("run %d: initagent fell back in the initramfs", last.n)
	} else {
		t.Logf("run %d: systemd-boot skipped the entry out of tries and booted tx 1's entry", last.n)
	}

	wantEntries(t, sys, "txboot-1.conf", "txboot-2+0-2.conf")
	txs, def, evs := readStore(t, sys)
	if tx := txs[1]; tx.State != txstore.StateGood {
		t.Errorf("store: tx 1 is %s, want good", tx.State)
	}
	if tx := txs[2]; tx.State != txstore.StateBad || tx.LastFailure == "" || tx.TriesLeft != 0 || tx.Tries != 2 {
		// Known product gap (see the report): when systemd-boot skips the
		// exhausted entry, nothing records the tx as bad.
		t.Errorf("store: tx 2 = %+v, want bad with a reason after 2 tries", tx.Boot)
	}
	if def == 2 {
		t.Errorf("store default is still tx 2 (out of tries); want the good tx 1")
	}
	t.Logf("event log:\n%s", describeEvents(evs))
}

// casObject is the store path (relative to the root) of the CAS object of
// a file with this content and mode, owned by root.
func casObject(content string, mode uint32) string {
	k := cas.NewKey(sha256.Sum256([]byte(content)), mode, 0, 0)
	return "/" + txstore.DirName + "/objects/" + k.RelPath()
}

// TestUEFICorruptFallsBack (c): a tx whose /usr is damaged: initagent
// falls back to the older good tx within the same boot. Two kinds of
// damage: a CAS object deleted (found by the default fast verify) and one
// corrupted in place (bit rot, found only by txboot.verify=full). Also
// measures the in-initramfs fallback cost against a normal boot of the
// same tx on the same disk (after a warm-up boot with fresh firmware
// variables).
func TestUEFICorruptFallsBack(t *testing.T) {
	k := harness.CloudKernel(t)
	obj := casObject("tx-2\n", 0o644) // tx 2's marker file
	cases := []struct {
		name, options, reason string
		damage                func(fs harness.Ext4Image) error
	}{
		// (No commas in names: the harness passes VarsPath to QEMU unescaped.)
		{name: "deleted object fast verify", options: "console=ttyS0 panic=-1", reason: "missing",
			damage: func(fs harness.Ext4Image) error { return fs.Remove(obj) }},
		{name: "corrupted object full verify", options: "console=ttyS0 panic=-1 txboot.verify=full", reason: "corrupt",
			damage: func(fs harness.Ext4Image) error { _, _, err := fs.CorruptInPlace(obj, 0); return err }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			sys := uefiSystem(t, fixture.UEFISpec{Options: c.options, Txs: []fixture.UEFITx{
				{Marker: "tx-1", Kernel: k, Good: true, Hook: fixture.HookHealth},
				{Marker: "tx-2", Kernel: k, Good: true},
			}})
			bootUEFI(t, sys, 1, uefiOpts{}).wantMarker(t, "tx-2") // warm-up: fresh variable store
			normal := bootUEFI(t, sys, 2, uefiOpts{})
			normal.wantMarker(t, "tx-2")
			if strings.Contains(normal.out, "FALLBACK") {
				t.Fatalf("normal boot fell back:\n%s", tail(normal.out, 40))
			}
			if err := c.damage(sys.Disk.RootFS()); err != nil {
				t.Fatalf("damage tx 2's marker object %s: %v", obj, err)
			}
			r := bootUEFI(t, sys, 3, uefiOpts{})
			r.wantMarker(t, "tx-1")
			r.want(t, "txboot.tx=2 ", "FALLBACK: requested tx 2 failed (", "; booting tx 1 instead", "TXTEST health=0")
			if r.booted != "1" {
				t.Errorf("initagent booted tx %q, want 1", r.booted)
			}
			t.Logf("in-initramfs fallback cost (%s): initagent total %s vs %s normal (%+dms); wall to the test init %s vs %s normal (%+dms)",
				c.name, r.total, normal.total, (r.total - normal.total).Milliseconds(),
				r.toInit.Round(time.Millisecond), normal.toInit.Round(time.Millisecond), (r.toInit - normal.toInit).Milliseconds())

			txs, def, evs := readStore(t, sys)
			if tx := txs[2]; tx.State != txstore.StateBad || !strings.Contains(tx.LastFailure, c.reason) {
				t.Errorf("store: tx 2 = %+v, want bad: %s", tx.Boot, c.reason)
			}
			if !hasEvent(evs, 2, "boot-failed") || !hasEvent(evs, 1, "fallback") {
				t.Errorf("event log lacks tx 2's boot-failed and tx 1's fallback:\n%s", describeEvents(evs))
			}
			if def != 1 {
				t.Errorf("store default %d, want 1 after tx 2 went bad", def)
			}
			// tx 1's mark-good re-synced the entries: the bad tx sorts last.
			wantEntries(t, sys, "txboot-1.conf", "txboot-2+0.conf")
		})
	}
}

// statusHook prints bootctl status (with systemd-boot's variables).
const statusHook = fixture.HookSetup + `bootctl status
` + fixture.HookTeardown

// TestUEFIBootOnce (d1): `bootctl boot-once 1` from the running system
// boots tx 1 on the next boot only; the boot after is the default again.
func TestUEFIBootOnce(t *testing.T) {
	t.Parallel()
	k := harness.CloudKernel(t)
	onceHook := fixture.HookSetup + `if [ ! -e /var/txtest-boot-once ]; then
  bootctl boot-once 1; echo "TXTEST boot-once=$?"
  touch /var/txtest-boot-once
fi
` + fixture.HookTeardown
	sys := uefiSystem(t, fixture.UEFISpec{Txs: []fixture.UEFITx{
		{Marker: "tx-1", Kernel: k, Good: true, Hook: statusHook},
		{Marker: "tx-2", Kernel: k, Good: true, Hook: onceHook},
	}})
	r1 := bootUEFI(t, sys, 1, uefiOpts{})
	r1.wantMarker(t, "tx-2")
	r1.want(t, "next boot: tx 1 (LoaderEntryOneShot=txboot-1[.+]*)", "TXTEST boot-once=0")
	r2 := bootUEFI(t, sys, 2, uefiOpts{})
	r2.wantMarker(t, "tx-1")
	r2.want(t, "txboot.tx=1 ", "Loader:   txboot-1.conf")
	r3 := bootUEFI(t, sys, 3, uefiOpts{})
	r3.wantMarker(t, "tx-2")
	txs, def, _ := readStore(t, sys)
	if def != 2 || txs[1].State != txstore.StateGood || txs[2].State != txstore.StateGood {
		t.Errorf("store: default %d, tx 1 %s, tx 2 %s; want default 2, both good", def, txs[1].State, txs[2].State)
	}
}

// TestUEFIMenuKeys (d2): keys sent to the systemd-boot menu on the serial
// console (down arrow, 'd', Enter) boot the older entry and make it the
// menu's default (LoaderEntryDefault, which overrides loader.conf), so the
// next boot without keys is tx 1 again; there `bootctl set-default 2`
// clears the menu's default, and the boot after is tx 2.
func TestUEFIMenuKeys(t *testing.T) {
	t.Parallel()
	k := harness.CloudKernel(t)
	menuHook := fixture.HookSetup + `bootctl status
if [ -e /var/txtest-menu ]; then
  bootctl set-default 2 --esp /boot/efi; echo "TXTEST set-default=$?"
fi
touch /var/txtest-menu
` + fixture.HookTeardown
	sys := uefiSystem(t, fixture.UEFISpec{Timeout: 4, Txs: []fixture.UEFITx{
		{Marker: "tx-1", Kernel: k, Good: true, Hook: menuHook},
		{Marker: "tx-2", Kernel: k, Good: true},
	}})
	conf, err := sys.Disk.ESPImage().ReadFile("/loader/loader.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "timeout 4") || !strings.Contains(string(conf), "default txboot-[1-9]*") {
		t.Errorf("loader.conf:\n%s", conf)
	}
	r := bootUEFI(t, sys, 1, uefiOpts{interact: func(vm *harness.VM) error {
		if err := vm.ExpectString("Boot in", 3*time.Minute); err != nil {
			return err
		}
		for _, key := range []string{"\x1b[B", "d", "\r"} {
			if err := vm.Send(key); err != nil {
				return err
			}
			time.Sleep(300 * time.Millisecond)
		}
		return nil
	}})
	r.wantMarker(t, "tx-1")
	r.want(t, "txboot.tx=1 ", "Loader:   txboot-1.conf", "Menu default: txboot-1.conf")
	r2 := bootUEFI(t, sys, 2, uefiOpts{})
	r2.wantMarker(t, "tx-1")
	r2.want(t, "cleared the boot menu's default (LoaderEntryDefault=txboot-1.conf)", "TXTEST set-default=0")
	r3 := bootUEFI(t, sys, 3, uefiOpts{})
	r3.wantMarker(t, "tx-2")
}

// TestUEFIPrune (e): 7 txs, the two oldest on another kernel; the running
// system prunes to 5: exactly the 5 newest entries remain, sharing one
// kernel and one initrd copy (the fallback entry, tx 6, has its own), and
// the kernel and initrd only the pruned txs used are gone from the ESP.
func TestUEFIPrune(t *testing.T) {
	t.Parallel()
	cloud := harness.CloudKernel(t)
	generic := harness.GenericKernel(t)
	pruneHook := fixture.HookSetup + `bootctl health --esp /boot/efi; echo "TXTEST health=$?"
bootctl prune --keep 5; echo "TXTEST prune=$?"
bootctl entries sync --esp /boot/efi --keep 5; echo "TXTEST sync=$?"
` + fixture.HookTeardown
	var txs []fixture.UEFITx
	for i := 1; i <= 7; i++ {
		tx := fixture.UEFITx{Marker: fmt.Sprintf("tx-%d", i), Kernel: cloud, Good: i < 7}
		if i <= 2 {
			tx.Kernel = generic
		}
		if i == 7 {
			tx.Hook = pruneHook
		}
		txs = append(txs, tx)
	}
	sys := uefiSystem(t, fixture.UEFISpec{Keep: 7, Txs: txs})

	// Before: 7 entries; one kernel and one initrd copy per kernel flavour,
	// shared by the entries that boot it.
	wantEntries(t, sys, "txboot-1.conf", "txboot-2.conf", "txboot-3.conf", "txboot-4.conf",
		"txboot-5.conf", "txboot-6.conf", "txboot-7+3.conf")
	refs := map[int][2]string{} // tx -> kernel, initrd digest dirs
	linkRe := regexp.MustCompile(`(?m)^linux\s+/txboot/kernels/([0-9a-f]{64}(?:-fallback)?)/vmlinuz\s*$`)
	initrdRe := regexp.MustCompile(`(?m)^initrd\s+/txboot/initrds/([0-9a-f]{64}(?:-fallback)?)/initrd\.img\s*$`)
	for _, e := range entries(t, sys) {
		data, err := os.ReadFile(filepath.Join(sys.ESPDir, "loader", "entries", e))
		if err != nil {
			t.Fatal(err)
		}
		id, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(strings.TrimSuffix(e, ".conf"), "+", 2)[0], "txboot-"))
		lm, im := linkRe.FindSubmatch(data), initrdRe.FindSubmatch(data)
		if lm == nil || im == nil {
			t.Fatalf("entry %s lacks linux/initrd lines:\n%s", e, data)
		}
		refs[id] = [2]string{string(lm[1]), string(im[1])}
	}
	oldK, newK := refs[1], refs[7]
	for id := 1; id <= 7; id++ {
		want := newK
		if id <= 2 {
			want = oldK
		}
		if id == 6 { // the fallback (newest good after the default, 7): its own copies
			want = [2]string{newK[0] + "-fallback", newK[1] + "-fallback"}
		}
		if refs[id] != want {
			t.Errorf("tx %d's entry uses kernel/initrd %v, want the shared %v", id, refs[id], want)
		}
	}
	if oldK[0] == newK[0] || oldK[1] == newK[1] {
		t.Fatalf("the two kernel flavours share a kernel or initrd copy: %v %v", oldK, newK)
	}
	wantESPDir(t, sys, "/txboot/kernels", oldK[0], newK[0], newK[0]+"-fallback")
	wantESPDir(t, sys, "/txboot/initrds", oldK[1], newK[1], newK[1]+"-fallback")

	r := bootUEFI(t, sys, 1, uefiOpts{})
	r.wantMarker(t, "tx-7")
	r.want(t, "TXTEST health=0", "removed 2 tx(s)", "TXTEST prune=0", "TXTEST sync=0",
		"entries: removed loader/entries/txboot-1.conf", "entries: removed loader/entries/txboot-2.conf")

	wantEntries(t, sys, "txboot-3.conf", "txboot-4.conf", "txboot-5.conf", "txboot-6.conf", "txboot-7.conf")
	wantESPDir(t, sys, "/txboot", "initrds", "kernels")
	wantESPDir(t, sys, "/txboot/kernels", newK[0], newK[0]+"-fallback")
	wantESPDir(t, sys, "/txboot/initrds", newK[1], newK[1]+"-fallback")
	wantESPDir(t, sys, "/txboot/kernels/"+newK[0], "vmlinuz")
	wantESPDir(t, sys, "/txboot/initrds/"+newK[1], "initrd.img")
	st, def, _ := readStore(t, sys)
	var ids []uint64
	for id := range st {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []uint64{3, 4, 5, 6, 7}) || def != 7 || st[7].State != txstore.StateGood {
		t.Errorf("store after prune: txs %v default %d; want 3..7, default 7 good", ids, def)
	}
	fs := sys.Disk.RootFS()
	for _, p := range []string{"/.txboot/trees/1", "/.txboot/trees/2", casObject(mustRead(t, generic.Vmlinuz), 0o755)} {
		if ok, err := fs.Exists(p); err != nil || ok {
			t.Errorf("after prune + gc, %s still exists (%v)", p, err)
		}
	}
	// The initrds bootctl built for the pruned txs belong to them too.
	// Known product bug (see the report): prune leaves .txboot/boot/<id>.
	for _, p := range []string{"/.txboot/boot/1", "/.txboot/boot/2"} {
		if ok, err := fs.Exists(p); err != nil || ok {
			t.Errorf("after prune, the pruned tx's initrd dir %s still exists in the store (%v)", p, err)
		}
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantESPDir asserts the exact set of names in an ESP directory.
func wantESPDir(t *testing.T, sys *fixture.UEFISystem, dir string, want ...string) {
	t.Helper()
	got, err := sys.ESPList(dir)
	if err != nil {
		t.Fatalf("ESP %s: %v", dir, err)
	}
	slices.Sort(got) // mtools' order is not Go's ("<hex>-fallback" before "<hex>")
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ESP %s holds %v, want exactly %v", dir, got, want)
	}
}

// hangHook hangs the boot of a tx on trial before anything marks it good.
const hangHook = `echo "TXTEST hanging"
while :; do sleep 3600; done
`

// TestUEFIWatchdog (f): with QEMU's i6300esb (generic kernel) initagent
// arms the watchdog for a tx on trial. A tx that proves itself disarms it
// (it then idles past the timeout without a reset); a tx that hangs is
// reset, each reset spends a try, and after its tries the previous good tx
// boots by itself.
func TestUEFIWatchdog(t *testing.T) {
	t.Parallel()
	k := harness.GenericKernel(t)
	// tx 2 proves itself, idles past the watchdog timeout, then makes the
	// hanging tx 3 the default (an upgrade); only on its first boot.
	provenHook := fixture.HookSetup + `bootctl health --esp /boot/efi; echo "TXTEST health=$?"
if [ ! -e /var/txtest-proven ]; then
  touch /var/txtest-proven
  sleep 14
  echo "TXTEST still running after the watchdog timeout"
  bootctl set-default 3 --esp /boot/efi
fi
` + fixture.HookTeardown
	sys := uefiSystem(t, fixture.UEFISpec{Options: "console=ttyS0 panic=-1 txboot.watchdog=10", Txs: []fixture.UEFITx{
		{Marker: "tx-1", Kernel: k, Good: true, Hook: fixture.HookHealth},
		{Marker: "tx-2", Kernel: k, Hook: provenHook},
		{Marker: "tx-3", Kernel: k, Tries: 2, Hook: hangHook, NoDefault: true},
	}})
	r := bootUEFI(t, sys, 1, uefiOpts{watchdog: true})
	r.wantMarker(t, "tx-2")
	r.want(t, "watchdog armed: 10 s", "tx 2 marked good", "watchdog disarmed", "TXTEST health=0",
		"TXTEST still running after the watchdog timeout", "tx 3 is the default", "TXTEST done")
	if r.vm.WatchdogFired() {
		t.Fatalf("run 1: the watchdog fired after tx 2 was marked good")
	}
	wantEntries(t, sys, "txboot-1.conf", "txboot-2.conf", "txboot-3+2.conf")

	for n := 2; n <= 3; n++ {
		r := bootUEFI(t, sys, n, uefiOpts{watchdog: true, hang: true})
		r.wantMarker(t, "tx-3")
		r.want(t, "watchdog armed: 10 s", "TXTEST hanging")
		if !r.vm.WatchdogFired() || strings.Contains(r.out, "TXTEST done") {
			t.Fatalf("run %d: no watchdog reset (exit %q, events %v)", n, r.vm.ExitReason(), r.vm.Events())
		}
		spent := n - 1
		txs, _, _ := readStore(t, sys)
		if tx := txs[3]; tx.Tries != spent || tx.TriesLeft != 2-spent {
			t.Errorf("after run %d: store tx 3 %+v, want %d tries spent, %d left", n, tx.Boot, spent, 2-spent)
		}
		t.Logf("after run %d: entries %v", n, entries(t, sys))
	}
	r = bootUEFI(t, sys, 4, uefiOpts{watchdog: true})
	r.wantMarker(t, "tx-2")
	if r.vm.WatchdogFired() {
		t.Errorf("run 4: the watchdog fired on the good tx")
	}
	wantEntries(t, sys, "txboot-1.conf", "txboot-2.conf", "txboot-3+0-2.conf")
}
