package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// damagedRoot commits two txs (tx 1 marked good) and damages store.db.
func damagedRoot(t *testing.T, kind string) (root, db string) {
	t.Helper()
	root = t.TempDir()
	mustRun(t, "--root", root, "commit", tree(t), "--summary", "one")
	mustRun(t, "--root", root, "mark-good", "1")
	mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/x", Data: "x", Mode: 0o644}), "--summary", "two")
	db = filepath.Join(root, txstore.DirName, "store.db")
	if kind != "" {
		if err := testtree.DamageDB(db, kind); err != nil {
			t.Fatal(err)
		}
	}
	return root, db
}

// TestDamagedDBVerbs: with store.db damaged, every verb that needs it ends
// with one line naming the file and exit 1, never a Go panic (exit 2).
func TestDamagedDBVerbs(t *testing.T) {
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json") // no boot info
	efi := t.TempDir()
	// Damage bbolt cannot miss: every verb must fail. For the others
	// (a page that only some reads reach) a verb may still succeed.
	mustFail := map[string]bool{testtree.DamageDataPages: true, testtree.DamageEmpty: true,
		testtree.DamageShort: true, testtree.DamageGarbage: true, testtree.DamageMetas: true}
	for _, kind := range testtree.DamageKinds {
		t.Run(kind, func(t *testing.T) {
			root, db := damagedRoot(t, kind)
			verbs := [][]string{
				{"list"}, {"show", "1"}, {"verify"}, {"verify", "2", "--full"}, {"gc"}, {"prune", "--keep", "1"},
				{"status", "--efivars", efi}, {"log"}, {"mark-good", "2"}, {"mark-bad", "2"}, {"pin", "1"},
				{"set-default", "1", "--efivars", efi}, {"commit", tree(t, testtree.File{Path: "lib/y", Data: "y", Mode: 0o644})},
			}
			failed := 0
			for _, v := range verbs {
				code, out, errs := run(t, append([]string{"--root", root}, v...)...)
				all := out + errs
				if strings.Contains(all, "panic") || strings.Contains(all, "goroutine") {
					t.Errorf("%v: stack trace:\n%s", v, all)
					continue
				}
				if code == ExitOK && !mustFail[kind] {
					continue
				}
				failed++
				if code != ExitFail || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, db) || !strings.Contains(errs, "store damaged") {
					t.Errorf("%v: exit %d, stderr %q; want exit 1 and one line naming %s", v, code, errs, db)
				}
			}
			if failed == 0 {
				t.Errorf("no verb noticed the damage")
			}
			// Nothing was lost meanwhile: the trees are all there.
			for _, id := range []string{"1", "2"} {
				if _, err := os.Stat(filepath.Join(root, txstore.DirName, "trees", id, "usr")); err != nil {
					t.Errorf("tree %s: %v", id, err)
				}
			}
		})
	}
}

// TestFsckVerb: fsck passes a sound store, reports damage with exit 3, and
// fsck --repair rebuilds the database so every tx lists and verifies again,
// keeping the damaged file.
func TestFsckVerb(t *testing.T) {
	root, db := damagedRoot(t, "")
	if out := mustRun(t, "--root", root, "fsck"); !strings.Contains(out, "ok (2 transactions)") {
		t.Fatalf("fsck of a sound store: %q", out)
	}
	if out := mustRun(t, "--root", root, "fsck", "--repair"); !strings.Contains(out, "ok (2 transactions)") {
		t.Fatalf("fsck --repair of a sound store: %q", out)
	}
	for _, kind := range []string{testtree.DamagePage2, testtree.DamageFreelist, testtree.DamageEmpty, testtree.DamageGarbage} {
		t.Run(kind, func(t *testing.T) {
			root, db := damagedRoot(t, kind)
			code, out, errs := run(t, "--root", root, "fsck")
			if code != ExitProblems || !strings.Contains(out, "problem(s)") || !strings.Contains(errs, "fsck --repair") || strings.Count(errs, "\n") != 1 {
				t.Fatalf("fsck: exit %d\n%s%s", code, out, errs)
			}
			code, out, errs = run(t, "--root", root, "fsck", "--repair")
			if code != ExitOK || !strings.Contains(out, "rebuilt "+db+": 2 transaction(s) [1 2]") || !strings.Contains(out, "kept as "+db+".corrupt-") {
				t.Fatalf("fsck --repair: exit %d\n%s%s", code, out, errs)
			}
			if code, out, errs := run(t, "--root", root, "fsck"); code != ExitOK {
				t.Fatalf("fsck after repair: exit %d\n%s%s", code, out, errs)
			}
			out = mustRun(t, "--root", root, "list")
			for _, want := range []string{"\n1 ", "\n2 ", "default"} {
				if !strings.Contains(out, want) {
					t.Errorf("list after repair lacks %q:\n%s", want, out)
				}
			}
			mustRun(t, "--root", root, "verify", "--full")
			mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/z", Data: "z", Mode: 0o644}))
			if matches, _ := filepath.Glob(db + ".corrupt-*"); len(matches) != 1 {
				t.Errorf("kept databases: %v", matches)
			}
		})
	}
	_ = db
}
