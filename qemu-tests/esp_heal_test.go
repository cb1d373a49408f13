package qemutests

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
)

// espHealHook damages the default entry's kernel on the ESP once (the
// first boot), then runs health, which must repair it.
const espHealHook = fixture.HookSetup + `k=$(sed -n 's/^linux //p' /boot/efi/loader/entries/txboot-2.conf)
echo "TXTEST default-kernel=$k"
if [ ! -e /var/txtest-esp-damaged ]; then
  touch /var/txtest-esp-damaged
  printf 'TXTEST-DAMAGE' | dd of="/boot/efi$k" bs=1 seek=4096 conv=notrunc 2>/dev/null; echo "TXTEST damaged=$?"
  sync
fi
bootctl health --esp /boot/efi; echo "TXTEST health=$?"
` + fixture.HookTeardown

var (
	// systemd-boot's message for a kernel the firmware will not load
	// ("Error loading \txboot\kernels\…\vmlinuz: Unsupported" for a
	// broken PE header; "Failed to execute …: Load Error" for others).
	loadErrorRe = regexp.MustCompile(`Error loading [^\r\n:]*: [A-Za-z ]+|Failed to execute [^\r\n]*`)
	// What the firmware does once systemd-boot hands back: here (no NIC)
	// OVMF starts its next boot option, the EFI shell, which waits at
	// "Shell>"; with a NIC it tries PXE first.
	afterLoadErrorRe = regexp.MustCompile(`Shell> |PXE`)
)

// TestESPHeal: (a) the default entry's kernel on the ESP is damaged while
// the system runs; `bootctl health` repairs it and the next boot is the
// default tx again. (b) the same damage from the host just before a
// reboot: systemd-boot fails the entry on its own (recorded), and the
// fallback entry, chosen in the menu, boots: its kernel is its own copy.
func TestESPHeal(t *testing.T) {
	t.Parallel()
	k := harness.CloudKernel(t)
	sys := uefiSystem(t, fixture.UEFISpec{Timeout: 3, Txs: []fixture.UEFITx{
		{Marker: "tx-1", Kernel: k, Good: true, Hook: fixture.HookHealth},
		{Marker: "tx-2", Kernel: k, Good: true, Hook: espHealHook},
	}})
	esp := sys.Disk.ESPImage()
	linux := func(id int) string {
		t.Helper()
		b, err := esp.ReadFile(fmt.Sprintf("/loader/entries/txboot-%d.conf", id))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if p, ok := strings.CutPrefix(l, "linux "); ok {
				return p
			}
		}
		t.Fatalf("txboot-%d.conf has no linux line:\n%s", id, b)
		return ""
	}
	defKernel, fbKernel := linux(2), linux(1)
	t.Logf("default kernel %s, fallback kernel %s", defKernel, fbKernel)
	if defKernel == fbKernel || !strings.HasSuffix(filepath.Dir(fbKernel), "-fallback") {
		t.Fatalf("the fallback entry shares the default's kernel file: %s", fbKernel)
	}
	good, err := esp.ReadFile(defKernel)
	if err != nil {
		t.Fatal(err)
	}

	// (a) Damaged while running: health repairs it.
	r1 := bootUEFI(t, sys, 1, uefiOpts{})
	r1.wantMarker(t, "tx-2")
	r1.want(t, "TXTEST damaged=0",
		"health: repaired ESP file "+strings.TrimPrefix(defKernel, "/")+" (tx 2): content did not match its name",
		"TXTEST health=0")
	if got, err := esp.ReadFile(defKernel); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("default kernel not repaired on the image (%v)", err)
	}
	// The next boot is the default tx again.
	r2 := bootUEFI(t, sys, 2, uefiOpts{})
	r2.wantMarker(t, "tx-2")
	if r2.booted != "2" {
		t.Fatalf("run 2 booted tx %s, want 2", r2.booted)
	}

	// (b) Damaged from the host just before a reboot.
	// Bytes flipped in the PE header (at e_lfanew): the firmware's loader
	// refuses the image. (Bytes flipped deep in the body, as the guest did
	// in (a), still boot: only hashing sees them.)
	bad := bytes.Clone(good)
	pe := int(binary.LittleEndian.Uint32(good[0x3c:]))
	for i := pe; i < pe+4; i++ {
		bad[i] ^= 0xff
	}
	if err := esp.WriteFile(defKernel, bad); err != nil {
		t.Fatal(err)
	}
	// With no input: record what the firmware does.
	vm := harness.StartT(t, harness.Config{UEFI: true, VarsPath: sys.Vars, Disk: sys.Disk.Path,
		SerialLog: filepath.Join(sys.Dir, "serial-3.log")})
	le, err := vm.Expect(loadErrorRe, uefiBootWait)
	if err != nil {
		t.Fatalf("run 3: systemd-boot did not report the damaged kernel: %v", err)
	}
	m, err := vm.Expect(afterLoadErrorRe, 2*time.Minute)
	if err != nil {
		t.Fatalf("run 3: after %q the firmware did neither: %v", le, err)
	}
	var bds []string
	for _, l := range strings.Split(vm.Output(), "\n") {
		if i := strings.Index(l, "BdsDxe:"); i >= 0 {
			bds = append(bds, strings.TrimSpace(l[i:]))
		}
	}
	t.Logf("run 3 (no input): systemd-boot: %q; then the firmware: %q; at %q", le[0], bds, m[0])
	if strings.Contains(vm.Output(), "TXTEST marker=") {
		t.Fatalf("run 3 booted a tx by itself")
	}
	vm.Kill()

	// Chosen in the menu: the fallback entry (second in menu order) boots
	// from its own copy.
	r4 := bootUEFI(t, sys, 4, uefiOpts{interact: func(vm *harness.VM) error {
		if err := vm.ExpectString("Boot in", 3*time.Minute); err != nil {
			return err
		}
		return vm.Send("\x1b[B\r")
	}})
	r4.wantMarker(t, "tx-1")
	if r4.booted != "1" {
		t.Fatalf("run 4 booted tx %s, want the fallback tx 1", r4.booted)
	}
	// tx 1's own health run repairs the default's kernel too.
	r4.want(t, "repaired ESP file "+strings.TrimPrefix(defKernel, "/")+" (tx 2)")
}
