// Package fsx is the one home of "fsync a directory", the step every
// durable write path (temp file + fsync + rename + directory fsync) ends
// with: in the store, the repository and on the ESP.
package fsx

import (
	"fmt"

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
