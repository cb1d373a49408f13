package qemutests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
)

// TestSigned: the initramfs carries a trusted key (mkinitramfs --trust).
// Txs 1 and 2 are signed by it; tx 3's signature has a flipped bit, tx 4
// is signed by another key, tx 5 (the default) is not signed. A signed tx
// boots; the default is refused, then 4 and 3, and tx 2 boots in the same
// boot, the console saying why each was refused. Without keys nothing
// changes; a trust store that does not parse boots nothing.
func TestSigned(t *testing.T) {
	k := harness.CloudKernel(t)
	b := getBins(t)
	work := t.TempDir()
	root := filepath.Join(work, "root")
	must(t, fixture.RootSkeleton(root))
	specs := []fixture.TxSpec{{Marker: "tx-1"}, {Marker: "tx-2"}, {Marker: "tx-3"}, {Marker: "tx-4"}, {Marker: "tx-5"}}
	if _, err := fixture.CommitTxs(root, filepath.Join(work, "trees"), b, specs); err != nil {
		t.Fatal(err)
	}
	vendor, err := fixture.NewKey(work, "vendor")
	must(t, err)
	other, err := fixture.NewKey(work, "other")
	must(t, err)
	must(t, fixture.Sign(root, 1, vendor, false))
	must(t, fixture.Sign(root, 2, vendor, false))
	must(t, fixture.Sign(root, 3, vendor, true))
	must(t, fixture.Sign(root, 4, other, false))

	garbage := filepath.Join(work, "garbage.pem")
	must(t, os.WriteFile(garbage, []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"), 0o644))
	trusted := initrdFor(t, k, "--trust", vendor.PubFile)
	plain := initrdFor(t, k)
	broken := initrdFor(t, k, "--add-file", garbage+":/etc/txboot/trusted.d/garbage.pem")
	byUUID := "root=UUID=" + rootUUID
	cases := []struct {
		name    string
		initrd  string
		cmdline string
		marker  string // "" : nothing boots
		want    []string
	}{
		{name: "signed tx boots", initrd: trusted, cmdline: byUUID + " txboot.tx=2", marker: "tx-2",
			want: []string{"signed by trusted key " + vendor.ID, `"signed_by":"` + vendor.ID + `"`, "signed by " + vendor.ID + ") sha256:"}},
		{name: "unsigned, other key, flipped: refused, fallback to signed", initrd: trusted, cmdline: byUUID, marker: "tx-2",
			want: []string{
				"tx 5 refused: tx sha256:", "no signature by a trusted key: not signed",
				"tx 4 refused: tx sha256:", "signed by " + other.ID,
				"tx 3 refused: tx sha256:", "signature does not verify: key " + vendor.ID,
				"FALLBACK: requested tx 5", `"booted":2`, `"kind":"unsigned"`, `"kind":"bad-signature"`}},
		{name: "no keys carried: nothing changes", initrd: plain, cmdline: byUUID, marker: "tx-5",
			want: []string{`"booted":5`}},
		{name: "a key that does not parse: nothing boots", initrd: broken, cmdline: byUUID,
			want: []string{"trusted keys cannot be used", "garbage.pem", "no tx is booted unchecked", "BOOT FAILED"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			img := filepath.Join(t.TempDir(), "root.img")
			if _, err := harness.MakeExt4(img, root, 64, harness.Ext4Opts{UUID: rootUUID, Label: rootLabel}); err != nil {
				t.Fatal(err)
			}
			vm := harness.StartT(t, harness.Config{Kernel: k.Vmlinuz, Initrd: c.initrd, Append: "console=ttyS0 panic=-1 " + c.cmdline, Disk: img,
				SerialLog: filepath.Join(t.TempDir(), "serial.log")})
			if _, err := vm.Expect(regexp.MustCompile(`TXTEST done|BOOT FAILED|Kernel panic`), bootWait); err != nil {
				t.Fatalf("boot did not finish: %v", err)
			}
			vm.Wait(time.Minute)
			out := vm.Output()
			marker := ""
			if m := markerRe.FindStringSubmatch(out); m != nil {
				marker = m[1]
			}
			if marker != c.marker {
				t.Errorf("booted marker %q, want %q", marker, c.marker)
			}
			if c.marker == "" && strings.Contains(out, "TXTEST") {
				t.Errorf("a tx ran with a broken trust store")
			}
			mustContain(t, out, c.want...)
		})
	}
}
