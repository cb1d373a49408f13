package safefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRemoveTree(t *testing.T) {
	outside := t.TempDir()
	for i := 0; i < 5; i++ {
		os.WriteFile(filepath.Join(outside, fmt.Sprint(i)), []byte("x"), 0o644)
	}
	os.Mkdir(filepath.Join(outside, "sub"), 0o755)
	os.WriteFile(filepath.Join(outside, "sub", "f"), []byte("x"), 0o644)

	cases := []struct {
		name    string
		make    func(t *testing.T, p string) // builds the thing named "x" at p
		wantErr error
		gone    bool
	}{
		{"tree with symlinks out", func(t *testing.T, p string) {
			os.MkdirAll(filepath.Join(p, "a/b/c"), 0o755)
			for i := 0; i < 100; i++ { // enough for the parallel pass
				os.WriteFile(filepath.Join(p, "a", fmt.Sprintf("b/f%d", i)), []byte("x"), 0o644)
			}
			os.Symlink(outside, filepath.Join(p, "a/out"))
			os.Symlink(outside, filepath.Join(p, "a/b/c/out"))
			os.Symlink(filepath.Join(outside, "0"), filepath.Join(p, "file-link"))
			os.Mkdir(filepath.Join(p, "ro"), 0o755)
			os.WriteFile(filepath.Join(p, "ro/f"), []byte("x"), 0o444)
			os.Chmod(filepath.Join(p, "ro"), 0o555)
			os.Mkdir(filepath.Join(p, "none"), 0o755)
			os.WriteFile(filepath.Join(p, "none/f"), []byte("x"), 0o444)
			os.Chmod(filepath.Join(p, "none"), 0)
		}, nil, true},
		{"symlink to a directory", func(t *testing.T, p string) { os.Symlink(outside, p) }, ErrNotDir, false},
		{"symlink to a file", func(t *testing.T, p string) { os.Symlink(filepath.Join(outside, "0"), p) }, ErrNotDir, false},
		{"regular file", func(t *testing.T, p string) { os.WriteFile(p, nil, 0o644) }, ErrNotDir, false},
		{"missing", func(t *testing.T, p string) {}, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.make(t, filepath.Join(dir, "x"))
			fd, err := OpenDir(unix.AT_FDCWD, dir)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			err = RemoveTree(fd, "x")
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("RemoveTree: %v, want %v", err, c.wantErr)
			}
			_, serr := os.Lstat(filepath.Join(dir, "x"))
			if gone := errors.Is(serr, os.ErrNotExist); gone != c.gone {
				t.Fatalf("x gone: %v, want %v", gone, c.gone)
			}
			for _, p := range []string{"0", "1", "2", "3", "4", "sub/f"} {
				if _, err := os.Stat(filepath.Join(outside, p)); err != nil {
					t.Fatalf("outside file %s removed: %v", p, err)
				}
			}
		})
	}
}

func TestOpenDirRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	os.Symlink(t.TempDir(), filepath.Join(dir, "l"))
	fd, err := OpenDir(unix.AT_FDCWD, filepath.Join(dir, "l"))
	if err == nil {
		unix.Close(fd)
	}
	if !IsNotDir(err) {
		t.Fatalf("OpenDir of a symlink: %v, want ELOOP/ENOTDIR", err)
	}
	if d := Describe(unix.AT_FDCWD, filepath.Join(dir, "l")); d[:9] != "a symlink" {
		t.Fatalf("Describe: %q", d)
	}
}
