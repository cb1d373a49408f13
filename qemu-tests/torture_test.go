package qemutests

// TestPowerCut: real power cuts. The workload runs inside a QEMU guest on
// Debian's kernel, on a disk opened with cache=none, and the host SIGKILLs
// QEMU at a random instant of each step: whatever the guest had not written
// out is lost with its page cache, as in a power cut. Every cycle boots the
// disk again the way the firmware would with no input (the default entry
// systemd-boot would pick, its boot counter decremented), and checks what
// the cut left: the ESP's entries parse and name files that exist, the
// machine reaches the test init on a tx of the store, the store opens,
// every tx it held at the last check and every tx a command reported as
// committed is there with its digest and verifies in full.

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/testkit"
)

const tortureBootWait = 3 * time.Minute

var (
	tortureStatusRe    = regexp.MustCompile(`TXTEST status rc=(\d+) (.*)`)
	tortureVerifyRe    = regexp.MustCompile(`TXTEST verify rc=(\d+) (.*)`)
	tortureFullRe      = regexp.MustCompile(`TXTEST verify-full (\d+) rc=(\d+) (.*)`)
	tortureCommittedRe = regexp.MustCompile(`(?:committed|pulled|applied) tx (\d+) (sha256:[0-9a-f]{64})`)
	tortureBootingRe   = regexp.MustCompile(`txboot: booting tx (\d+) \(([^)]*)\)`)
	tortureStartRe     = regexp.MustCompile(`TXTEST step-start (\S+)`)
	tortureEndRe       = regexp.MustCompile(`TXTEST step-end (\S+) rc=(\d+)`)
	tortureCheckRe     = regexp.MustCompile(`TXTEST check-done|BOOT FAILED|Kernel panic|rescue shell`)
	tortureInitRe      = regexp.MustCompile(`txboot: `)
	tortureRecordRe    = regexp.MustCompile(`txboot: booting tx|BOOT FAILED|Kernel panic`)
	// The record of a commit or pull (its output line), or the step's end.
	tortureRecordOrEndRe = regexp.MustCompile(`(?:committed|pulled|applied) tx \d+ sha256:|TXTEST step-end`)
)

// tortureSteps are the workload steps and their weights.
var tortureSteps = []struct {
	name   string
	weight int
}{
	{"commit", 20}, {"consume", 14}, {"prune", 7}, {"prune-gc", 6}, {"sync", 9},
	{"mark-good", 7}, {"mark-bad", 8}, {"set-default", 8}, {"pull", 12}, {"boot", 9}, {"run", 12},
}

type tortureTx struct {
	ID     uint64 `json:"id"`
	Digest string `json:"digest"`
}

type tortureStatus struct {
	Booted       uint64      `json:"booted"`
	Default      uint64      `json:"default"`
	Bad          []uint64    `json:"bad"`
	Transactions []tortureTx `json:"transactions"`
}

type tortureVerify struct {
	ID       uint64 `json:"id"`
	OK       bool   `json:"ok"`
	Problems any    `json:"problems"`
}

// torture is the host's knowledge between cycles.
type torture struct {
	t    *testing.T
	sys  *fixture.TortureSystem
	rng  *rand.Rand
	seed int64
	// known: every tx that must be in the store (id -> digest): what the
	// last check found, plus what commands reported committed since.
	known map[uint64]string
	// mayGo: txs a prune since the last check was allowed to remove.
	mayGo map[uint64]bool
	// fullDone: txs verified in full once (their objects never change).
	fullDone map[uint64]bool
	last     tortureStatus // the last check's status
	est      map[string]time.Duration
	// bootToRecord: time from initagent's first line to its "booting tx"
	// line (the try is recorded just before), for cuts in the boot.
	bootToRecord time.Duration
	fpNames      map[string][]string // step -> failpoints it can reach
	cuts, cycles int
	dist         map[string]int // "step: how far" -> cuts
	fpCuts       int
}

func tortureCuts(t *testing.T) int {
	n := 40
	if s := os.Getenv("TXBOOT_TORTURE_CUTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("TXBOOT_TORTURE_CUTS=%q: want a positive number", s)
		}
		n = v
	}
	return n
}

func tortureSeed(t *testing.T) int64 {
	if s := os.Getenv("TXBOOT_TORTURE_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 0, 64)
		if err != nil {
			t.Fatalf("TXBOOT_TORTURE_SEED=%q: %v", s, err)
		}
		t.Logf("torture seed %d (from TXBOOT_TORTURE_SEED)", v)
		return v
	}
	v := testkit.Seed(t)
	t.Logf("torture seed %d (replay with TXBOOT_TORTURE_SEED=%d)", v, v)
	return v
}

func TestPowerCut(t *testing.T) {
	t.Parallel()
	cuts := tortureCuts(t)
	start := time.Now()
	tt := newTorture(t, tortureSeed(t))
	t.Logf("%d cuts", cuts)
	for tt.cuts < cuts {
		tt.cycle(false)
	}
	tt.cycle(true) // the state the last cut left, checked
	keys := make([]string, 0, len(tt.dist))
	for k := range tt.dist {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-40s %d\n", k, tt.dist[k])
	}
	seed := tt.seed
	t.Logf("seed %d: %d cycles, %d power cuts (%d at a failpoint crash), 0 lost committed txs, 0 unbootable states; %d txs at the end; in %s\ncuts by step and how far it got:\n%s",
		seed, tt.cycles, tt.cuts, tt.fpCuts, len(tt.known), time.Since(start).Round(time.Second), b.String())
}

// newTorture builds a torture system and the host's knowledge of it.
func newTorture(t *testing.T, seed int64) *torture {
	harness.Need(t, "qemu", "disk")
	k := harness.CloudKernel(t)
	start := time.Now()
	sys, err := fixture.BuildTortureSystem(t.Context(), fixture.TortureSpec{Bins: getBins(t), Dir: t.TempDir(), Kernel: k, RepoTxs: 3})
	if err != nil {
		if sys != nil {
			t.Logf("bootctl log:\n%s", sys.BootctlLog.String())
		}
		t.Fatal(err)
	}
	t.Logf("built torture disk in %s", time.Since(start).Round(time.Millisecond))
	tt := &torture{t: t, sys: sys, rng: rand.New(rand.NewSource(seed)), seed: seed,
		known: map[uint64]string{}, mayGo: map[uint64]bool{}, fullDone: map[uint64]bool{}, dist: map[string]int{},
		est:          map[string]time.Duration{},
		bootToRecord: 2 * time.Second,
		fpNames:      map[string][]string{}}
	for _, n := range failpoint.Names() {
		switch {
		case strings.HasPrefix(n, "commit-manifest/"):
			tt.fpNames["pull"] = append(tt.fpNames["pull"], n)
		case strings.HasPrefix(n, "layer/"):
			tt.fpNames["run"] = append(tt.fpNames["run"], n)
		case strings.HasPrefix(n, "commit/"):
			tt.fpNames["consume"] = append(tt.fpNames["consume"], n)
			if !slices.Contains([]string{"commit/consume-journaled", "commit/adopted", "commit/relink-half", "commit/relinked", "commit/source-removed"}, n) {
				tt.fpNames["commit"] = append(tt.fpNames["commit"], n)
			}
		}
	}
	for _, tx := range sys.Txs {
		tt.known[tx.ID] = tx.Digest
	}
	return tt
}

// TestPowerCutAtReturn cuts the power the moment each command has
// returned: what it reported done must be on the disk. One fixed sequence
// over every ESP write (a new entry, blessing by rename, a rewrite, marks,
// a default, prune) and a commit.
func TestPowerCutAtReturn(t *testing.T) {
	t.Parallel()
	tt := newTorture(t, 1)
	steps := []struct{ step, args string }{
		{"commit", ""},        // tx 2: a new entry, kernel and initrd on the ESP
		{"sync", "--keep 4"},  // its boot: the host counts it, settle blesses it (rename)
		{"mark-bad", "1"},     // rewrites tx 1's entry with a +0 counter
		{"set-default", "1"},  // loader.conf and sort-keys
		{"mark-good", "1"},    // tx 1 blessed again
		{"consume", ""},       // tx 3
		{"run", ""},           // tx 4, made by bootctl run
		{"prune", "--keep 1"}, // entries dropped with the txs
		{"none", ""},
	}
	for _, s := range steps {
		p := newPlan(tt.seed, s.step)
		p["ARGS"] = s.args
		if s.step == "commit" || s.step == "consume" || s.step == "run" {
			p["NFILES"], p["FILESIZE"] = "2", "5000"
		}
		tt.run(p, true)
	}
}

// fail ends the test with what reproduces it.
func (tt *torture) fail(vm *harness.VM, format string, args ...any) {
	tt.t.Helper()
	out := ""
	if vm != nil {
		out = tail(vm.Output(), 80)
	}
	// The disk and the serial log outlive the test, for a look.
	keep := filepath.Join(os.TempDir(), fmt.Sprintf("txboot-torture-%d-cycle%d", tt.seed, tt.cycles))
	if err := os.MkdirAll(keep, 0o755); err == nil {
		fixture.CopyFile(tt.sys.Disk.Path, filepath.Join(keep, "disk.img"))
		fixture.CopyFile(filepath.Join(tt.sys.Dir, "serial.log"), filepath.Join(keep, "serial.log"))
	}
	tt.t.Fatalf("cycle %d (seed %d, replay with TXBOOT_TORTURE_SEED=%d): %s\ndisk and serial log kept in %s\nconsole tail:\n%s",
		tt.cycles, tt.seed, tt.seed, fmt.Sprintf(format, args...), keep, out)
}

// newPlan is a plan for step with no arguments.
func newPlan(seed int64, step string) map[string]string {
	return map[string]string{"SEED": strconv.FormatInt(seed, 10), "STEP": step,
		"NFILES": "0", "FILESIZE": "0", "ARGS": "", "FP": ""}
}

// plan picks the next step and its arguments.
func (tt *torture) plan() map[string]string {
	total := 0
	for _, s := range tortureSteps {
		total += s.weight
	}
	r := tt.rng.Intn(total)
	step := ""
	for _, s := range tortureSteps {
		if r < s.weight {
			step = s.name
			break
		}
		r -= s.weight
	}
	ids := make([]uint64, 0, len(tt.known))
	for id := range tt.known {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if len(ids) > 6 && step != "boot" {
		step = "prune"
	}
	p := newPlan(tt.seed, "")
	pick := func() uint64 {
		if len(ids) == 0 {
			tt.t.Fatal("no tx known") // the booted one always is
		}
		return ids[tt.rng.Intn(len(ids))]
	}
	switch step {
	case "commit", "consume", "run":
		p["NFILES"] = strconv.Itoa(1 + tt.rng.Intn(8))
		p["FILESIZE"] = strconv.Itoa(1024 + tt.rng.Intn(256<<10))
		if tt.rng.Intn(5) == 0 {
			p["ARGS"] = "--no-default"
		}
	case "prune", "prune-gc":
		p["ARGS"] = "--keep " + strconv.Itoa(1+tt.rng.Intn(3))
	case "sync":
		p["ARGS"] = "--keep " + strconv.Itoa(2+tt.rng.Intn(3))
	case "mark-good", "set-default":
		p["ARGS"] = strconv.FormatUint(pick(), 10)
	case "mark-bad":
		// The guest takes the first that is not the booted tx.
		c := slices.Clone(ids)
		tt.rng.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
		p["CANDIDATES"] = joinIDs(c)
	case "pull":
		vs := tt.sys.RepoVersions
		// Any version, older ones too: a pull is refused only for
		// being older than the default, which the torture does not test.
		p["ARGS"] = "--tx " + vs[tt.rng.Intn(len(vs))] + " --allow-downgrade"
	}
	if names := tt.fpNames[step]; len(names) > 0 && tt.rng.Intn(4) == 0 {
		p["FP"] = failpoint.EnvVar + "=" + names[tt.rng.Intn(len(names))] + "=crash"
	}
	p["STEP"] = step
	return p
}

func joinIDs(ids []uint64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(id, 10)
	}
	return strings.Join(s, " ")
}

// cycle boots the disk, checks the previous cut's state, runs one step and
// cuts the power during it (final: check only).
func (tt *torture) cycle(final bool) {
	tt.t.Helper()
	plan := tt.plan()
	if final {
		plan["STEP"] = "none"
	}
	tt.run(plan, false)
}

// run boots once with plan and cuts the power during its step: at a random
// instant, or with atReturn just as the step's command has returned.
func (tt *torture) run(plan map[string]string, atReturn bool) {
	t := tt.t
	t.Helper()
	tt.cycles++
	plan["CYCLE"] = strconv.Itoa(tt.cycles)
	final := plan["STEP"] == "none"
	if !final { // the last check verifies every tx in full
		var v []uint64
		for id := range tt.fullDone {
			v = append(v, id)
		}
		slices.Sort(v)
		plan["VERIFIED"] = joinIDs(v)
	}
	step := plan["STEP"]
	if err := tt.sys.WritePlan(plan); err != nil {
		t.Fatal(err)
	}
	entries, err := tt.sys.ReadEntries()
	if err != nil {
		tt.fail(nil, "ESP after the cut: %v", err)
	}
	bootDir := t.TempDir()
	choice, err := tt.sys.ChooseBoot(entries, bootDir)
	if err != nil {
		tt.fail(nil, "firmware: %v", err)
	}
	vm, err := harness.Start(t.Context(), harness.Config{Kernel: choice.Kernel, Initrd: choice.Initrd, Append: choice.Options,
		Disk: tt.sys.Disk.Path, Disks: []string{tt.sys.Plan}, DiskCache: "none",
		SerialLog: filepath.Join(tt.sys.Dir, "serial.log")})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	how := ""
	if step == "boot" {
		// Cut the boot itself: somewhere from initagent's start to a
		// little after it recorded the try.
		if _, err := vm.Expect(tortureInitRe, tortureBootWait); err != nil {
			tt.fail(vm, "boot via %s: %v", choice.Entry, err)
		}
		d := time.Duration(tt.rng.Int63n(int64(tt.bootToRecord*3/2) + 1))
		time.Sleep(d)
		vm.Kill()
		tt.cuts++
		how = "before the boot record"
		if tortureBootingRe.MatchString(vm.Output()) {
			how = "after the boot record"
		}
		tt.dist["boot: "+how]++
		t.Logf("cycle %d: entry %s, cut the boot after %s (%s)", tt.cycles, choice.Entry, d.Round(time.Millisecond), how)
		return
	}
	if _, err := vm.Expect(tortureInitRe, tortureBootWait); err != nil {
		tt.fail(vm, "boot via %s: %v", choice.Entry, err)
	}
	t0 := time.Now()
	if m, err := vm.Expect(tortureRecordRe, tortureBootWait); err != nil || !strings.HasPrefix(m[0], "txboot: booting") {
		tt.fail(vm, "boot via %s: %v %v", choice.Entry, m, err)
	}
	tt.bootToRecord = (tt.bootToRecord*2 + time.Since(t0)) / 3
	m, err := vm.Expect(tortureCheckRe, tortureBootWait)
	if err != nil {
		tt.fail(vm, "boot via %s did not reach the check: %v", choice.Entry, err)
	}
	if m[0] != "TXTEST check-done" {
		tt.fail(vm, "boot via %s: %s", choice.Entry, m[0])
	}
	checked := vm.Elapsed()
	out := vm.Output()
	tt.check(vm, out)
	if final {
		vm.Kill()
		return
	}
	if _, err := vm.Expect(tortureStartRe, tortureBootWait); err != nil {
		tt.fail(vm, "step %s did not start: %v", step, err)
	}
	started := time.Now()
	toStart := vm.Elapsed()
	est, ok := tt.est[step]
	if !ok {
		est = 3 * time.Second
	}
	fp := plan["FP"]
	var d time.Duration
	if fp != "" || atReturn {
		// Die at the failpoint, then cut: what the crash left unwritten
		// is lost too.
		if _, err := vm.Expect(tortureEndRe, tortureBootWait); err != nil {
			tt.fail(vm, "step %s with %s did not end: %v", step, fp, err)
		}
		if !atReturn {
			time.Sleep(time.Duration(tt.rng.Int63n(int64(300 * time.Millisecond))))
		}
	} else {
		window := est
		rec, isCommit := tt.est[step+"/record"]
		if isCommitStep(step) {
			// The store's part (up to the record) is short next to the
			// initrd and the entries: aim half of the cuts at it.
			if !isCommit {
				rec = est / 2
			}
			if tt.rng.Intn(2) == 0 {
				window = rec
			}
		}
		d = time.Duration(tt.rng.Int63n(int64(window*5/4) + 1))
		deadline := started.Add(d)
		// Learn how long the step and its record take from the runs that
		// get there; still cut at the instant drawn.
		if isCommitStep(step) {
			if m, err := vm.Expect(tortureRecordOrEndRe, d); err == nil && !strings.HasPrefix(m[0], "TXTEST") {
				tt.est[step+"/record"] = (rec*2 + time.Since(started)) / 3
			}
		}
		if _, err := vm.Expect(tortureEndRe, max(0, time.Until(deadline))); err == nil {
			tt.est[step] = (est*2 + time.Since(started)) / 3
		} else if window == est {
			tt.est[step] = max(est, d*11/10)
		}
		time.Sleep(time.Until(deadline))
	}
	selfExit := false
	select {
	case <-vm.Done():
		selfExit = true // the guest powered off before the instant drawn
	default:
	}
	vm.Kill()
	out = vm.Output()
	ended := tortureEndRe.FindStringSubmatch(out[strings.LastIndex(out, "TXTEST step-start"):])
	for _, c := range tortureCommittedRe.FindAllStringSubmatch(out, -1) {
		id, _ := strconv.ParseUint(c[1], 10, 64)
		tt.known[id] = c[2]
	}
	if step == "prune" || step == "prune-gc" {
		keep, _ := strconv.Atoi(strings.TrimPrefix(plan["ARGS"], "--keep "))
		tt.allowPrune(keep)
	}
	how = tt.howFar(step, fp, out, ended)
	if atReturn && fp == "" && (ended == nil || ended[2] != "0") {
		tt.fail(vm, "step %s %s failed: %v", step, plan["ARGS"], ended)
	}
	if selfExit {
		tt.dist[step+": powered off first (no cut)"]++
		t.Logf("cycle %d: step %s %s finished and the guest powered off before the cut", tt.cycles, step, plan["ARGS"])
		return
	}
	tt.cuts++
	if fp != "" {
		tt.fpCuts++
		how = strings.TrimPrefix(fp, failpoint.EnvVar+"=")
	}
	tt.dist[step+": "+how]++
	t.Logf("cycle %d: entry %s, booted tx %d, check %s, step %s %s %s at %s: cut after %s (%s)", tt.cycles, choice.Entry, tt.last.Booted,
		checked.Round(100*time.Millisecond), step, plan["ARGS"], fp, toStart.Round(100*time.Millisecond), time.Since(started).Round(time.Millisecond), how)
}

// isCommitStep: the step ends in a record, then the initrd and entries.
func isCommitStep(step string) bool {
	return step == "commit" || step == "consume" || step == "pull" || step == "run"
}

// howFar says where in the step the cut landed.
func (tt *torture) howFar(step, fp, out string, ended []string) string {
	if ended != nil {
		return "after it returned (rc " + ended[2] + ")"
	}
	switch step {
	case "commit", "consume", "pull", "run":
		if tortureCommittedRe.MatchString(out[strings.LastIndex(out, "TXTEST step-start"):]) {
			return "after the record, before it returned (initrd, entries)"
		}
		return "before the record"
	}
	return "while it ran"
}

// allowPrune: a prune with --keep keep may remove any tx but the default,
// the booted one and the keep newest that are not bad (bootstate.Keep
// counts bad txs last, so a newer bad tx may go while an older one stays;
// the newest good tx is kept too, but the host does not know which txs are
// good, so it does not hold the prune to that here: TestKeep does).
func (tt *torture) allowPrune(keep int) {
	ids := make([]uint64, 0, len(tt.known))
	for id := range tt.known {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	n := 0
	for _, id := range ids {
		// Sure to stay: within the keep newest not-bad ones (the default
		// and the booted tx take their slots there too, as in Keep).
		newest := n < keep && !slices.Contains(tt.last.Bad, id)
		if newest {
			n++
		}
		if !newest && id != tt.last.Default && id != tt.last.Booted {
			tt.mayGo[id] = true
		}
	}
}

// check reads the guest's check of the state the previous cut left.
func (tt *torture) check(vm *harness.VM, out string) {
	b := tortureBootingRe.FindStringSubmatch(out)
	if b == nil {
		tt.fail(vm, "initagent did not say which tx it booted")
	}
	if strings.Contains(out, "BOOT COUNTING IS OFF") {
		tt.fail(vm, "initagent booted without the database")
	}
	sm := tortureStatusRe.FindStringSubmatch(out)
	if sm == nil || sm[1] != "0" {
		tt.fail(vm, "the store does not open (bootctl status): %v", sm)
	}
	var st tortureStatus
	if err := json.Unmarshal([]byte(sm[2]), &st); err != nil {
		tt.fail(vm, "status --json: %v: %s", err, sm[2])
	}
	vm2 := tortureVerifyRe.FindStringSubmatch(out)
	if vm2 == nil || vm2[1] != "0" {
		tt.fail(vm, "verify --full: %v", vm2)
	}
	var vs []tortureVerify
	if err := json.Unmarshal([]byte(vm2[2]), &vs); err != nil {
		tt.fail(vm, "verify --json: %v: %s", err, vm2[2])
	}
	verified := map[uint64]bool{}
	for _, v := range vs {
		if !v.OK {
			tt.fail(vm, "tx %d does not verify: %v", v.ID, v.Problems)
		}
		verified[v.ID] = true
	}
	full := map[uint64]bool{}
	for _, f := range tortureFullRe.FindAllStringSubmatch(out, -1) {
		id, _ := strconv.ParseUint(f[1], 10, 64)
		if f[2] != "0" {
			tt.fail(vm, "tx %d does not verify in full: %s", id, f[3])
		}
		full[id] = true
	}
	present := map[uint64]string{}
	for _, tx := range st.Transactions {
		present[tx.ID] = tx.Digest
		if !verified[tx.ID] {
			tt.fail(vm, "tx %d was not verified", tx.ID)
		}
		if !full[tx.ID] && !tt.fullDone[tx.ID] {
			tt.fail(vm, "tx %d was never verified in full", tx.ID)
		}
	}
	tt.fullDone = map[uint64]bool{}
	for id := range present {
		tt.fullDone[id] = true
	}
	for id, digest := range tt.known {
		got, ok := present[id]
		switch {
		case !ok && tt.mayGo[id]:
		case !ok:
			tt.fail(vm, "committed tx %d (%s) is lost", id, digest)
		case got != digest:
			tt.fail(vm, "tx %d has digest %s, was committed as %s", id, got, digest)
		}
	}
	booted, _ := strconv.ParseUint(b[1], 10, 64)
	if _, ok := present[booted]; !ok || booted != st.Booted {
		tt.fail(vm, "booted tx %d (status says %d), not a tx of the store", booted, st.Booted)
	}
	tt.known = present
	tt.mayGo = map[uint64]bool{}
	tt.last = st
}
