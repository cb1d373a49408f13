package txstore_test

import (
	"os"
	"path/filepath"

	"github.com/txboot/txboot/txstore"
	"golang.org/x/sys/unix"
)

func mkfifo(p string) error { return unix.Mkfifo(p, 0o644) }

// removeObjectOf deletes the CAS object a tree file is linked to.
func removeObjectOf(s *txstore.Store, tree, rel string) error {
	want, err := os.Stat(filepath.Join(tree, rel))
	if err != nil {
		return err
	}
	return filepath.Walk(s.Objects().Dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		if os.SameFile(fi, want) {
			return os.Remove(p)
		}
		return nil
	})
}

// corruptInPlace flips the first byte of a file, keeping its inode (bit rot).
func corruptInPlace(p string) error {
	os.Chmod(p, 0o755)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 0); err != nil {
		return err
	}
	b[0] ^= 0xff
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = os.Chmod(p, 0o555)
	}
	return err
}
