package txstore_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
)

// A manifest that cannot be loaded is one problem whose text says
// "manifest" once and names the object, whatever broke.
func TestVerifyManifestProblem(t *testing.T) {
	tests := []struct {
		name   string
		damage func(p string) error
		want   string // in the reason
	}{
		{"missing", os.Remove, "no such file or directory"},
		{"corrupt", func(p string) error { return corruptInPlace(p) }, "content does not match its name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t)
			tx, _, err := s.Commit(sampleDir(t), txstore.CommitOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(s.Objects().Dir, tx.Manifest[:2], tx.Manifest+".0444")
			if err := tt.damage(p); err != nil {
				t.Fatal(err)
			}
			probs, err := s.Verify(tx.ID, txstore.VerifyFast)
			if err != nil || len(probs) != 1 {
				t.Fatalf("Verify: %v %v", probs, err)
			}
			pr := probs[0]
			if pr.Path != txstore.ManifestProblem || !strings.Contains(pr.Reason, tt.want) ||
				!strings.Contains(pr.Reason, tx.Manifest) || strings.Count(pr.String(), "manifest") != 1 {
				t.Errorf("problem %q (path %q)", pr, pr.Path)
			}
		})
	}
}
