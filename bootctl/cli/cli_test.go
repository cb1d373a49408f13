package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/efivars"
	"github.com/txboot/txboot/txstore/testtree"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := run(t, args...)
	if code != 0 {
		t.Fatalf("bootctl %v: exit %d\n%s%s", args, code, out, errs)
	}
	return out
}

func tree(t *testing.T, extra ...testtree.File) string {
	d := t.TempDir()
	if err := testtree.Write(d, append(testtree.Sample(), extra...), time.Unix(7, 0)); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestUsageAndExitCodes(t *testing.T) {
	root := t.TempDir()
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{nil, ExitUsage, ""},
		{[]string{"frobnicate"}, ExitUsage, "unknown command"},
		{[]string{"--root", root, "list"}, ExitNotFound, "no txboot store"},
		{[]string{"--root", root, "show", "abc"}, ExitUsage, "not a transaction id"},
		{[]string{"--root", root, "show", "0"}, ExitUsage, "not a transaction id"},
		{[]string{"--root", root, "commit"}, ExitUsage, "one directory"},
		{[]string{"--root", root, "prune", "--keep", "0"}, ExitUsage, "at least 1"},
		{[]string{"--root", root, "verify", "--bogus"}, ExitUsage, "flag provided but not defined"},
	}
	for _, c := range cases {
		code, _, errs := run(t, c.args...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("%v: exit %d %q, want %d %q", c.args, code, errs, c.code, c.msg)
		}
		if strings.Contains(errs, "goroutine") {
			t.Errorf("%v: stack trace in output", c.args)
		}
	}
}

func TestStoreVerbs(t *testing.T) {
	root := t.TempDir()
	out := mustRun(t, "--root", root, "commit", tree(t), "--summary", "base")
	if !strings.Contains(out, "committed tx 1 sha256:") {
		t.Fatalf("commit output %q", out)
	}
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/x", Data: "x", Mode: 0o644}))
	var list struct {
		Default      uint64        `json:"default"`
		Transactions []*txstore.Tx `json:"transactions"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if list.Default != 2 || len(list.Transactions) != 2 || list.Transactions[0].Summary != "base" {
		t.Fatalf("list %+v", list)
	}
	mustRun(t, "--root", root, "verify", "--full")
	// Damage tx 2's tree: verify exits 3 and names the path.
	os.Chmod(filepath.Join(root, ".txboot/trees/2/usr/lib"), 0o755)
	os.Remove(filepath.Join(root, ".txboot/trees/2/usr/lib/x"))
	code, out, _ := run(t, "--root", root, "verify", "2")
	if code != ExitProblems || !strings.Contains(out, "usr/lib/x: missing") {
		t.Fatalf("verify damaged: %d %q", code, out)
	}
	mustRun(t, "--root", root, "pin", "1")
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/y", Data: "y", Mode: 0o644}))
	out = mustRun(t, "--root", root, "prune", "--keep", "1")
	if !strings.Contains(out, "removed 1 tx(s) [2]") {
		t.Fatalf("prune: %q", out)
	}
	code, _, _ = run(t, "--root", root, "show", "2")
	if code != ExitNotFound {
		t.Fatalf("show pruned: %d", code)
	}
	if out := mustRun(t, "--root", root, "show", "1"); !strings.Contains(out, "pinned:   true") {
		t.Fatalf("show: %q", out)
	}
}

func TestMarksHealthRollback(t *testing.T) {
	root := t.TempDir()
	for i := 0; i < 3; i++ {
		mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/v", Data: strings.Repeat("v", i+1), Mode: 0o644}))
	}
	mustRun(t, "--root", root, "mark-good", "1")
	mustRun(t, "--root", root, "mark-good", "2")
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	os.WriteFile(bootInfoPath, []byte(`{"booted":3,"requested":3,"on_trial":true}`), 0o644)

	// A failing required check marks the booted tx bad; the default moves
	// to the newest good tx.
	hd := filepath.Join(root, "etc/txboot/health.d")
	os.MkdirAll(filepath.Join(hd, "wanted"), 0o755)
	os.WriteFile(filepath.Join(hd, "10-ok"), []byte("#!/bin/sh\nexit 0\n"), 0o755)
	os.WriteFile(filepath.Join(hd, "wanted/50-flaky"), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	os.WriteFile(filepath.Join(hd, "20-broken"), []byte("#!/bin/sh\necho nope >&2; exit 7\n"), 0o755)
	code, out, _ := run(t, "--root", root, "health")
	if code != ExitFail || !strings.Contains(out, "FAIL (required)") || !strings.Contains(out, "tx 2 is the default now") {
		t.Fatalf("health failing: %d %q", code, out)
	}
	s, _ := txstore.Open(root, txstore.Options{ReadOnly: true})
	if tx, _ := s.Get(3); tx.State != txstore.StateBad || !strings.Contains(tx.LastFailure, "20-broken") {
		t.Fatalf("tx 3 after failed health: %+v", tx)
	}
	// Masking the broken check (symlink to /dev/null) lets health pass;
	// the failing wanted check is reported, not fatal.
	os.Remove(filepath.Join(hd, "20-broken"))
	os.Symlink("/dev/null", filepath.Join(hd, "20-broken"))
	out = mustRun(t, "--root", root, "health")
	if !strings.Contains(out, "fail (wanted)") || !strings.Contains(out, "tx 3 marked good") {
		t.Fatalf("health passing: %q", out)
	}
	// A default picked in the boot menu overrides loader.conf: status
	// shows it, set-default clears it (rollback then finds none).
	efi := t.TempDir()
	menu, _ := efivars.EncodeString("txboot-1.conf")
	if err := efivars.New(efi).Write(efivars.LoaderEntryDefault, efivars.LoaderGUID, efivars.DefaultAttrs, menu); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, "--root", root, "status", "--efivars", efi); !strings.Contains(out, "Menu default: txboot-1.conf") {
		t.Fatalf("status does not show the menu default:\n%s", out)
	}
	out = mustRun(t, "--root", root, "set-default", "3", "--efivars", efi)
	if !strings.Contains(out, "cleared the boot menu's default (LoaderEntryDefault=txboot-1.conf)") {
		t.Fatalf("set-default: %q", out)
	}
	if d, err := efivars.New(efi).EntryDefault(); !errors.Is(err, efivars.ErrNotExist) {
		t.Fatalf("LoaderEntryDefault still %q (%v)", d, err)
	}
	out = mustRun(t, "--root", root, "rollback", "--efivars", efi)
	if !strings.Contains(out, "tx 2 is the default (was 3)") || strings.Contains(out, "cleared") {
		t.Fatalf("rollback: %q", out)
	}
	out = mustRun(t, "--root", root, "log")
	for _, want := range []string{"mark-bad", "mark-good", "rollback", "health check failed", "cleared LoaderEntryDefault=txboot-1.conf"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	var st statusOut
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "status", "--json", "--efivars", efi)), &st); err != nil {
		t.Fatal(err)
	}
	if st.Booted != 3 || st.Default != 2 || len(st.Bad) != 0 {
		t.Fatalf("status %+v", st)
	}
}

var (
	toolsOnce sync.Once
	toolsDir  string
	toolsErr  error
)

// tools builds the real mkinitramfs and initagent (static) for entry tests.
func tools(t *testing.T) string {
	toolsOnce.Do(func() {
		toolsDir, toolsErr = os.MkdirTemp("", "bootctl-tools-")
		for _, p := range []string{"mkinitramfs", "initagent"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(toolsDir, p), "github.com/txboot/txboot/"+p)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				toolsErr = err
				t.Logf("%s", out)
			}
		}
	})
	if toolsErr != nil {
		t.Fatal(toolsErr)
	}
	return toolsDir
}

func TestEntriesLifecycle(t *testing.T) {
	td := tools(t)
	root, esp := t.TempDir(), t.TempDir()
	kernel := func(data string) testtree.File {
		return testtree.File{Path: "lib/modules/6.1.0-test/vmlinuz", Data: data, Mode: 0o644}
	}
	commit := func(i int, k string, extra ...string) {
		args := append([]string{"--root", root, "commit", tree(t, kernel(k), testtree.File{Path: "lib/v", Data: strings.Repeat("v", i), Mode: 0o644}),
			"--mkinitramfs", filepath.Join(td, "mkinitramfs"), "--initagent", filepath.Join(td, "initagent")}, extra...)
		mustRun(t, args...)
	}
	commit(1, "kernel-A", "--esp", esp, "--root-arg", "PARTUUID=1234", "--options", "console=ttyS0")
	entries := func() []string {
		ents, _ := os.ReadDir(filepath.Join(esp, "loader/entries"))
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	if got := entries(); len(got) != 1 || got[0] != "txboot-1+3.conf" {
		t.Fatalf("entries after first commit: %v", got)
	}
	data, _ := os.ReadFile(filepath.Join(esp, "loader/entries/txboot-1+3.conf"))
	for _, want := range []string{"root=PARTUUID=1234", "txboot.tx=1", "txboot.digest=sha256:", "console=ttyS0"} {
		if !strings.Contains(string(data), want) {
			t.Fatalf("entry lacks %q:\n%s", want, data)
		}
	}
	// Settings were saved: later commits need no flags.
	for i := 2; i <= 7; i++ {
		k := "kernel-A"
		if i >= 6 {
			k = "kernel-B"
		}
		commit(i, k)
	}
	if got := entries(); len(got) != 5 {
		t.Fatalf("want 5 entries (keep 5), got %v", got)
	}
	mustRun(t, "--root", root, "mark-good", "7")
	got := entries()
	if !contains(got, "txboot-7.conf") {
		t.Fatalf("tx 7 not blessed: %v", got)
	}
	mustRun(t, "--root", root, "prune", "--keep", "2")
	got = entries()
	if len(got) != 2 || !contains(got, "txboot-7.conf") || !contains(got, "txboot-6+3.conf") {
		t.Fatalf("after prune --keep 2: %v", got)
	}
	kernels, _ := os.ReadDir(filepath.Join(esp, "txboot/kernels"))
	if len(kernels) != 1 { // only kernel-B remains referenced
		t.Fatalf("kernels on ESP after prune: %d", len(kernels))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
