package txstore_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"testing"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testkit"
)

// TestManifestErrorsKeepCause: a manifest object that is not zstd is
// ErrBadManifest, and the decoder's own error stays visible to errors.Is
// (it was formatted with %v and lost).
func TestManifestErrorsKeepCause(t *testing.T) {
	testkit.SkipUnless(t, os.Geteuid() == 0, "needs root: the object must be owned by 0:0 to stand in for a manifest")
	src := t.TempDir()
	const body = "this is not zstd"
	must(t, os.WriteFile(src+"/plain", []byte(body), 0o644))
	s, err := txstore.Open(t.TempDir(), txstore.Options{Create: true})
	must(t, err)
	defer s.Close()
	if _, _, err := s.Commit(src, txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(body))
	_, err = s.Manifest(&txstore.Tx{ID: 9, Manifest: hex.EncodeToString(sum[:])})
	if !errors.Is(err, txstore.ErrBadManifest) || !errors.Is(err, zstd.ErrMagicMismatch) {
		t.Fatalf("Manifest of a non-zstd object = %v; want ErrBadManifest and zstd.ErrMagicMismatch", err)
	}
	if errors.Is(err, unix.ENOENT) {
		t.Fatalf("Manifest found the object missing: %v", err)
	}
}

// TestDBReadErrorNotCorrupt: bbolt swallows a failed read of the header
// and says "invalid database"; a store.db that cannot be read (EIO on a
// dying disk; here a directory's fd, whose reads fail with EISDIR) must
// be reported as that errno, never as damage fsck --repair would replace.
func TestDBReadErrorNotCorrupt(t *testing.T) {
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	must(t, err)
	s.Close()
	unreadable := t.TempDir()
	must(t, os.WriteFile(unreadable+"/x", []byte("so the directory is not empty"), 0o600))
	defer txstore.SetOpenDB(func(string, int) (*os.File, error) { return os.Open(unreadable) })()
	for _, ro := range []bool{true, false} {
		s, err := txstore.Open(root, txstore.Options{ReadOnly: ro, NoCleanup: true})
		must(t, err)
		_, err = s.List()
		s.Close()
		if errors.Is(err, txstore.ErrCorrupt) || !errors.Is(err, unix.EISDIR) {
			t.Errorf("read-only %v: List = %v; want the read's errno, not ErrCorrupt", ro, err)
		}
	}
}
