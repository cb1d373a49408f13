package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
	"golang.org/x/sys/unix"
)

// runWithin is run, failing instead of hanging (a FIFO on the ESP). The
// limit only guards against a hang.
func runWithin(t *testing.T, esp string, args ...string) (int, string, string) {
	t.Helper()
	type res struct {
		code     int
		out, err string
	}
	ch := make(chan res, 1)
	go func() {
		var out, errb bytes.Buffer
		code := Main(args, &out, &errb)
		ch <- res{code, out.String(), errb.String()}
	}()
	select {
	case r := <-ch:
		return r.code, r.out, r.err
	case <-time.After(60 * time.Second):
		filepath.Walk(esp, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.Mode()&os.ModeNamedPipe != 0 {
				if fd, err := unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
					unix.Close(fd)
				}
			}
			return nil
		})
		t.Fatalf("bootctl %v hung", args)
	}
	return 0, "", ""
}

func savedEntriesConfig(t *testing.T, root string) []byte {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw, err := s.Config(entriesKey)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// --options may not override what txboot writes into every entry; the
// check happens before anything is saved.
func TestEntriesOptionsReserved(t *testing.T) {
	tests := []struct {
		options string
		want    []string // in the error
	}{
		{"txboot.tx=3", []string{`"txboot.tx=3"`, "for each entry"}},
		{"txboot.force=1", []string{"txboot.force", "out of tries"}},
		{"quiet txboot.digest=sha256:00", []string{"txboot.digest"}},
		{"root=/dev/sdz", []string{`"root=/dev/sdz"`, "--root-arg"}},
		{"initrd=/x.img", []string{"initrd"}},
	}
	td := tools(t)
	root, esp := t.TempDir(), t.TempDir()
	if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", "--esp", esp, "--root-arg", "PARTUUID=1"); code != 0 {
		t.Fatalf("commit: %s", out)
	}
	saved := savedEntriesConfig(t, root)
	for _, tt := range tests {
		code, _, errs := run(t, "--root", root, "entries", "sync", "--esp", esp, "--root-arg", "PARTUUID=1", "--options", tt.options)
		if code != ExitUsage || strings.Count(errs, "\n") != 2 { // the error and the usage line
			t.Errorf("--options %q: exit %d %q", tt.options, code, errs)
		}
		for _, w := range tt.want {
			if !strings.Contains(errs, w) {
				t.Errorf("--options %q: error %q lacks %q", tt.options, errs, w)
			}
		}
		if raw := savedEntriesConfig(t, root); !bytes.Equal(raw, saved) {
			t.Fatalf("--options %q: settings saved: %s", tt.options, raw)
		}
		if data, _ := os.ReadFile(filepath.Join(esp, "loader/entries/txboot-1+3.conf")); strings.Contains(string(data), tt.options) {
			t.Fatalf("--options %q written:\n%s", tt.options, data)
		}
	}
	// Allowed: the user's own debug switches and boot policy.
	mustRun(t, "--root", root, "entries", "sync", "--esp", esp, "--root-arg", "PARTUUID=1", "--options", "rd.txboot.debug=1 console=ttyS0 txboot.verify=full")
	if raw := savedEntriesConfig(t, root); !strings.Contains(string(raw), "rd.txboot.debug=1 console=ttyS0 txboot.verify=full") {
		t.Fatalf("settings: %s", raw)
	}
}

func commitKernel(t *testing.T, root, td, kver, data string, extra ...string) (int, string) {
	t.Helper()
	args := append([]string{"--root", root, "commit",
		tree(t, testtree.File{Path: "lib/modules/" + kver + "/vmlinuz", Data: data, Mode: 0o644}, testtree.File{Path: "lib/v", Data: data, Mode: 0o644}),
		"--mkinitramfs", filepath.Join(td, "mkinitramfs"), "--initagent", filepath.Join(td, "initagent")}, extra...)
	code, out, errs := run(t, args...)
	return code, out + errs
}

// Options saved by an older bootctl that contain txboot's own keys are
// ignored with a warning, never written into an entry.
func TestEntriesSavedReservedOptionsIgnored(t *testing.T) {
	td := tools(t)
	root, esp := t.TempDir(), t.TempDir()
	if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", "--esp", esp, "--root-arg", "PARTUUID=1234"); code != 0 {
		t.Fatalf("commit: %s", out)
	}
	s, err := txstore.Open(root, txstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	old, _ := json.Marshal(map[string]any{"esp": esp, "root_arg": "PARTUUID=1234", "keep": 5, "options": "console=ttyS0 txboot.tx=3 root=/dev/sdz"})
	if err := s.SetConfig(entriesKey, old); err != nil {
		t.Fatal(err)
	}
	s.Close()
	code, _, errs := run(t, "--root", root, "entries", "sync")
	if code != 0 || !strings.Contains(errs, "ignoring") || !strings.Contains(errs, "txboot.tx=3") {
		t.Fatalf("entries sync: exit %d %q", code, errs)
	}
	data, err := os.ReadFile(filepath.Join(esp, "loader/entries/txboot-1+3.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "console=ttyS0") || strings.Contains(string(data), "txboot.tx=3") || strings.Contains(string(data), "/dev/sdz") {
		t.Fatalf("entry:\n%s", data)
	}
	if raw := savedEntriesConfig(t, root); strings.Contains(string(raw), "txboot.tx") {
		t.Fatalf("bad options still saved: %s", raw)
	}
}

// One broken entry or foreign file must not keep a healthy tx from being
// blessed: health exits 0 and renames tx 1's entry; only a failure of tx
// 1's own entry fails it.
func TestHealthBlessesDespiteOtherEntries(t *testing.T) {
	td := tools(t)
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	tests := []struct {
		name  string
		setup func(t *testing.T, root, esp string)
		fails bool // tx 1's own entry cannot be blessed
	}{
		{"kernel version with a space", func(t *testing.T, root, esp string) {
			// Sorts after the fixture's 6.1.0-test: the tx's kernel.
			commitKernel(t, root, td, "9.9 evil", "kernel-B")
		}, false},
		{"foreign directory named .conf", func(t *testing.T, root, esp string) {
			os.MkdirAll(filepath.Join(esp, "loader/entries/other.conf"), 0o755)
		}, false},
		{"2 MB foreign .conf", func(t *testing.T, root, esp string) {
			os.WriteFile(filepath.Join(esp, "loader/entries/big.conf"), bytes.Repeat([]byte("#"), 2<<20), 0o644)
		}, false},
		{"FIFO named .conf", func(t *testing.T, root, esp string) {
			unix.Mkfifo(filepath.Join(esp, "loader/entries/fifo.conf"), 0o644)
		}, false},
		{"its own blessed name is a directory", func(t *testing.T, root, esp string) {
			os.MkdirAll(filepath.Join(esp, "loader/entries/txboot-1.conf"), 0o755)
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, esp := t.TempDir(), t.TempDir()
			if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", "--esp", esp, "--root-arg", "PARTUUID=1234"); code != 0 {
				t.Fatalf("commit: %s", out)
			}
			tt.setup(t, root, esp)
			bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
			os.WriteFile(bootInfoPath, []byte(`{"booted":1,"requested":1,"on_trial":true}`), 0o644)
			code, out, errs := runWithin(t, esp, "--root", root, "health")
			_, blessed := os.Stat(filepath.Join(esp, "loader/entries/txboot-1.conf"))
			if tt.fails {
				if code != ExitFail || !strings.Contains(errs, "tx 1: boot entry not blessed") || strings.Count(errs, "bootctl health:") != 1 {
					t.Fatalf("health: exit %d\n%s%s", code, out, errs)
				}
				return
			}
			if code != 0 || blessed != nil {
				t.Fatalf("health: exit %d, blessed: %v\n%s%s", code, blessed, out, errs)
			}
			if _, err := os.Stat(filepath.Join(esp, "loader/entries/txboot-1+3.conf")); err == nil {
				t.Fatal("counted twin left behind")
			}
		})
	}
}

// A verb whose own tx ends up with no boot entry must not exit 0: the
// store would say the tx is the default while the loader cannot boot it.
func TestOwnEntryMissingFails(t *testing.T) {
	td := tools(t)
	root, esp := t.TempDir(), t.TempDir()
	if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", "--esp", esp, "--root-arg", "PARTUUID=1234"); code != 0 {
		t.Fatalf("commit: %s", out)
	}
	code, out := commitKernel(t, root, td, "9.9 evil", "kernel-B")
	if code != ExitFail || !strings.Contains(out, "tx 2: boot entry not written") {
		t.Fatalf("commit of a tx whose entry cannot be written: exit %d\n%s", code, out)
	}
	// The other entry is still there, and set-default back to it works.
	if code, out, errs := run(t, "--root", root, "set-default", "1"); code != 0 {
		t.Fatalf("set-default 1: exit %d\n%s%s", code, out, errs)
	}
	code, out2, errs := run(t, "--root", root, "set-default", "2")
	if code != ExitFail || !strings.Contains(errs, "tx 2: boot entry not written") {
		t.Fatalf("set-default 2: exit %d\n%s%s", code, out2, errs)
	}
}

// A boot that fell back (tx 2 failed verification, tx 1 booted, not on
// trial) must still bring the entries in step with the store: tx 2's entry
// becomes +0, or the loader keeps choosing it first.
func TestHealthAfterFallbackSyncsEntries(t *testing.T) {
	td := tools(t)
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	root, esp := t.TempDir(), t.TempDir()
	if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", "--esp", esp, "--root-arg", "PARTUUID=1234"); code != 0 {
		t.Fatalf("commit 1: %s", out)
	}
	mustRun(t, "--root", root, "mark-good", "1")
	if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-B"); code != 0 {
		t.Fatalf("commit 2: %s", out)
	}
	mustRun(t, "--root", root, "mark-good", "2")
	// What initagent records when tx 2 fails verification at boot: the
	// store says bad, the entries on the ESP are untouched (PID 1 does not
	// write the ESP).
	mustRun(t, "--root", root, "mark-bad", "2", "--reason", "verification failed")
	os.Rename(filepath.Join(esp, "loader/entries/txboot-2+0.conf"), filepath.Join(esp, "loader/entries/txboot-2.conf"))
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	os.WriteFile(bootInfoPath, []byte(`{"booted":1,"requested":2,"failures":[{"tx":2,"reason":"verification failed"}],"on_trial":false}`), 0o644)
	code, out, errs := run(t, "--root", root, "health")
	if code != 0 {
		t.Fatalf("health: exit %d\n%s%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(esp, "loader/entries/txboot-2+0.conf")); err != nil {
		es, _ := os.ReadDir(filepath.Join(esp, "loader/entries"))
		t.Fatalf("tx 2's entry not marked bad after the fallback boot: %v\n%s", es, out)
	}
}

// commit --json is the same commit: the initrd is built and the entry
// written, only the output is JSON.
func TestCommitJSONBuildsEntry(t *testing.T) {
	td := tools(t)
	root, esp := t.TempDir(), t.TempDir()
	code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", "--esp", esp, "--root-arg", "PARTUUID=1234", "--json")
	if code != 0 {
		t.Fatalf("commit --json: exit %d\n%s", code, out)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("commit --json printed more than JSON: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(esp, "loader/entries/txboot-1+3.conf")); err != nil {
		t.Fatalf("commit --json wrote no entry: %v", err)
	}
}
