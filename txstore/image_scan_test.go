package txstore_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
)

// verityTree writes files around fs-verity's block size, an empty one and
// a sparse one (holes before, between and after data), for the image a
// commit builds from its scan's digests.
func verityTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(5, 6))
	rnd := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for name, data := range map[string][]byte{
		"tiny": []byte("abc"), "empty": nil, "b4096": rnd(4096), "b4097": rnd(4097),
		"mib": rnd(1 << 20), "dir/one": []byte("1"),
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(3 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(rnd(5000), 1<<20+5); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The image a commit builds from the fs-verity digests its scan computed
// is byte for byte the one Seal builds by reading every object again.
func TestImageFromScanMatchesReread(t *testing.T) {
	s, _ := newStore(t)
	tx, _, err := s.Commit(verityTree(t), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fromScan, err := os.ReadFile(s.ImagePath(tx.ID))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.ImagePath(tx.ID)); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Seal(tx.ID); err != nil || !res.Built || res.Image != tx.Image {
		t.Fatalf("seal: %+v %v (image was %s)", res, err, tx.Image)
	}
	reread, err := os.ReadFile(s.ImagePath(tx.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fromScan, reread) {
		t.Fatalf("the commit's image (%d bytes) differs from the re-read one (%d bytes)", len(fromScan), len(reread))
	}
	checkImage(t, s, tx.ID)
}

// A commit of content the store has takes the digests from its scan, not
// from the stored objects: an object rotted in place does not change the
// image (which names the content the manifest names; the overlay's
// verity check then refuses the rotten object). Where the store seals,
// the rotten object is caught before it is sealed and the tx stays
// unsealed.
func TestImageDigestsFromScan(t *testing.T) {
	s, _ := newStore(t)
	src := verityTree(t)
	tx1, _, err := s.Commit(src, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h, _, err := cas.HashFile(filepath.Join(src, "mib"))
	if err != nil {
		t.Fatal(err)
	}
	obj := s.Objects().Path(cas.NewKey(h, 0o644, uint32(os.Getuid()), uint32(os.Getgid())))
	if err := corruptInPlace(obj); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(obj, 0o444); err != nil {
		t.Fatal(err)
	}
	tx2, _, err := s.Commit(src, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if verityWorks(t, s.Dir) {
		if tx2.Sealed {
			t.Fatalf("tx %d sealed with a rotten object", tx2.ID)
		}
		return
	}
	if tx2.Image != tx1.Image {
		t.Fatalf("tx %d image %s, tx %d %s: the commit read the rotten object", tx2.ID, tx2.Image, tx1.ID, tx1.Image)
	}
}
