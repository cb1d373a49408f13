package main

import (
	"fmt"
	"io/fs"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// setxattrs gives every regular file under dir a user.* xattr (for
// scripts/bench-xattr.sh: what a tree full of xattrs costs to commit and
// verify).
func setxattrs(dir string) error {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		n++
		if err := unix.Lsetxattr(p, "user.txboot-bench", []byte(fmt.Sprintf("file %08d", n)), 0); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	})
	fmt.Printf("files=%d\n", n)
	return err
}
