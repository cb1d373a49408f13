package txstore_test

import (
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sealimg"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testkit"
	"github.com/txboot/txboot/txstore/testtree"
	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// The fs-verity ioctls cannot succeed on the host these tests run on (its
// kernel has no CONFIG_FS_VERITY): here every tx stays unsealed and its
// note says why. The sealed path (objects and image sealed, Sealed
// recorded, a sealed boot) is tested in QEMU on Debian 13's ext4 with the
// verity feature (qemu-tests). Where the store can seal, these tests
// expect Sealed instead (verityWorks).

// verityWorks reports whether fs-verity can be turned on in dir.
func verityWorks(t *testing.T, dir string) bool {
	t.Helper()
	p := filepath.Join(dir, "verity-probe")
	if err := os.WriteFile(p, []byte("probe"), 0o444); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	return verity.EnablePath(p) == nil
}

// checkImage checks tx id's record against its image file: the file's
// fs-verity digest is the record's, and the seal fields agree with what
// the store can do.
func checkImage(t *testing.T, s *txstore.Store, id uint64) *txstore.Tx {
	t.Helper()
	tx, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if tx.Image == "" {
		t.Fatalf("tx %d has no image: %s", id, tx.SealNote)
	}
	d, err := verity.DigestPath(s.ImagePath(id))
	if err != nil || d.String() != tx.Image {
		t.Fatalf("tx %d: image file %s (%v), record %s", id, d, err, tx.Image)
	}
	if verityWorks(t, s.Dir) {
		if !tx.Sealed || tx.SealNote != "" {
			t.Fatalf("tx %d: sealed %v (%s) on a filesystem that seals", id, tx.Sealed, tx.SealNote)
		}
	} else if tx.Sealed || !strings.Contains(tx.SealNote, "fs-verity unsupported") {
		t.Fatalf("tx %d: sealed %v, note %q; want unsealed, saying fs-verity is unsupported", id, tx.Sealed, tx.SealNote)
	}
	return tx
}

// Every way a tx enters the store records its image, beside its usr/,
// and the same manifest gives the same image.
func TestCommitRecordsImage(t *testing.T) {
	s, _ := newStore(t)
	src := sampleDir(t)
	tx1, _, err := s.Commit(src, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		commit func() (*txstore.Tx, error)
		same   bool // the manifest of tx 1: the same image
	}{
		{"commit", func() (*txstore.Tx, error) { tx, _, err := s.Commit(src, txstore.CommitOptions{}); return tx, err }, true},
		{"manifest", func() (*txstore.Tx, error) { return commitManifestTx(s, tx1.ID, txstore.CommitOptions{}) }, true},
		{"consume", func() (*txstore.Tx, error) {
			tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{Consume: true})
			return tx, err
		}, true},
		{"layer", func() (*txstore.Tx, error) {
			up := t.TempDir()
			os.MkdirAll(filepath.Join(up, "lib"), 0o755)
			os.WriteFile(filepath.Join(up, "lib", "layered"), []byte("layer"), 0o644)
			tx, _, err := s.CommitLayer(tx1.ID, up, txstore.CommitOptions{})
			return tx, err
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := tc.commit()
			if err != nil {
				t.Fatal(err)
			}
			checkImage(t, s, tx.ID)
			if (tx.Image == tx1.Image) != tc.same {
				t.Fatalf("image %s, tx 1's %s: same=%v wanted", tx.Image, tx1.Image, tc.same)
			}
			if mode, why := txstore.BootMode(tx); mode != "unsealed" && !tx.Sealed || why == "" && !tx.Sealed {
				t.Fatalf("boot mode %s (%s) for an unsealed tx", mode, why)
			}
		})
	}
	stagingEmpty(t, s)
}

func commitManifestTx(s *txstore.Store, id uint64, o txstore.CommitOptions) (*txstore.Tx, error) {
	tx, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	raw, err := s.ManifestBytes(tx.Manifest, tx.Digest)
	if err != nil {
		return nil, err
	}
	m, err := s.Manifest(tx)
	if err != nil {
		return nil, err
	}
	return s.CommitManifest(m, raw, o)
}

// A tree the image format cannot carry (an xattr in trusted.overlay.)
// commits without an image, saying why; Seal says the same.
func TestCommitUnsealable(t *testing.T) {
	s, _ := newStore(t)
	src := sampleDir(t)
	if err := unix.Lsetxattr(filepath.Join(src, "bin", "sh"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		testkit.Skip(t, "cannot set trusted.* xattrs here: "+err.Error())
	}
	tx, _, err := s.Commit(src, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Image != "" || !strings.HasPrefix(tx.SealNote, "no image: ") || !strings.Contains(tx.SealNote, sealimg.ErrUnsealable.Error()) {
		t.Fatalf("image %q note %q", tx.Image, tx.SealNote)
	}
	if _, err := os.Stat(s.ImagePath(tx.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("image file of an unsealable tx: %v", err)
	}
	res, err := s.Seal(tx.ID)
	if err != nil || res.Image != "" || res.Sealed || !strings.HasPrefix(res.Note, "no image: ") {
		t.Fatalf("seal: %+v %v", res, err)
	}
}

// Seal on a store that cannot seal: no error, the note says why and what
// to run, the tx still verifies (it boots unsealed), and a second Seal
// changes nothing (no new event).
func TestSealUnsupported(t *testing.T) {
	s, _ := newStore(t)
	if verityWorks(t, s.Dir) {
		testkit.Skip(t, "this filesystem seals: the unsupported path needs one that cannot (QEMU tests the sealed one)")
	}
	tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		res, err := s.Seal(tx.ID)
		if err != nil {
			t.Fatal(err)
		}
		if res.Sealed || res.Built || res.Enabled != 0 || res.Image != tx.Image || !strings.Contains(res.Note, "fs-verity unsupported") {
			t.Fatalf("round %d: %+v", round, res)
		}
		if !strings.Contains(res.Note, "tune2fs -O verity") && !strings.Contains(res.Note, "ext4 with the verity feature") {
			t.Fatalf("note does not say what to run: %s", res.Note)
		}
	}
	if evs := eventsOf(t, s, "seal"); len(evs) != 0 {
		t.Fatalf("seal events for no change: %v", evs)
	}
	if probs, err := s.Verify(tx.ID, txstore.VerifyFast); err != nil || len(probs) > 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
	checkImage(t, s, tx.ID)
}

func eventsOf(t *testing.T, s *txstore.Store, kind string) []txstore.Event {
	t.Helper()
	evs, err := s.Events(0)
	if err != nil {
		t.Fatal(err)
	}
	var out []txstore.Event
	for _, ev := range evs {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// Seal builds an image that is missing, damaged, or was never made (a tx
// from before images), and the rebuilt image is byte for byte the one the
// commit made; fsck reports the missing one until then.
func TestSealRebuildsImage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(s *txstore.Store, id uint64) error
	}{
		{"deleted", func(s *txstore.Store, id uint64) error { return os.Remove(s.ImagePath(id)) }},
		{"damaged", func(s *txstore.Store, id uint64) error {
			os.Chmod(s.ImagePath(id), 0o644)
			return os.WriteFile(s.ImagePath(id), []byte("not an image"), 0o444)
		}},
		{"never made", func(s *txstore.Store, id uint64) error {
			_, err := s.Update(id, txstore.Event{}, func(t *txstore.Tx) error {
				t.Image, t.Sealed, t.SealNote = "", false, ""
				return nil
			})
			if err == nil {
				err = os.Remove(s.ImagePath(id))
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newStore(t)
			tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(s.ImagePath(tx.ID))
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.damage(s, tx.ID); err != nil {
				t.Fatal(err)
			}
			if rep, err := s.Fsck(); err != nil || (len(rep.Images) != 1) != (tc.name == "never made") {
				t.Fatalf("fsck: %+v %v", rep, err)
			}
			res, err := s.Seal(tx.ID)
			if err != nil || !res.Built || res.Image != tx.Image || res.Replaced != "" {
				t.Fatalf("seal: %+v %v (image was %s)", res, err, tx.Image)
			}
			if got, _ := os.ReadFile(s.ImagePath(tx.ID)); string(got) != string(want) {
				t.Fatalf("rebuilt image differs (%d bytes, want %d)", len(got), len(want))
			}
			checkImage(t, s, tx.ID)
			if rep, err := s.Fsck(); err != nil || len(rep.Images) != 0 {
				t.Fatalf("fsck after seal: %+v %v", rep, err)
			}
			if len(eventsOf(t, s, "seal")) != 1 {
				t.Fatal("no seal event")
			}
			stagingEmpty(t, s)
		})
	}
}

// A pull whose repository names another image than the one built here is
// refused and records nothing; the right one records the repository's
// image signatures.
func TestImportImageMismatch(t *testing.T) {
	s, _ := newStore(t)
	tx1, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other := verity.DigestBytes([]byte("another image")).String()
	_, err = commitManifestTx(s, tx1.ID, txstore.CommitOptions{Image: other})
	if !errors.Is(err, txstore.ErrImageMismatch) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), tx1.Image) {
		t.Fatalf("commit with image %s: %v, want ErrImageMismatch naming both", other, err)
	}
	if txs := listTxs(t, s); len(txs) != 1 {
		t.Fatalf("%d txs after a refused import", len(txs))
	}
	if trees, _ := os.ReadDir(filepath.Join(s.Dir, "trees")); len(trees) != 1 {
		t.Fatalf("%d trees after a refused import", len(trees))
	}
	stagingEmpty(t, s)
	priv := testKey(t)
	sigs := []sign.Signature{sign.SignImage(priv, tx1.Digest, tx1.Image)}
	tx, err := commitManifestTx(s, tx1.ID, txstore.CommitOptions{Image: tx1.Image, ImageSignatures: sigs})
	if err != nil {
		t.Fatal(err)
	}
	if len(tx.ImageSignatures) != 1 || tx.Image != tx1.Image {
		t.Fatalf("record %+v", tx)
	}
}

func testKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	privPEM, _, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := sign.ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// commit --sign signs the image too, and SignImage signs an existing
// tx's image (bootctl sign), once per key.
func TestSignImage(t *testing.T) {
	s, _ := newStore(t)
	priv := testKey(t)
	pub := sign.PublicKey{ID: sign.KeyID(priv.Public().(ed25519.PublicKey)), Key: priv.Public().(ed25519.PublicKey)}
	tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{SignImage: func(d, i string) []sign.Signature {
		return []sign.Signature{sign.SignImage(priv, d, i)}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.VerifyImage([]sign.PublicKey{pub}, tx.Digest, tx.Image, tx.ImageSignatures); err != nil {
		t.Fatal(err)
	}
	tx2, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if tx2, err = s.SignImage(tx2.ID, priv); err != nil {
			t.Fatal(err)
		}
	}
	if len(tx2.ImageSignatures) != 1 {
		t.Fatalf("%d image signatures after signing twice with one key", len(tx2.ImageSignatures))
	}
	if _, err := sign.VerifyImage([]sign.PublicKey{pub}, tx2.Digest, tx2.Image, tx2.ImageSignatures); err != nil {
		t.Fatal(err)
	}
	os.Remove(s.ImagePath(tx2.ID))
	if _, err := s.SignImage(tx2.ID, priv); !errors.Is(err, txstore.ErrNoImage) {
		t.Fatalf("sign a missing image: %v", err)
	}
}

// The image lives and dies with its tree: a reblit (which swaps usr/
// only) keeps it, prune removes it with the tree, GC then frees the
// objects only that tx named.
func TestImageFollowsTree(t *testing.T) {
	s, _ := newStore(t)
	for i := range 3 {
		extra := testtree.File{Path: "lib/version", Data: strings.Repeat("v", i+1), Mode: 0o644}
		if _, _, err := s.Commit(sampleDir(t, extra), txstore.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Reblit(1); err != nil {
		t.Fatal(err)
	}
	checkImage(t, s, 1)
	if err := s.SetPinned(1, true); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Prune(1, 3); err != nil || len(res.Removed) != 1 || res.Removed[0] != 2 {
		t.Fatalf("prune: %+v %v", res, err)
	}
	if _, err := os.Lstat(s.ImagePath(2)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("image of pruned tx 2: %v", err)
	}
	if _, err := s.GC(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint64{1, 3} {
		checkImage(t, s, id)
		if probs, err := s.Verify(id, txstore.VerifyFull); err != nil || len(probs) > 0 {
			t.Fatalf("tx %d: %v %v", id, probs, err)
		}
	}
}
