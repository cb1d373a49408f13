package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestFsckImages: a tx whose image is missing or not the recorded one is
// a line of fsck and exit 3; fsck --repair builds each again
// (Store.Seal), says so, and leaves store.db alone; fsck is clean after.
func TestFsckImages(t *testing.T) {
	for _, damage := range []string{"missing", "stale"} {
		t.Run(damage, func(t *testing.T) {
			root := t.TempDir()
			mustRun(t, "--root", root, "commit", tree(t), "--summary", "one")
			mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/x", Data: "x", Mode: 0o644}), "--summary", "two")
			store := filepath.Join(root, txstore.DirName)
			img := filepath.Join(store, "trees", "2", "image.erofs")
			want, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			damageImage(t, img, damage)

			code, out, errs := run(t, "--root", root, "fsck")
			if code != ExitProblems || !strings.Contains(out, "ok (2 transactions)") || !strings.Contains(out, "tx 2: image: "+img) ||
				strings.Contains(out, "tx 1:") || !strings.Contains(errs, "1 image(s) missing or stale") || !strings.Contains(errs, "fsck --repair") {
				t.Fatalf("fsck: exit %d\n%s%s", code, out, errs)
			}
			t.Logf("fsck:\n%s%s", out, errs)
			var rep txstore.FsckReport
			_, jout, _ := run(t, "--root", root, "fsck", "--json")
			if err := json.Unmarshal([]byte(jout), &rep); err != nil || len(rep.Images) != 1 || rep.Images[0].ID != 2 || len(rep.Problems) != 0 {
				t.Fatalf("fsck --json: %v\n%s", err, jout)
			}

			code, out, errs = run(t, "--root", root, "fsck", "--repair")
			if code != ExitOK || !strings.Contains(out, "tx 2: image sha256:") || !strings.Contains(out, " rebuilt") || strings.Contains(out, "rebuilt "+store) {
				t.Fatalf("fsck --repair: exit %d\n%s%s", code, out, errs)
			}
			t.Logf("fsck --repair:\n%s", out)
			if got, err := os.ReadFile(img); err != nil || string(got) != string(want) {
				t.Fatalf("image after repair: %d bytes (%v), want the %d built at commit", len(got), err, len(want))
			}
			if matches, _ := filepath.Glob(filepath.Join(store, "store.db.corrupt-*")); len(matches) != 0 {
				t.Fatalf("an image repair rebuilt store.db: %v", matches)
			}
			if code, out, errs := run(t, "--root", root, "fsck"); code != ExitOK || strings.Contains(out, "image") {
				t.Fatalf("fsck after repair: exit %d\n%s%s", code, out, errs)
			}
		})
	}
}

// damageImage removes the image at path, or replaces it with other bytes.
func damageImage(t *testing.T, path, how string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if how == "stale" {
		if err := os.WriteFile(path, []byte("not the image"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
}
