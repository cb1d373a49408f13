// Package fsx is the one home of "fsync a directory", the step every
// durable write path (temp file + fsync + rename + directory fsync) ends
// with: in the store, the repository and on the ESP.
package fsx

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// SyncDir makes the entries of the directory at path durable (a rename,
// link or unlink in it survives a power cut).
func SyncDir(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", path, err)
	}
	defer unix.Close(fd)
	return SyncDirFd(fd, path)
}

// SyncDirFd is SyncDir for a directory already open as fd; name is what
// the error calls it.
func SyncDirFd(fd int, name string) error {
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync dir %s: %w", name, err)
	}
	return nil
}

// WriteFile puts data at dir/name durably and atomically: a temp file in
// dir (mode perm), fsync, rename over name, directory fsync. A reader sees
// the old file or the whole new one, and a power cut after it returns
// loses nothing.
func WriteFile(dir, name string, data []byte, perm os.FileMode) error {
	p := filepath.Join(dir, name)
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return fmt.Errorf("write %s: not a file name", p)
	}
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	err = tmp.Chmod(perm)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", p, err)
	}
	return SyncDir(dir)
}
