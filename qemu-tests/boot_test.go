package qemutests

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
)

const (
	rootUUID  = "3c0ffee0-7a3b-4c1d-9e2f-0123456789ab"
	rootLabel = "txroot"
	bootWait  = 3 * time.Minute
)

var (
	baseOnce sync.Once
	baseRoot string
	baseTxs  []*txstore.Tx
	baseErr  error
)

// base builds (once) a root directory whose store holds 3 txs, markers tx-1..3.
func base(t testing.TB) (string, []*txstore.Tx) {
	t.Helper()
	b := getBins(t)
	baseOnce.Do(func() {
		baseRoot = filepath.Join(workDir, "base-root")
		if baseErr = fixture.RootSkeleton(baseRoot); baseErr != nil {
			return
		}
		specs := []fixture.TxSpec{{Marker: "tx-1"}, {Marker: "tx-2"}, {Marker: "tx-3"}}
		baseTxs, baseErr = fixture.CommitTxs(baseRoot, filepath.Join(workDir, "base-trees"), b, specs)
	})
	if baseErr != nil {
		t.Fatal(baseErr)
	}
	return baseRoot, baseTxs
}

// markerObject is the CAS path (relative to root) of tx N's marker file.
func markerObject(n int) string {
	k := cas.NewKey(sha256.Sum256([]byte(fmt.Sprintf("tx-%d\n", n))), 0o644, 0, 0)
	return filepath.Join(txstore.DirName, "objects", k.RelPath())
}

// image copies the base root (hardlinks kept), lets prepare damage it, and
// makes an ext4 image of it without root privileges (mkfs.ext4 -d).
func image(t testing.TB, prepare func(root string)) string {
	t.Helper()
	src, _ := base(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if out, err := exec.Command("cp", "-a", src, root).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if prepare != nil {
		prepare(root)
	}
	img := filepath.Join(dir, "root.img")
	if _, err := harness.MakeExt4(img, root, 64, harness.Ext4Opts{UUID: rootUUID, Label: rootLabel}); err != nil {
		t.Fatal(err)
	}
	return img
}

type bootResult struct {
	out    string
	marker string
	phases string
}

var (
	markerRe = regexp.MustCompile(`TXTEST marker=(\S*)`)
	phasesRe = regexp.MustCompile(`txboot: booting tx (\d+) .*phases: (.*)`)
)

// boot boots img with kernel k and the given extra command line, waits for
// the test init to finish, and returns what the console showed.
func boot(t *testing.T, k harness.Kernel, img, extra string) bootResult {
	t.Helper()
	harness.Need(t, "qemu")
	initrd := initrdFor(t, k)
	appendLine := "console=ttyS0 panic=-1 " + extra
	vm := harness.StartT(t, harness.Config{Kernel: k.Vmlinuz, Initrd: initrd, Append: appendLine, Disk: img,
		SerialLog: filepath.Join(t.TempDir(), "serial.log")})
	if _, err := vm.Expect(regexp.MustCompile(`TXTEST done|BOOT FAILED|Kernel panic`), bootWait); err != nil {
		t.Fatalf("boot did not finish: %v", err)
	}
	vm.Wait(time.Minute)
	out := vm.Output()
	r := bootResult{out: out}
	if m := markerRe.FindStringSubmatch(out); m != nil {
		r.marker = m[1]
	}
	if m := phasesRe.FindStringSubmatch(out); m != nil {
		r.phases = strings.TrimSpace(m[2])
		t.Logf("%s: tx %s phases: %s (wall %s)", k.Version, m[1], r.phases, vm.Elapsed().Round(time.Millisecond))
	}
	return r
}

func mustContain(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("console lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", tail(out, 60))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestBootScenarios: direct kernel boot of the cloud kernel against a root
// whose store holds txs 1..3, each scenario on its own image.
func TestBootScenarios(t *testing.T) {
	k := harness.CloudKernel(t)
	_, txs := base(t)
	digest2 := txs[1].Digest
	byUUID := "root=UUID=" + rootUUID
	cases := []struct {
		name    string
		prepare func(root string)
		cmdline string
		marker  string
		want    []string
	}{
		{name: "default tx", cmdline: byUUID, marker: "tx-3",
			want: []string{"TXTEST usr=ro", `"booted":3`}},
		{name: "explicit older tx", cmdline: byUUID + " txboot.tx=1", marker: "tx-1",
			want: []string{`"booted":1`}},
		{name: "root by label", cmdline: "root=LABEL=" + rootLabel + " txboot.tx=2", marker: "tx-2"},
		{name: "unknown tx id", cmdline: byUUID + " txboot.tx=99", marker: "tx-3",
			want: []string{"requested tx 99 is not in the store", "FALLBACK: requested tx 99"}},
		{name: "bad command line values", cmdline: byUUID + " txboot.tx=abc txboot.verify=sometimes loglevel=99 txboot.force=maybe", marker: "tx-3",
			want: []string{"command line: txboot.tx=", "command line: txboot.verify="}},
		{name: "digest mismatch", cmdline: byUUID + " txboot.tx=3 txboot.digest=" + digest2, marker: "tx-2",
			want: []string{"digest mismatch", "FALLBACK: requested tx 3"}},
		{name: "malformed digest", cmdline: byUUID + " txboot.tx=3 txboot.digest=sha256:xyz", marker: "tx-2",
			want: []string{"malformed", "FALLBACK: requested tx 3"}},
		{name: "object deleted, fast verify", cmdline: byUUID,
			prepare: func(root string) { must(t, os.Remove(filepath.Join(root, markerObject(3)))) },
			marker:  "tx-2", want: []string{"missing from the store", "FALLBACK: requested tx 3"}},
		{name: "object corrupted, fast verify does not read content", cmdline: byUUID,
			prepare: func(root string) { corrupt(t, filepath.Join(root, markerObject(3))) },
			marker:  "\x8bx-3"},
		{name: "object corrupted, full verify", cmdline: byUUID + " txboot.verify=full",
			prepare: func(root string) { corrupt(t, filepath.Join(root, markerObject(3))) },
			marker:  "tx-2", want: []string{"content corrupted", "FALLBACK: requested tx 3"}},
		{name: "tree missing is re-blitted", cmdline: byUUID,
			prepare: func(root string) { must(t, os.RemoveAll(filepath.Join(root, txstore.DirName, "trees/3"))) },
			marker:  "tx-3", want: []string{"re-blitting", "tree re-blitted and verified"}},
		{name: "tree file replaced is re-blitted", cmdline: byUUID,
			prepare: func(root string) {
				p := filepath.Join(root, txstore.DirName, "trees/3/usr/share/txtest/marker")
				os.Chmod(filepath.Dir(p), 0o755)
				must(t, os.Remove(p))
				must(t, os.WriteFile(p, []byte("tx-3\n"), 0o444))
			},
			marker: "tx-3", want: []string{"not a hardlink", "tree re-blitted and verified"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			img := image(t, c.prepare)
			r := boot(t, k, img, c.cmdline)
			if r.marker != c.marker {
				t.Errorf("booted marker %q, want %q", r.marker, c.marker)
			}
			mustContain(t, r.out, c.want...)
		})
	}
}

// TestStockKernel boots Debian's generic kernel, whose ext4 (and its
// dependencies) are modules that mkinitramfs must carry and initagent load.
func TestStockKernel(t *testing.T) {
	k := harness.GenericKernel(t)
	img := image(t, nil)
	r := boot(t, k, img, "root=UUID="+rootUUID+" txboot.tx=2")
	if r.marker != "tx-2" {
		t.Fatalf("marker %q, want tx-2\n%s", r.marker, tail(r.out, 40))
	}
	mustContain(t, r.out, "TXTEST usr=ro", "modules:")
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// corrupt flips the first byte of a file in place (same inode): bit rot.
func corrupt(t testing.TB, p string) {
	t.Helper()
	must(t, os.Chmod(p, 0o644))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, 0)
	must(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, 0)
	must(t, err)
	must(t, os.Chmod(p, 0o444))
}
