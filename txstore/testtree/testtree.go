// Package testtree builds small /usr-like trees for tests and benchmarks.
package testtree

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// File is one entry to create: Data for files, Link for symlinks, Dir for dirs.
type File struct {
	Path string
	Data string
	Link string
	Dir  bool
	Mode os.FileMode
}

// Sample is a small tree with the shapes that matter: nested dirs, an
// executable, a setuid file, duplicate contents, empty files, symlinks
// (relative and absolute), a kernel, names with spaces and '%'.
func Sample() []File {
	return []File{
		{Path: "bin/sh", Data: "#!shell\n", Mode: 0o755},
		{Path: "bin/busybox", Data: "busybox-binary", Mode: 0o755},
		{Path: "bin/su", Data: "setuid binary", Mode: 0o4755},
		{Path: "bin/ls", Link: "busybox"},
		{Path: "lib/os-release", Data: "ID=txboot\n", Mode: 0o644},
		{Path: "lib/dup-a", Data: "same content", Mode: 0o644},
		{Path: "lib/dup-b", Data: "same content", Mode: 0o644},
		{Path: "lib/empty1", Data: "", Mode: 0o644},
		{Path: "lib/empty2", Data: "", Mode: 0o644},
		{Path: "lib/modules/6.1.0-test/vmlinuz", Data: "kernel image", Mode: 0o644},
		{Path: "lib/modules/6.1.0-test/kernel/a.ko", Data: "module", Mode: 0o644},
		{Path: "share/doc/odd name %1", Data: "odd", Mode: 0o644},
		{Path: "share/abs-link", Link: "/usr/lib/os-release"},
		{Path: "share/empty-dir", Dir: true, Mode: 0o755},
		{Path: "share/ro-dir", Dir: true, Mode: 0o555},
	}
}

// Write creates files under dir in the given order, with the given mtime.
func Write(dir string, files []File, mtime time.Time) error {
	var roDirs []string
	for _, f := range files {
		p := filepath.Join(dir, f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		switch {
		case f.Dir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			if f.Mode&0o200 == 0 {
				roDirs = append(roDirs, p)
			}
		case f.Link != "":
			if err := os.Symlink(f.Link, p); err != nil {
				return err
			}
		default:
			if err := os.WriteFile(p, []byte(f.Data), 0o600); err != nil {
				return err
			}
			// Raw mode bits: os.Chmod would drop 0o4000 (not os.ModeSetuid).
			if err := unix.Chmod(p, uint32(f.Mode)); err != nil {
				return err
			}
			if err := os.Chtimes(p, mtime, mtime); err != nil {
				return err
			}
		}
	}
	for _, d := range roDirs {
		if err := os.Chmod(d, 0o555); err != nil {
			return err
		}
	}
	return nil
}

// Synthetic writes n files spread over directories, for benchmarks.
func Synthetic(dir string, n, size int) error {
	buf := make([]byte, size)
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, fmt.Sprintf("d%03d/e%02d/f%06d", i%97, i%13, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		copy(buf, fmt.Sprintf("file %d\n", i))
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			return err
		}
	}
	return nil
}
