package boot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindInitInKeepsErrors: when no candidate is usable, every
// candidate's error stays visible to errors.Is, in a one-line message.
func TestFindInitInKeepsErrors(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "sbin/noexec"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := FindInitIn(root, []string{"/sbin/noexec", "/sbin/missing"})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("FindInitIn = %v; the missing candidate's ENOENT is lost", err)
	}
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "/sbin/noexec: not an executable file") {
		t.Errorf("FindInitIn = %q; want one line naming each candidate", err)
	}
}
