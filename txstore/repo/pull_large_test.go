package repo

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/testtree"
)

// Objects of every size class arrive intact: small ones (buffered), ones
// of at least 64 KiB with tails that are not block-aligned (written with
// O_DIRECT), incompressible (served raw) and compressible (served as
// zstd), and one content under two modes (through a temp file, linked and
// copied). Each verifies in full and nothing is left in staging/.
func TestPullLargeObjects(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return string(b)
	}
	shared := random(70<<10 + 5)
	files := append(testtree.Sample(),
		testtree.File{Path: "lib/random-200k", Data: random(200<<10 + 3), Mode: 0o644},
		testtree.File{Path: "lib/random-3m", Data: random(3<<20 + 4097), Mode: 0o644},
		testtree.File{Path: "share/text-1m", Data: strings.Repeat("compressible text line\n", 1<<20/23+17), Mode: 0o644},
		testtree.File{Path: "lib/shared-a", Data: shared, Mode: 0o644},
		testtree.File{Path: "bin/shared-b", Data: shared, Mode: 0o755},
		testtree.File{Path: "lib/exact-64k", Data: random(64 << 10), Mode: 0o600},
	)
	d := t.TempDir()
	if err := testtree.Write(d, files, time.Unix(1000, 0)); err != nil {
		t.Fatal(err)
	}
	_, dir, txs := ptSource(t, nil, d)
	srv := ptNewServer(t, dir)
	dst := ptStore(t)
	tx, st, err := ptPull(t, dst, srv.URL, PullOptions{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != txs[0].Digest {
		t.Fatalf("digest %s, want %s", tx.Digest, txs[0].Digest)
	}
	ptVerifyFull(t, dst, tx.ID)
	if st.Fetched != st.Objects || int(srv.objects.Load()) != st.Fetched {
		t.Fatalf("stats %+v, %d object GETs", st, srv.objects.Load())
	}
	// Both modes of the shared content are objects of their own.
	for _, p := range []string{"lib/shared-a", "bin/shared-b"} {
		want := map[string]os.FileMode{"lib/shared-a": 0o444, "bin/shared-b": 0o555}[p]
		fi, err := os.Stat(filepath.Join(dst.Dir, "trees", fmt.Sprint(tx.ID), "usr", p))
		if err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want mode %o", p, fi, err, want)
		}
	}
	// Nothing but directories is left in staging/.
	var staged []string
	filepath.WalkDir(filepath.Join(dst.Dir, "staging"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			staged = append(staged, p)
		}
		return nil
	})
	if len(staged) != 0 {
		t.Fatalf("left in staging: %v", staged)
	}
}
