package blit

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
)

// Files are 0444: trees hold no write bits.
//
// A directory whose listing takes several getdents64 calls (long names,
// more than one 64 KiB buffer) is checked whole: extra and missing
// entries anywhere in it are reported, and nothing else. (Listing must go on until getdents64
// returns 0: even on ext4 a short read is not the end, since filldir64
// stops early when a signal is pending, e.g. Go's preemption or SIGPROF.)
func TestVerifyBigDirectory(t *testing.T) {
	for _, tc := range []struct {
		name           string
		extra, missing int
	}{{"clean", 0, 0}, {"damaged", 40, 30}} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "tree")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			os.Chmod(root, 0o755)
			uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
			m := &manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0o755, UID: uid, GID: gid}}}
			long := strings.Repeat("n", 200)
			const files = 700 // ~700 × 224-byte records: 2-3 buffers
			want := map[string]bool{}
			for i := 0; i < files; i++ {
				p := fmt.Sprintf("%s%04d", long, i)
				m.Entries = append(m.Entries, manifest.Entry{Path: p, Type: manifest.File, Mode: 0o444, UID: uid, GID: gid})
				if i%(files/max(tc.missing, 1)) == 1 && len(want) < tc.missing {
					want[p+": missing"] = true
					continue
				}
				writeFile(t, filepath.Join(root, p))
			}
			for i := 0; i < tc.extra; i++ {
				p := fmt.Sprintf("%sx%04d", long, i*17)
				writeFile(t, filepath.Join(root, p))
				want[p+": unexpected entry (not in the manifest)"] = true
			}
			objs := &cas.Store{Dir: filepath.Join(t.TempDir(), "objects")}
			defer objs.Close()
			probs, err := Verify(m, objs, root, false, 2, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range probs {
				if !want[p.String()] {
					t.Errorf("unexpected problem %s", p)
				}
				delete(want, p.String())
			}
			for p := range want {
				t.Errorf("not reported: %s", p)
			}
		})
	}
}

func writeFile(t *testing.T, p string) {
	t.Helper()
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o444); err != nil {
		t.Fatal(err)
	}
}
