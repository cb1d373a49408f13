package qemutests

// Sealed /usr on Debian 13 (TestSealedDebian): the real trixie root and
// its 6.12 kernel, installed by `bootctl install` on an ext4 with the
// verity feature, under OVMF + systemd-boot like TestDebian. The host
// cannot enable fs-verity (its kernel has none), so the store starts
// unsealed and txboot-seal.service seals it in the first boot. Four QEMU
// runs on one disk:
//
//  1. tx 1, first boot: unsealed ("not sealed yet"), blessed; the seal
//     unit seals every tx; `bootctl list` says tx 2 and 3 boot sealed.
//  2. tx 2 (on trial): sealed (boot.json, /usr is an overlay), blessed.
//  3. tx 3 (on trial): sealed; after the boot, before the health check,
//     one byte of a data block of an object only tx 3 has is flipped
//     through the block device with caches dropped: reading the file
//     gives EIO, the required health check reading it fails, tx 3 is
//     marked bad after one try and the machine reboots.
//  4. no input: boot counting left tx 3 behind, the default is tx 2, but
//     tx 2's image was damaged on disk (a byte of its first block, read
//     at mount): initagent falls back to tx 1 in the same boot, and
//     boot.json names the image.
//
// A Debian 12 tx (6.1 kernel: no txboot.image= pin) booting unsealed is
// asserted in TestDebian12, which boots one anyway (a Debian 12 tx in this
// store would cost one more boot and 300 MB). The verify phase of the 8k
// tree is logged from runs 1 (fast) and 2 (sealed); full verify and the
// tree with 120k more files are BenchmarkSealVerify (scripts/bench-seal.sh).

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/txstore"
)

const (
	// sealProbe is a file of the updates (relative to /usr) whose object
	// run 3 damages; each tx's probe has content of its own, so the damage
	// stays with tx 3.
	sealProbe = "share/txtest/sealprobe"
	// sealProbeCheck is the required health check that reads it.
	sealProbeCheck = "20-txtest-read-probe"
	// sealProbeSize spans several blocks; the flipped byte is in the second.
	sealProbeSize = 64 << 10
	sealProbeFlip = 5000
	// sealImageFlip is a byte of the image's first block (the EROFS
	// superblock's block, which the mount reads): with fs-verity on the
	// image, the read fails even where the byte itself is unused.
	sealImageFlip = 4000
)

// sealBootJSON is what the tests read of /run/txboot/boot.json: bootinfo's
// fields plus the seal ones (Sealed is a pointer: absent means an
// initagent that does not know sealing).
type sealBootJSON struct {
	Booted    uint64 `json:"booted"`
	Requested uint64 `json:"requested"`
	Failures  []struct {
		Tx     uint64 `json:"tx"`
		Reason string `json:"reason"`
	} `json:"failures"`
	OnTrial     bool             `json:"on_trial"`
	PhasesMS    map[string]int64 `json:"phases_ms"`
	Sealed      *bool            `json:"sealed"`
	UnsealedWhy string           `json:"unsealed_why"`
}

// bootJSON decodes the report's boot-json fact.
func (r *debianRun) bootJSON(t *testing.T) sealBootJSON {
	t.Helper()
	var b sealBootJSON
	if err := json.Unmarshal([]byte(r.fact("boot-json")), &b); err != nil {
		t.Fatalf("run %d: boot.json: %v: %q", r.n, err, r.fact("boot-json"))
	}
	return b
}

// wantSealed checks boot.json's seal fields: sealed, or unsealed with a
// reason matching why.
func (r *debianRun) wantSealed(t *testing.T, sealed bool, why string) sealBootJSON {
	t.Helper()
	b := r.bootJSON(t)
	switch {
	case b.Sealed == nil:
		t.Errorf("run %d: boot.json has no \"sealed\" (initagent's sealed boot path missing?): %s", r.n, r.fact("boot-json"))
	case *b.Sealed != sealed:
		t.Errorf("run %d: boot.json sealed=%v, want %v (unsealed_why %q; /usr is %s)", r.n, *b.Sealed, sealed, b.UnsealedWhy, r.fact("usr-fs"))
	case !sealed && !regexp.MustCompile(why).MatchString(b.UnsealedWhy):
		t.Errorf("run %d: boot.json unsealed_why=%q, want it to match %s", r.n, b.UnsealedWhy, why)
	case sealed && b.UnsealedWhy != "":
		t.Errorf("run %d: sealed, yet unsealed_why=%q", r.n, b.UnsealedWhy)
	}
	if sealed && r.fact("usr-fs") != "overlay" {
		t.Errorf("run %d: sealed boot but /usr is %q, want overlay (EROFS image + objects)", r.n, r.fact("usr-fs"))
	}
	return b
}

// listLine returns the `bootctl list` line of tx id as the guest printed it.
func (r *debianRun) listLine(id uint64) string {
	re := regexp.MustCompile(`(?m)^TXTEST list: +` + strconv.FormatUint(id, 10) + `\s.*$`)
	return re.FindString(r.out)
}

var sealedWordRe = regexp.MustCompile(`\bsealed\b`) // not "unsealed"

// wantListSealed: `bootctl list` in the guest says each tx boots sealed.
func (r *debianRun) wantListSealed(t *testing.T, ids ...uint64) {
	t.Helper()
	for _, id := range ids {
		if l := r.listLine(id); !sealedWordRe.MatchString(l) || strings.Contains(l, "unsealed") {
			t.Errorf("run %d: bootctl list does not say tx %d boots sealed: %q", r.n, id, l)
		}
	}
}

// entryText is tx id's boot entry as the host wrote it into the ESP
// directory (the disk's ESP is made from it).
func entryText(t *testing.T, sys *fixture.UEFISystem, id uint64) string {
	t.Helper()
	re := regexp.MustCompile(`^txboot-` + strconv.FormatUint(id, 10) + `(\+[0-9-]+)?\.conf$`)
	des, err := os.ReadDir(filepath.Join(sys.ESPDir, "loader", "entries"))
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if re.MatchString(de.Name()) {
			b, err := os.ReadFile(filepath.Join(sys.ESPDir, "loader", "entries", de.Name()))
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
	t.Fatalf("no entry for tx %d in %s", id, sys.ESPDir)
	return ""
}

// sealProbeData is tx n's probe: deterministic, different per tx.
func sealProbeData(n uint64) []byte {
	rng := rand.New(rand.NewPCG(0x5ea1, n))
	b := make([]byte, sealProbeSize)
	for i := range b {
		b[i] = byte(rng.UintN(256))
	}
	return b
}

// sealUpdate is the change every update makes: Debian's hello, the
// tx's own probe, and the required health check that reads the probe (a
// damaged object of a sealed tx reads as EIO, so the check fails).
func sealUpdate(t *testing.T, hello string, n uint64) func(tree string) {
	return func(tree string) {
		must(t, fixture.UnpackDeb(t.Context(), hello, tree))
		p := filepath.Join(tree, sealProbe)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, sealProbeData(n), 0o644))
		c := filepath.Join(tree, "lib", "txboot", "health.d", "required", sealProbeCheck)
		must(t, os.MkdirAll(filepath.Dir(c), 0o755))
		must(t, os.WriteFile(c, []byte("#!/bin/sh\n# The probe must read back: a damaged object of a sealed tx reads as EIO.\nexec cat /usr/"+sealProbe+" >/dev/null\n"), 0o755))
	}
}

// sealSeconds is the seal unit's run time from its monotonic timestamps.
func sealSeconds(r *debianRun) float64 {
	f := strings.Fields(r.fact("seal-usec"))
	if len(f) != 2 {
		return 0
	}
	a, err1 := strconv.ParseFloat(f[0], 64)
	b, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || b < a {
		return 0
	}
	return (b - a) / 1e6
}

// logSeal logs what the seal unit did in a run.
func logSeal(t *testing.T, r *debianRun) {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(r.out, "\n") {
		if s, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "TXTEST seal-log: "); ok {
			lines = append(lines, s)
		}
	}
	t.Logf("run %d: txboot-seal.service %s in %.1f s:\n%s", r.n, r.fact("seal-unit"), sealSeconds(r), strings.Join(lines, "\n"))
}

// logLines logs a run's console lines that start with prefix.
func logLines(t *testing.T, r *debianRun, prefix string) {
	t.Helper()
	var ls []string
	for _, l := range strings.Split(r.out, "\n") {
		if strings.HasPrefix(l, prefix) {
			ls = append(ls, strings.TrimRight(l, "\r"))
		}
	}
	t.Logf("run %d:\n%s", r.n, strings.Join(ls, "\n"))
}

// imageSize is the size of tx id's image in the host's store.
func imageSize(sys *fixture.DebianSystem, id uint64) (int64, error) {
	s, err := txstore.Open(sys.RootDir, txstore.Options{ReadOnly: true})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	fi, err := os.Stat(s.ImagePath(id))
	if err != nil {
		return 0, fmt.Errorf("tx %d's image: %w", id, err)
	}
	return fi.Size(), nil
}

// storeImagePath is tx id's image relative to the root filesystem.
func storeImagePath(sys *fixture.DebianSystem, id uint64) string {
	s, err := txstore.Open(sys.RootDir, txstore.Options{ReadOnly: true})
	if err != nil {
		return ""
	}
	defer s.Close()
	rel, err := filepath.Rel(sys.RootDir, s.ImagePath(id))
	if err != nil {
		return ""
	}
	return "/" + rel
}

func TestSealedDebian(t *testing.T) {
	t.Parallel()
	start := time.Now()
	sys, hello, dir := debianSetupSpec(t, fixture.Trixie, fixture.DebianSpec{Verity: true})
	for n := uint64(2); n <= 3; n++ {
		commitTree(t, sys, dir, fmt.Sprintf("sealed-%d", n), sealUpdate(t, hello, n))
	}
	if out, err := sys.Run(t.Context(), "list"); err == nil {
		t.Logf("host bootctl list (the host cannot enable fs-verity):\n%s", out)
	}
	for id := uint64(1); id <= 3; id++ {
		if n, err := imageSize(sys, id); err != nil {
			t.Errorf("tx %d has no image after commit on the host: %v", id, err)
		} else {
			t.Logf("MEASURE sealed image size, tx %d (Debian 13 /usr): %d bytes (%.1f MiB)", id, n, float64(n)/(1<<20))
		}
	}
	// Not sealed yet (the host cannot seal): no entry pins an image; an
	// entry's pin is its word that the tx boots sealed.
	for id := uint64(1); id <= 3; id++ {
		if e := entryText(t, &sys.UEFISystem, id); strings.Contains(e, "txboot.image=") {
			t.Errorf("tx %d's entry pins an image before the tx is sealed:\n%s", id, e)
		}
	}
	if err := sys.MakeDisk(0, 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the Debian 13 disk (3 txs, ext4 -O verity) in %s", time.Since(start).Round(time.Millisecond))

	// (1) First boot: unsealed, saying why; the seal unit seals the store.
	setNext(t, sys, "/usr/lib/txboot/bootctl set-default 2")
	r1 := bootDebian(t, sys, 1)
	r1.wantBooted(t, "1")
	r1.wantHealthyUp(t)
	b1 := r1.wantSealed(t, false, `not sealed yet`)
	logSeal(t, r1)
	if u := r1.fact("seal-unit"); !strings.HasSuffix(u, "/success") {
		t.Errorf("run 1: txboot-seal.service %q, want it run with success", u)
	}
	r1.wantListSealed(t, 1, 2, 3)
	logLines(t, r1, "TXTEST list: ")
	r1.dumpOnFailure(t)

	// (2) tx 2 on trial boots sealed and is blessed.
	setNext(t, sys, "/usr/lib/txboot/bootctl set-default 3")
	r2 := bootDebian(t, sys, 2)
	r2.wantBooted(t, "2")
	r2.wantHealthyUp(t)
	b2 := r2.wantSealed(t, true, "")
	if !b2.OnTrial {
		t.Errorf("run 2: tx 2 not on trial")
	}
	if !helloWorldRe.MatchString(r2.fact("hello")) {
		t.Errorf("run 2: hello=%q", r2.fact("hello"))
	}
	wantEntry(t, sys, 2, `^txboot-2\.conf$`)
	if !regexp.MustCompile(`(?m)^TXTEST status: .*\bsealed\b`).MatchString(r2.out) {
		t.Errorf("run 2: bootctl status does not say sealed")
	}
	r2.wantListSealed(t, 2)
	// The seal unit re-synced the entries in run 1: they pin the images now
	// (systemd's own bootctl list prints each entry's options).
	if !regexp.MustCompile(`(?m)^TXTEST sd-list: .*txboot\.image=sha256:[0-9a-f]{64}`).MatchString(r2.out) {
		t.Errorf("run 2: no entry pins txboot.image= after the store was sealed")
	}
	logLines(t, r2, "TXTEST status: ")
	r2.dumpOnFailure(t)

	// (3) tx 3 on trial, sealed; its probe's object damaged after the
	// boot: EIO, the health check fails, tx 3 bad after one try, reboot.
	obj := objectOf(t, sys.RootDir, 3, sealProbe)
	off, err := sys.Disk.RootFS().PhysicalOffset(obj, sealProbeFlip)
	if err != nil {
		t.Fatal(err)
	}
	if err := sys.Disk.RootFS().WriteFile("/var/lib/txtest-damage", fmt.Appendf(nil, "%d /usr/%s\n", off, sealProbe), 0o644); err != nil {
		t.Fatal(err)
	}
	r3 := bootDebian(t, sys, 3)
	r3.wantBooted(t, "3")
	t.Logf("run 3: %s; read back: %s", r3.fact("damage"), r3.fact("damage-read"))
	if got := r3.fact("damage-read"); !strings.Contains(got, "Input/output error") {
		t.Errorf("run 3: reading the damaged %s gave %q, want EIO (is tx 3 sealed? verity on its objects?)", sealProbe, got)
	}
	txs, def, _ := readStore(t, &sys.UEFISystem)
	if tx := txs[3]; tx == nil || tx.State != txstore.StateBad || !strings.Contains(tx.LastFailure, sealProbeCheck) || tx.Tries != 1 || def != 2 {
		t.Errorf("after run 3: tx 3 %+v, default %d; want bad by %s after 1 try, default 2", tx, def, sealProbeCheck)
	}
	wantEntry(t, sys, 3, `^txboot-3\+0-1\.conf$`)
	if t.Failed() {
		r3.dumped = false
		r3.dumpOnFailure(t)
	}

	// (4) tx 2's image damaged: same-boot fallback to tx 1.
	img := storeImagePath(sys, 2)
	old, flipped, err := sys.Disk.RootFS().CorruptInPlace(img, sealImageFlip)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped byte %d of %s: %#x -> %#x", sealImageFlip, img, old, flipped)
	r4 := bootDebian(t, sys, 4)
	r4.wantBooted(t, "1")
	r4.wantHealthyUp(t)
	b4 := r4.bootJSON(t)
	if b4.Requested != 2 || len(b4.Failures) == 0 || b4.Failures[0].Tx != 2 || !strings.Contains(b4.Failures[0].Reason, "image") {
		t.Errorf("run 4: boot.json does not show the fallback from tx 2's damaged image: %s", r4.fact("boot-json"))
	}
	sealed4 := "absent"
	if b4.Sealed != nil {
		sealed4 = strconv.FormatBool(*b4.Sealed)
	}
	t.Logf("run 4: boot.json failures %+v; tx 1 booted sealed=%s (%q)", b4.Failures, sealed4, b4.UnsealedWhy)
	// The fallback has no pin on the command line; its record says sealed
	// and the running kernel can mount it, so it boots sealed too.
	if sealed4 != "true" {
		t.Errorf("run 4: the fallback tx 1 booted sealed=%s (%q), want sealed", sealed4, b4.UnsealedWhy)
	}
	r4.dumpOnFailure(t)

	t.Logf("MEASURE Debian 13 /usr entries: %s", r1.fact("entries"))
	t.Logf("MEASURE sealing the store in the first boot (txboot-seal.service, 3 txs, Debian 13 /usr): %.1f s", sealSeconds(r1))
	t.Logf("MEASURE verify phase, Debian 13 /usr: fast %d ms (run 1, tx 1 unsealed), sealed %d ms (run 2, tx 2); initagent phases: run 1 %s; run 2 %s",
		b1.PhasesMS["verify"], b2.PhasesMS["verify"], r1.phases, r2.phases)
	t.Logf("MEASURE fallback from a damaged image: initagent total %s (run 4) vs %s for tx 2 sealed (run 2)", initTotal(r4), initTotal(r2))
	t.Logf("MEASURE boot to boot-complete: run 1 %s, run 2 %s, run 4 %s; run 3 (damage, failed health, reset) %s",
		r1.up.Round(time.Millisecond), r2.up.Round(time.Millisecond), r4.up.Round(time.Millisecond), r3.wall.Round(time.Millisecond))
	t.Logf("QEMU time: %s over 4 runs; whole test %s",
		(r1.wall + r2.wall + r3.wall + r4.wall).Round(time.Second), time.Since(start).Round(time.Second))
}
