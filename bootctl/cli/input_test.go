package cli

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/efivars"
	"github.com/txboot/txboot/txstore/testtree"
)

// storeWith commits n trees through the store API (not bootctl), so tests
// can create records bootctl itself would refuse. summaries[i] is tx i+1's.
func storeWith(t *testing.T, summaries ...string) string {
	t.Helper()
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, sum := range summaries {
		d := tree(t, testtree.File{Path: "lib/n", Data: strings.Repeat("n", i+1), Mode: 0o644})
		if _, _, err := s.Commit(d, txstore.CommitOptions{Summary: sum}); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func txCount(t *testing.T, root string) int {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	txs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	return len(txs)
}

// Flag values out of range are usage errors (exit 2) with a message that
// names the flag, and change nothing.
func TestFlagRanges(t *testing.T) {
	root := storeWith(t, "one")
	esp := t.TempDir()
	os.MkdirAll(filepath.Join(esp, "loader/entries"), 0o755)
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"commit", tree(t), "--tries", "0"}, ExitUsage, "--tries must be 1..99"},
		{[]string{"commit", tree(t), "--tries", "-1"}, ExitUsage, "--tries must be 1..99"},
		{[]string{"commit", tree(t), "--tries", "100"}, ExitUsage, "--tries must be 1..99"},
		{[]string{"commit", tree(t), "--tries", "x"}, ExitUsage, "tries"},
		{[]string{"commit", tree(t), "--keep", "-3"}, ExitUsage, "--keep must be at least 1"},
		{[]string{"commit", tree(t), "--keep", "0"}, ExitUsage, "--keep must be at least 1"},
		{[]string{"prune", "--keep", "-3"}, ExitUsage, "--keep must be at least 1"},
		{[]string{"prune", "--keep", "0"}, ExitUsage, "--keep must be at least 1"},
		{[]string{"entries", "sync", "--esp", esp, "--root-arg", "PARTUUID=1", "--keep", "-3"}, ExitUsage, "--keep must be at least 1"},
		{[]string{"entries", "sync", "--esp", esp, "--root-arg", "PARTUUID=1", "--keep", "0"}, ExitUsage, "--keep must be at least 1"},
		{[]string{"mark-good", "1", "--keep", "-3"}, ExitUsage, "--keep must be at least 1"},
	}
	for _, c := range cases {
		code, out, errs := run(t, append([]string{"--root", root}, c.args...)...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("%v: exit %d %q, want %d %q", c.args, code, errs, c.code, c.msg)
		}
		if strings.Count(strings.TrimSpace(errs), "\n") > 1 {
			t.Errorf("%v: more than error + usage line: %q", c.args, errs)
		}
		if out != "" {
			t.Errorf("%v: stdout %q", c.args, out)
		}
	}
	if n := txCount(t, root); n != 1 {
		t.Errorf("%d txs after rejected commands, want 1", n)
	}
	s, _ := txstore.Open(root, txstore.Options{ReadOnly: true})
	defer s.Close()
	if tx, _ := s.Get(1); tx.State == txstore.StateGood {
		t.Errorf("mark-good with a bad --keep still marked tx 1 good")
	}
	// In range still works.
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/z", Data: "z", Mode: 0o644}), "--tries", "1")
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/z", Data: "zz", Mode: 0o644}), "--tries", "99")
}

// A summary or reason with control characters would forge rows in list
// and status: bootctl refuses it.
func TestControlCharactersRejected(t *testing.T) {
	root := storeWith(t, "one")
	for _, bad := range []string{"a\nb", "a\rb", "a\tb", "\x1b[2Jx", "a\x00b", "a\x7fb", "a\u0085b", "a\xffb"} {
		code, _, errs := run(t, "--root", root, "commit", tree(t), "--summary", bad)
		if code != ExitUsage || !strings.Contains(errs, "--summary") {
			t.Errorf("commit --summary %q: exit %d %q, want usage error", bad, code, errs)
		}
		code, _, errs = run(t, "--root", root, "mark-bad", "1", "--reason", bad)
		if code != ExitUsage || !strings.Contains(errs, "--reason") {
			t.Errorf("mark-bad --reason %q: exit %d %q, want usage error", bad, code, errs)
		}
		if strings.Count(errs, "\n") != 1 {
			t.Errorf("error for %q is not one line: %q", bad, errs)
		}
	}
	if n := txCount(t, root); n != 1 {
		t.Errorf("%d txs, want 1", n)
	}
	s, _ := txstore.Open(root, txstore.Options{ReadOnly: true})
	if tx, _ := s.Get(1); tx.State == txstore.StateBad {
		t.Errorf("tx 1 marked bad by a rejected mark-bad")
	}
	s.Close()
	// Ordinary text, including non-ASCII, is fine.
	mustRun(t, "--root", root, "commit", tree(t), "--summary", "Grüße: kernel 6.1 → 6.2")
	mustRun(t, "--root", root, "mark-bad", "1", "--reason", "boot hangs at «udev»")
}

// Records written before the check (or by other tools) are printed with
// control characters escaped, one row per tx or event.
func TestControlCharactersEscaped(t *testing.T) {
	forged := "\n99  good  3  2030-01-01 00:00  deadbeef  default  forged\x1b[31m"
	root := storeWith(t, "one"+forged, "two")
	s, err := txstore.Open(root, txstore.Options{Timeout: 0})
	if err != nil {
		t.Fatal(err)
	}
	reason := "oops\r\n  98  good  -  default  forged"
	if _, err := s.Update(2, txstore.Event{Kind: "mark-bad", Detail: reason}, func(tx *txstore.Tx) error {
		tx.MarkBad(reason)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	os.WriteFile(bootInfoPath, []byte(`{"booted":1,"requested":2,"failures":[{"tx":2,"reason":"x\n97  good  forged"}]}`), 0o644)
	t.Cleanup(func() { bootInfoPath = "/run/txboot/boot.json" })
	efi := t.TempDir()

	for _, args := range [][]string{{"list"}, {"status", "--efivars", efi}, {"log"}, {"show", "1"}, {"show", "2"}} {
		out := mustRun(t, append([]string{"--root", root}, args...)...)
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) > 0 && (f[0] == "99" || f[0] == "98" || f[0] == "97") || strings.Contains(line, "\r") || strings.Contains(line, "\x1b") {
				t.Errorf("%v: forged line %q in\n%s", args, line, out)
			}
		}
		if !strings.Contains(out, `\n`) {
			t.Errorf("%v: no escaped newline in\n%s", args, out)
		}
	}
	// JSON keeps the exact text.
	if out := mustRun(t, "--root", root, "list", "--json"); !strings.Contains(out, `one\n99`) || !strings.Contains(out, `\u001b[31m`) {
		t.Errorf("list --json changed the summary:\n%s", out)
	}
}

func writeEntry(t *testing.T, esp string, id uint64, file string) {
	t.Helper()
	dir := filepath.Join(esp, "loader/entries")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := "title T\nlinux /k\ninitrd /i\noptions root=UUID=abcd ro txboot.tx=" + strconv.FormatUint(id, 10) + "\n"
	if err := os.WriteFile(filepath.Join(dir, file), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// boot-once sets LoaderEntryOneShot only for a tx that has an entry on the
// ESP; otherwise systemd-boot would ignore the variable and boot the
// default while bootctl claimed otherwise.
func TestBootOnceNeedsEntry(t *testing.T) {
	oneShot := func(efi string) string {
		v, err := efivars.New(efi).EntryOneShot()
		if err != nil {
			return ""
		}
		return v
	}
	t.Run("no ESP", func(t *testing.T) {
		root, efi := storeWith(t, "one"), t.TempDir()
		code, out, errs := run(t, "--root", root, "boot-once", "1", "--efivars", efi)
		if code != ExitFail || !strings.Contains(errs, "tx 1 has no boot entry") || strings.Contains(out, "next boot") {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
		if v := oneShot(efi); v != "" {
			t.Errorf("LoaderEntryOneShot set to %q", v)
		}
	})
	t.Run("entry for another tx only", func(t *testing.T) {
		root, efi := storeWith(t, "one", "two"), t.TempDir()
		esp := filepath.Join(root, "boot/efi")
		writeEntry(t, esp, 2, "txboot-2+3.conf")
		code, out, errs := run(t, "--root", root, "boot-once", "1", "--efivars", efi)
		if code != ExitFail || !strings.Contains(errs, "tx 1 has no boot entry") || !strings.Contains(errs, esp) || strings.Contains(out, "next boot") {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
		if v := oneShot(efi); v != "" {
			t.Errorf("LoaderEntryOneShot set to %q", v)
		}
		// With its entry present (counting or blessed), it works.
		for _, f := range []string{"txboot-1+2-1.conf", "txboot-1.conf"} {
			os.RemoveAll(filepath.Join(esp, "loader/entries"))
			writeEntry(t, esp, 1, f)
			out := mustRun(t, "--root", root, "boot-once", "1", "--efivars", efi)
			if !strings.Contains(out, "next boot: tx 1") || oneShot(efi) == "" {
				t.Errorf("%s: %q, LoaderEntryOneShot %q", f, out, oneShot(efi))
			}
		}
	})
}

// Messages name each thing once: no "gc: gc:", no path repeated by two
// layers, and a manifest problem names the manifest, not a path in the tree.
func TestMessagesNotDoubled(t *testing.T) {
	root := storeWith(t, "one")
	s, _ := txstore.Open(root, txstore.Options{ReadOnly: true})
	tx, _ := s.Get(1)
	s.Close()
	var mpath string
	filepath.Walk(filepath.Join(root, ".txboot/objects"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(fi.Name(), tx.Manifest) {
			mpath = p
		}
		return nil
	})
	if mpath == "" {
		t.Fatal("manifest object not found")
	}
	os.Chmod(mpath, 0o644)
	if err := os.WriteFile(mpath, []byte("garbage"), 0o444); err != nil {
		t.Fatal(err)
	}

	code, out, errs := run(t, "--root", root, "verify", "1")
	if code != ExitProblems || strings.Contains(out, "trees/1/manifest") || !strings.Contains(out, "manifest object sha256:"+tx.Manifest+" of tx 1:") ||
		strings.Count(out, "manifest") != 1 {
		t.Errorf("verify: exit %d\n%s%s", code, out, errs)
	}
	code, _, errs = run(t, "--root", root, "gc")
	if code != ExitFail || !strings.HasPrefix(errs, "bootctl gc: nothing removed: ") {
		t.Errorf("gc: exit %d %q", code, errs)
	}
	code, _, errs = run(t, "--root", root, "prune")
	if code != ExitFail || !strings.HasPrefix(errs, "bootctl prune: ") || !strings.Contains(errs, "gc: nothing removed: ") || strings.Contains(errs, "gc: gc:") {
		t.Errorf("prune: exit %d %q", code, errs)
	}

	missing := filepath.Join(t.TempDir(), "nonexistent")
	code, _, errs = run(t, "--root", root, "commit", missing)
	if code != ExitFail || strings.Count(errs, missing) != 1 || strings.Contains(errs, "commit: commit") {
		t.Errorf("commit missing dir: exit %d %q", code, errs)
	}

	// A menu default that cannot be read: its path once.
	efi := t.TempDir()
	v := filepath.Join(efi, efivars.LoaderEntryDefault+"-"+efivars.LoaderGUID)
	os.Mkdir(v, 0o755)
	code, _, errs = run(t, "--root", root, "set-default", "1", "--efivars", efi)
	if code != ExitFail || strings.Count(errs, v) != 1 {
		t.Errorf("set-default, unreadable LoaderEntryDefault: exit %d %q", code, errs)
	}
}
