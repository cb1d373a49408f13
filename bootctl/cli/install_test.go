package cli

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
)

const installKver = "6.1.0-test"

// osRoot is a small Debian-like OS tree (merged /usr, kernel in /boot).
func osRoot(t *testing.T, cmdline string) string {
	t.Helper()
	r := t.TempDir()
	files := map[string]string{
		"usr/bin/sh":         "#!shell\n",
		"usr/lib/os-release": "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
		"usr/lib/modules/" + installKver + "/modules.dep": "",
		"usr/lib/systemd/boot/efi/systemd-bootx64.efi":    "MZ systemd-boot",
		"boot/vmlinuz-" + installKver:                     "the kernel",
		"etc/machine-id":                                  "37b973ccc508418e8dd55cabcdedd325\n",
	}
	if cmdline != "" {
		files["etc/kernel/cmdline"] = cmdline
	}
	for rel, data := range files {
		p := filepath.Join(r, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "sbin", "lib"} {
		os.MkdirAll(filepath.Join(r, "usr", l), 0o755)
		if err := os.Symlink("usr/"+l, filepath.Join(r, l)); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func installArgs(td, root, esp string, extra ...string) []string {
	return append([]string{"--root", root, "install", "--esp", esp,
		"--mkinitramfs", filepath.Join(td, "mkinitramfs"), "--initagent", filepath.Join(td, "initagent")}, extra...)
}

func TestInstallVerb(t *testing.T) {
	td := tools(t)
	root, esp := osRoot(t, "root=PARTUUID=feed console=ttyS0\n"), t.TempDir()
	out := mustRun(t, installArgs(td, root, esp)...)
	for _, w := range []string{"committed", "tx 1", "entries: wrote loader/entries/txboot-1+3.conf", "systemd-boot"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	entry, err := os.ReadFile(filepath.Join(esp, "loader/entries/txboot-1+3.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"title Debian GNU/Linux 12 (bookworm) (tx 1)\n", "machine-id 37b973ccc508418e8dd55cabcdedd325\n",
		"root=PARTUUID=feed ro txboot.tx=1", "console=ttyS0"} {
		if !strings.Contains(string(entry), w) {
			t.Errorf("entry lacks %q:\n%s", w, entry)
		}
	}
	// The tx carries bootctl itself (the running binary) and the tools.
	for _, rel := range []string{"lib/txboot/bootctl", "lib/txboot/initagent", "lib/txboot/mkinitramfs", "lib/modules/" + installKver + "/vmlinuz"} {
		if _, err := os.Stat(filepath.Join(root, ".txboot/trees/1/usr", rel)); err != nil {
			t.Errorf("tx 1: %v", err)
		}
	}
	// Derived settings are not saved: kernel/cmdline is read on every sync.
	if raw := savedEntriesConfig(t, root); strings.Contains(string(raw), "feed") || strings.Contains(string(raw), "ttyS0") {
		t.Errorf("derived settings saved: %s", raw)
	}
	out = mustRun(t, installArgs(td, root, esp)...)
	if !strings.Contains(out, "already installed") || !strings.Contains(out, "entries: up to date") {
		t.Errorf("rerun:\n%s", out)
	}
	if out := mustRun(t, "--root", root, "list"); strings.Count(out, "\n") != 2 {
		t.Errorf("rerun committed again:\n%s", out)
	}
	// A refusal: exit 1, one line naming the path.
	bad := osRoot(t, "root=PARTUUID=feed\n")
	os.Remove(filepath.Join(bad, "bin"))
	code, _, errs := run(t, installArgs(td, bad, t.TempDir())...)
	if code != ExitFail || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, filepath.Join(bad, "bin")) {
		t.Errorf("unmerged: exit %d %q", code, errs)
	}
}

// Without --options and --root-arg, commit and entries sync take root=
// and the other arguments from ROOT/etc/kernel/cmdline, every time, as
// kernel-install does; txboot's own keys there are ignored with a warning.
func TestEntriesFromKernelCmdline(t *testing.T) {
	td := tools(t)
	root, esp := t.TempDir(), t.TempDir()
	cmdline := filepath.Join(root, "etc/kernel/cmdline")
	os.MkdirAll(filepath.Dir(cmdline), 0o755)
	os.WriteFile(cmdline, []byte("root=PARTUUID=abc quiet txboot.tx=9\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte("37b973ccc508418e8dd55cabcdedd325\n"), 0o444)
	code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", "--esp", esp)
	if code != 0 {
		t.Fatalf("commit: %s", out)
	}
	if !strings.Contains(out, "txboot.tx=9") {
		t.Errorf("no warning about txboot.tx=9:\n%s", out)
	}
	entry := func() string {
		b, err := os.ReadFile(filepath.Join(esp, "loader/entries/txboot-1+3.conf"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	e := entry()
	for _, w := range []string{"root=PARTUUID=abc ro txboot.tx=1 ", " quiet\n", "machine-id 37b973ccc508418e8dd55cabcdedd325\n"} {
		if !strings.Contains(e, w) {
			t.Errorf("entry lacks %q:\n%s", w, e)
		}
	}
	if strings.Contains(e, "txboot.tx=9") {
		t.Errorf("reserved key written:\n%s", e)
	}
	os.WriteFile(cmdline, []byte("root=PARTUUID=def splash\n"), 0o644)
	mustRun(t, "--root", root, "entries", "sync")
	if e := entry(); !strings.Contains(e, "root=PARTUUID=def ") || !strings.Contains(e, " splash\n") || strings.Contains(e, "quiet") {
		t.Errorf("kernel/cmdline change not picked up:\n%s", e)
	}
	// Given settings win and are saved.
	mustRun(t, "--root", root, "entries", "sync", "--root-arg", "PARTUUID=given", "--options", "loglevel=3")
	if e := entry(); !strings.Contains(e, "root=PARTUUID=given ") || !strings.Contains(e, " loglevel=3\n") || strings.Contains(e, "splash") {
		t.Errorf("flags do not win:\n%s", e)
	}
}

// systemd's own bootctl reads the entries install and commit write: every
// one is listed, with its tries, and nothing it names is missing. It
// insists on a mount point for the ESP (even with
// SYSTEMD_RELAX_ESP_CHECKS=1, which only skips the FAT and partition
// checks), so the test bind-mounts the ESP directory on itself in a
// private mount namespace; it never looks at the host's ESP or writes
// EFI variables.
func TestSystemdBootctlList(t *testing.T) {
	const sdBootctl = "/usr/bin/bootctl"
	if _, err := os.Stat(sdBootctl); err != nil {
		skipOrFail(t, "systemd's bootctl (Debian package systemd-boot) not installed")
	}
	td := tools(t)
	root, esp := osRoot(t, "root=PARTUUID=feed console=ttyS0\n"), t.TempDir()
	mustRun(t, installArgs(td, root, esp)...)
	code, out := commitKernel(t, root, td, installKver, "kernel-B", "--tries", "2")
	if code != 0 {
		t.Fatalf("commit: %s", out)
	}
	list := func(format string) string {
		script := `mount --bind "$1" "$1" && shift && exec "$@"`
		args := []string{"--mount", "--propagation", "private"}
		if os.Geteuid() != 0 {
			args = append([]string{"--user", "--map-root-user"}, args...)
		}
		args = append(args, "sh", "-c", script, "sh", esp, sdBootctl, "--esp-path="+esp, "--boot-path="+esp, "--no-pager")
		if format != "" {
			args = append(args, "--json="+format)
		}
		cmd := exec.Command("unshare", append(args, "list")...)
		cmd.Env = append(os.Environ(), "SYSTEMD_RELAX_ESP_CHECKS=1")
		b, err := cmd.CombinedOutput()
		if err != nil {
			if strings.Contains(string(b), "unshare") {
				skipOrFail(t, "cannot make a mount namespace for the ESP: "+string(b))
			}
			t.Fatalf("bootctl list: %v\n%s", err, b)
		}
		return string(b)
	}
	type sdEntry struct {
		ID, Path, Title, Linux, Options string
		Initrd                          []string
		TriesLeft                       *int `json:"triesLeft"`
	}
	got := map[string]sdEntry{}
	sc := bufio.NewScanner(strings.NewReader(list("short")))
	for sc.Scan() {
		var e sdEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("bootctl list --json: %v: %s", err, sc.Bytes())
		}
		got[filepath.Base(e.Path)] = e
	}
	want := map[string]int{"txboot-1+3.conf": 3, "txboot-2+2.conf": 2}
	for name, tries := range want {
		e, ok := got[name]
		if !ok {
			t.Errorf("systemd's bootctl does not list %s: %v", name, got)
			continue
		}
		if e.TriesLeft == nil || *e.TriesLeft != tries {
			t.Errorf("%s: tries %v, want %d", name, e.TriesLeft, tries)
		}
		if !strings.Contains(e.Title, "(tx ") || len(e.Initrd) != 1 || !strings.Contains(e.Options, "txboot.digest=") {
			t.Errorf("%s: %+v", name, e)
		}
	}
	if len(got) != len(want) {
		t.Errorf("listed %d entries, want %d: %v", len(got), len(want), got)
	}
	if text := list(""); strings.Contains(text, "No such file") || strings.Count(text, "tries:") != 2 {
		t.Errorf("bootctl list:\n%s", text)
	}
}

func skipOrFail(t *testing.T, why string) {
	t.Helper()
	testkit.Skip(t, why)
}
