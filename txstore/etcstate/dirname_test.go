package etcstate_test

import (
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/internal/layout"
)

// The store directory's name has one value: etcstate cannot import
// txstore (txstore may import it), so layout holds it too. An external
// test package, so that txstore importing etcstate is no cycle here.
func TestDirName(t *testing.T) {
	if layout.DirName != txstore.DirName {
		t.Fatalf("layout.DirName %q, txstore.DirName %q", layout.DirName, txstore.DirName)
	}
}
