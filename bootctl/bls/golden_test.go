package bls

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/txboot/txboot/initagent/cmdline"
)

// goldenEntriesDir holds, byte for byte, the entry files Sync writes for the
// fixed txs of TestSyncEntriesGolden: their names (the boot-counting
// grammar systemd-boot reads) and their contents (the command line
// initagent reads). Existing ESPs hold entries in this form. The files are
// edited by hand, on purpose (no -update flag): changing them is a format
// change.
const goldenEntriesDir = "testdata/entries-golden"

func TestSyncEntriesGolden(t *testing.T) {
	esp, host := t.TempDir(), t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(host, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tx := func(id uint64, kernel string) TxInfo {
		return TxInfo{
			ID:         id,
			Digest:     fmt.Sprintf("sha256:%064x", id),
			Kernel:     "6.1.0-57-cloud-amd64",
			KernelPath: file(fmt.Sprint("vmlinuz-", id), kernel),
			InitrdPath: file(fmt.Sprint("initrd-", id), fmt.Sprint("initrd for ", id)),
		}
	}
	t1 := tx(1, "kernel A") // good: no counter
	t1.Good = true
	t2 := tx(2, "kernel A") // bad: counter at 0
	t2.Bad = true
	t3 := tx(3, "kernel B") // the default, a trial with 2 tries left, its sealed image pinned
	t3.TriesLeft = 2
	t3.Kernel, t3.Image = "6.12.57+deb13-cloud-amd64", fmt.Sprintf("sha256:%064x", 0xe3)
	t4 := tx(4, "kernel B") // pinned trial, own title, counter from Tries
	t4.Pinned, t4.Title = true, "Debian 12 (hello 2.10)"
	cfg := SyncConfig{ESP: esp, Default: 3, Root: "UUID=0b1d2c3e-4f50-4617-8a9b-0c1d2e3f4a5b", Options: "quiet console=ttyS0",
		Tries: 3, OSName: "Debian", MachineID: "0123456789abcdef0123456789abcdef"}
	if _, err := Sync(cfg, []TxInfo{t1, t2, t3, t4}); err != nil {
		t.Fatalf("Sync: %v", err)
	}

	names := func(dir string) []string {
		des, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, de := range des {
			out = append(out, de.Name())
		}
		slices.Sort(out)
		return out
	}
	gotDir := filepath.Join(esp, EntriesDir)
	got, want := names(gotDir), names(goldenEntriesDir)
	if !slices.Equal(got, want) {
		for _, n := range got {
			b, _ := os.ReadFile(filepath.Join(gotDir, n))
			t.Logf("%s:\n%s", n, b)
		}
		t.Fatalf("entry files %q, want %q (%s)", got, want, goldenEntriesDir)
	}
	for _, n := range want {
		g, err := os.ReadFile(filepath.Join(gotDir, n))
		if err != nil {
			t.Fatal(err)
		}
		w, err := os.ReadFile(filepath.Join(goldenEntriesDir, n))
		if err != nil {
			t.Fatal(err)
		}
		if string(g) != string(w) {
			t.Errorf("%s =\n%s\nwant (%s)\n%s", n, g, goldenEntriesDir, w)
		}
		// What systemd-boot and initagent will read back.
		e, err := Parse(w)
		if err != nil {
			t.Errorf("golden %s does not parse: %v", n, err)
			continue
		}
		if c, _ := cmdline.Parse(e.Options); (c.Tx == 3) != (c.Image == t3.Image) || c.ImageInvalid {
			t.Errorf("golden %s: initagent reads tx %d image %q (invalid %v); only tx 3 pins %s", n, c.Tx, c.Image, c.ImageInvalid, t3.Image)
		}
	}
}
