package fsx

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path  string
		errno error // nil: success
	}{
		{dir, nil},
		{filepath.Join(dir, "missing"), unix.ENOENT},
		{file, unix.ENOTDIR},
	}
	for _, tt := range tests {
		err := SyncDir(tt.path)
		if tt.errno == nil {
			if err != nil {
				t.Errorf("SyncDir(%s) = %v", tt.path, err)
			}
			continue
		}
		if !errors.Is(err, tt.errno) || !strings.Contains(err.Error(), tt.path) {
			t.Errorf("SyncDir(%s) = %v, want %v naming the path", tt.path, err, tt.errno)
		}
	}
	if err := SyncDirFd(-1, "nowhere"); !errors.Is(err, unix.EBADF) || !strings.Contains(err.Error(), "nowhere") {
		t.Errorf("SyncDirFd(-1) = %v", err)
	}
}
