package txstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

// downloadOf commits a tree with a file of its own, records its manifest
// as a download and prunes the tx: what is left is a download whose
// objects only the download record keeps alive.
func downloadOf(t *testing.T, s *txstore.Store, unique string) (*txstore.Download, cas.Key) {
	t.Helper()
	tx, _, err := s.Commit(sampleDir(t, testtree.File{Path: "lib/unique", Data: unique, Mode: 0o644}), txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(tx)
	if err != nil {
		t.Fatal(err)
	}
	var uk cas.Key
	for _, e := range m.Entries {
		if e.Path == "lib/unique" {
			uk = e.Key()
		}
	}
	d, err := s.StoreDownload(m, m.Encode(), txstore.Download{Version: "v-" + unique, Origin: "file:///repo",
		Signatures: []sign.Signature{{KeyID: "k", Sig: []byte("sig")}}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Digest != tx.Digest || d.Entries != tx.Entries {
		t.Fatalf("download %+v for tx %+v", d, tx)
	}
	// A newer tx, so that prune removes the downloaded one's record and tree.
	if _, _, err := s.Commit(sampleDir(t, testtree.File{Path: "lib/unique", Data: unique + "-newer", Mode: 0o644}), txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Prune(1); err != nil || len(res.Removed) != 1 || res.Removed[0] != tx.ID {
		t.Fatalf("prune: %+v %v", res, err)
	}
	return d, uk
}

// TestDownloadSurvivesGC: gc between download and apply removes nothing a
// pending download uses; apply then commits it from the store alone.
func TestDownloadSurvivesGC(t *testing.T) {
	s, _ := newStore(t)
	d, uk := downloadOf(t, s, "only in the download")
	if _, err := s.GC(); err != nil {
		t.Fatal(err)
	}
	if has, err := s.Objects().Has(uk); err != nil || !has {
		t.Fatalf("gc removed the download's object %s: %v", uk.RelPath(), err)
	}
	got, err := s.FindDownload("latest")
	if err != nil || got.Digest != d.Digest || got.Version != d.Version {
		t.Fatalf("find: %+v %v", got, err)
	}
	tx, existed, err := s.ApplyDownload(got, txstore.CommitOptions{})
	if err != nil || existed {
		t.Fatalf("apply: %v (existed %v)", err, existed)
	}
	if tx.Digest != d.Digest || tx.Version != d.Version || tx.Origin != d.Origin || len(tx.Signatures) != 1 {
		t.Fatalf("applied %+v", tx)
	}
	if def, _ := s.Default(); def != tx.ID {
		t.Fatalf("default %d, want %d", def, tx.ID)
	}
	if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
	if ds, err := s.Downloads(); err != nil || len(ds) != 0 {
		t.Fatalf("downloads after apply: %v %v", ds, err)
	}
	// Once applied, the download no longer keeps anything: only the tx does.
	if _, err := s.FindDownload(""); !errors.Is(err, txstore.ErrNoDownload) {
		t.Fatalf("find after apply: %v", err)
	}
}

// TestApplyDownloadMissingObject: an object gone missing fails with a clear
// error naming it, records nothing and keeps the download.
func TestApplyDownloadMissingObject(t *testing.T) {
	s, _ := newStore(t)
	d, uk := downloadOf(t, s, "will go missing")
	if err := os.Remove(filepath.Join(s.Dir, "objects", uk.RelPath())); err != nil {
		t.Fatal(err)
	}
	before, _ := s.List()
	_, _, err := s.ApplyDownload(d, txstore.CommitOptions{})
	if !errors.Is(err, txstore.ErrMissingObject) || !strings.Contains(err.Error(), uk.RelPath()) {
		t.Fatalf("apply: %v, want ErrMissingObject naming %s", err, uk.RelPath())
	}
	if after, _ := s.List(); len(after) != len(before) {
		t.Fatalf("a tx was recorded: %d → %d", len(before), len(after))
	}
	if ds, _ := s.Downloads(); len(ds) != 1 {
		t.Fatalf("download record dropped: %v", ds)
	}
}

func TestFindDownload(t *testing.T) {
	s, _ := newStore(t)
	cases := []struct {
		want string
		err  error
	}{
		{"", txstore.ErrNoDownload},
		{"latest", txstore.ErrNoDownload},
		{"v1", txstore.ErrNoDownload},
		{"sha256:" + strings.Repeat("0", 64), txstore.ErrNoDownload},
		{"sha256:../x", txstore.ErrInvalid},
	}
	for _, c := range cases {
		if _, err := s.FindDownload(c.want); !errors.Is(err, c.err) {
			t.Errorf("FindDownload(%q): %v, want %v", c.want, err, c.err)
		}
	}
	d, _ := downloadOf(t, s, "x")
	for _, w := range []string{"", "latest", d.Version, d.Digest} {
		if got, err := s.FindDownload(w); err != nil || got.Digest != d.Digest {
			t.Errorf("FindDownload(%q): %+v %v", w, got, err)
		}
	}
	if err := s.RemoveDownload(d.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindDownload(d.Digest); !errors.Is(err, txstore.ErrNoDownload) {
		t.Fatalf("after remove: %v", err)
	}
}
