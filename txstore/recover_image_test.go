package txstore_test

import (
	"os"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestRecoverImage: a tx whose record was lost (the newest meta page
// torn) is recorded again by the next writer's open with the image its
// commit placed, when that file is the image its manifest gives; a file
// that is not is left for bootctl seal (no Image recorded, fsck silent).
func TestRecoverImage(t *testing.T) {
	for _, damaged := range []bool{false, true} {
		name := map[bool]string{false: "intact", true: "damaged"}[damaged]
		t.Run(name, func(t *testing.T) {
			s, root := newStore(t)
			var lost *txstore.Tx
			for i := 1; i <= 2; i++ {
				tx, _, err := s.Commit(sampleDir(t, testtree.File{Path: "share/n", Data: string(rune('0' + i)), Mode: 0o644}), txstore.CommitOptions{})
				if err != nil {
					t.Fatal(err)
				}
				lost = tx
			}
			if lost.Image == "" {
				t.Fatalf("no image: %s", lost.SealNote)
			}
			if damaged {
				if err := os.Chmod(s.ImagePath(2), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(s.ImagePath(2), []byte("not the image"), 0o444); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			tearNewestMeta(t, dbPath(root))

			s, err := txstore.Open(root, txstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			tx, err := s.Get(2)
			if err != nil || tx.Digest != lost.Digest {
				t.Fatalf("tx 2 not recorded again: %+v %v", tx, err)
			}
			if damaged {
				if tx.Image != "" || tx.Sealed {
					t.Fatalf("recorded image %q (sealed %v) from a file that is not the manifest's image", tx.Image, tx.Sealed)
				}
				return
			}
			if got := checkImage(t, s, 2); got.Image != lost.Image {
				t.Fatalf("recovered image %s, committed %s", got.Image, lost.Image)
			}
			if rep, err := s.Fsck(); err != nil || len(rep.Images) != 0 {
				t.Fatalf("fsck after recovery: %+v %v", rep, err)
			}
		})
	}
}
