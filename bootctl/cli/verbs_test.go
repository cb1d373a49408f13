package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
)

// TestVerbDeclarations: every verb of the one list has a unique name, help
// text, a usage line for its arguments and a store mode; the help printer
// shows them all.
func TestVerbDeclarations(t *testing.T) {
	_, usage, _ := run(t, "help")
	seen := map[string]bool{}
	for _, v := range allVerbs() {
		if v.name == "" || strings.ContainsAny(v.name, " \t") {
			t.Errorf("verb name %q", v.name)
		}
		if seen[v.name] {
			t.Errorf("verb %q listed twice", v.name)
		}
		seen[v.name] = true
		if v.help == "" {
			t.Errorf("%s: no help text", v.name)
		}
		if v.exec == nil {
			t.Errorf("%s: no exec", v.name)
		}
		if !strings.Contains(usage, "  "+strings.TrimSpace(v.name+" "+v.args)) {
			t.Errorf("%s: not in bootctl help:\n%s", v.name, usage)
		}
		if v.pos.min < 0 || (v.pos.max >= 0 && v.pos.max < v.pos.min) {
			t.Errorf("%s: positional arguments %d..%d", v.name, v.pos.min, v.pos.max)
		}
		if v.pos.max != 0 && v.args == "" {
			t.Errorf("%s: takes arguments but its usage names none", v.name)
		}
		if v.store < storeNone || v.store > storeSelf {
			t.Errorf("%s: store mode %d", v.name, v.store)
		}
	}
	for _, name := range []string{"commit", "list", "show", "verify", "prune", "gc", "pin", "unpin", "mark-good", "mark-bad",
		"health", "log", "set-default", "rollback", "boot-once", "status", "entries", "fsck", "install", "publish", "keygen", "pull", "certify"} {
		if !seen[name] {
			t.Errorf("verb %s missing from allVerbs()", name)
		}
	}
}

// TestVerbArgCount: Main checks each verb's declared argument count
// before it runs: one too few or too many is a usage error (exit 2) that
// shows the verb's usage line, and nothing is opened or created.
func TestVerbArgCount(t *testing.T) {
	// Counts some verbs must declare (with flags that would otherwise
	// make the call valid), besides what each declares.
	explicit := map[string][][]string{
		"keygen": {{"--out", filepath.Join(t.TempDir(), "k"), "extra"}},
		"pull":   {{"file:///a", "file:///b", "--insecure"}},
	}
	for _, v := range allVerbs() {
		bad := explicit[v.name]
		if v.pos.max >= 0 {
			bad = append(bad, strings.Fields(strings.Repeat("1 ", v.pos.max+1)))
		}
		if v.pos.min > 0 {
			bad = append(bad, strings.Fields(strings.Repeat("1 ", v.pos.min-1)))
		}
		for _, args := range bad {
			root := t.TempDir()
			code, _, errs := run(t, append([]string{"--timeout", "50ms", "--root", root, v.name}, args...)...)
			if code != ExitUsage || !strings.Contains(errs, "usage: bootctl "+strings.TrimSpace(v.name+" "+v.args)+"\n") {
				t.Errorf("%s %v: exit %d, stderr %q; want %d with its usage line", v.name, args, code, errs, ExitUsage)
			}
			if _, err := os.Stat(filepath.Join(root, txstore.DirName)); err == nil {
				t.Errorf("%s %v: created a store", v.name, args)
			}
		}
	}
}

// TestVerbStoreMode: while another process holds the store's writer lock,
// a verb that reads works and a verb that writes reports busy (exit 5);
// what each verb declares agrees with what it does.
func TestVerbStoreMode(t *testing.T) {
	oldInfo, oldCmd := bootInfoPath, procCmdline
	t.Cleanup(func() { bootInfoPath, procCmdline = oldInfo, oldCmd })
	dir := t.TempDir()
	bootInfoPath = filepath.Join(dir, "no-boot.json")
	procCmdline = filepath.Join(dir, "cmdline")
	if err := os.WriteFile(procCmdline, []byte("txboot.tx=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	mustRun(t, "--root", root, "commit", tree(t))
	holder, err := txstore.Open(root, txstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	esp := t.TempDir()
	efi := t.TempDir()
	_, key := keygenFiles(t, filepath.Join(dir, "signer"))
	// No repository there: a pull fetches without the writer lock (it
	// takes it only to commit), so it fails on the repository, not busy.
	pullURL := "file://" + t.TempDir()
	tests := []struct {
		args []string
		busy bool
		code int // when not busy: the verb ran (boot-once then finds no ESP)
	}{
		{[]string{"commit", tree(t)}, true, 0},
		{[]string{"list"}, false, 0},
		{[]string{"show", "1"}, false, 0},
		{[]string{"diff", "1", "1"}, false, 0},
		{[]string{"seal"}, true, 0},
		{[]string{"verify", "1"}, false, 0},
		{[]string{"prune"}, true, 0},
		{[]string{"gc"}, true, 0},
		{[]string{"pin", "1"}, true, 0},
		{[]string{"unpin", "1"}, true, 0},
		{[]string{"mark-good", "1"}, true, 0},
		{[]string{"mark-bad", "1"}, true, 0},
		{[]string{"health"}, true, 0},
		{[]string{"log"}, false, 0},
		{[]string{"set-default", "1", "--efivars", efi}, true, 0},
		{[]string{"rollback", "--efivars", efi}, true, 0},
		{[]string{"boot-once", "1", "--efivars", efi}, false, ExitFail},
		{[]string{"status", "--efivars", efi}, false, 0},
		{[]string{"entries", "sync", "--esp", esp, "--root-arg", "UUID=x"}, true, 0},
		{[]string{"fsck"}, false, 0},
		{[]string{"fsck", "--repair"}, true, 0},
		{[]string{"install", "--esp", esp}, true, 0},
		{[]string{"publish", "--repo", filepath.Join(dir, "repo"), "1"}, false, 0},
		{[]string{"publish", "--repo", filepath.Join(dir, "repo2"), "--key", key, "1"}, true, 0}, // signing writes the record
		{[]string{"sign", "1", "--key", key}, true, 0},
		{[]string{"keygen", "--out", filepath.Join(dir, "key")}, false, 0},
		{[]string{"certify", "--repo", filepath.Join(dir, "repo3"), "--key", key, "--revoke", strings.Repeat("ab", 16)}, false, 0},
		{[]string{"pull", "--apply"}, true, 0},
		{[]string{"pull", "--discard"}, true, 0},
		{[]string{"pull", pullURL, "--insecure"}, false, ExitFail},
		{[]string{"pull", pullURL, "--insecure", "--download-only"}, false, ExitFail},
		{[]string{"run", "--", "true"}, true, 0},
		{[]string{"shell"}, true, 0},
	}
	byName := map[string]*verb{}
	for _, v := range allVerbs() {
		byName[v.name] = v
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		name := tt.args[0]
		v := byName[name]
		if v == nil {
			t.Errorf("%s: not a verb", name)
			continue
		}
		covered[name] = true
		if v.store != storeSelf && v.writeWhen == nil {
			if writes := v.store == storeWrite || v.store == storeCreate; writes != tt.busy {
				t.Errorf("%s declares store mode %d, but the table says busy=%v", name, v.store, tt.busy)
			}
		}
		code, out, errs := run(t, append([]string{"--root", root, "--timeout", "50ms"}, tt.args...)...)
		if got := code == ExitBusy; got != tt.busy || !tt.busy && code != tt.code {
			t.Errorf("%v with the writer lock held: exit %d (busy %v, want %v)\n%s%s", tt.args, code, got, tt.busy, out, errs)
		}
	}
	for name := range byName {
		if !covered[name] {
			t.Errorf("verb %s has no case here: add one", name)
		}
	}
}
