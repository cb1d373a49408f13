package bls

import (
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// WriteESPFile writes data to rel (a '/'-separated path below the ESP,
// e.g. "EFI/BOOT/BOOTX64.EFI"), creating the directories on the way: every
// component is opened with O_NOFOLLOW, the file is replaced atomically
// (temp + fsync + rename + directory fsync), and an existing rel that is
// not a regular file is left alone (ErrNotRegular).
func WriteESPFile(esp, rel string, data []byte, perm fs.FileMode) error {
	clean := path.Clean(rel)
	if rel == "" || path.IsAbs(rel) || clean != rel || clean == "." || strings.HasPrefix(clean, "../") || clean == ".." {
		return fmt.Errorf("ESP %s: file %q: %w", esp, rel, fs.ErrInvalid)
	}
	d, err := openESP(esp)
	if err != nil {
		return err
	}
	defer d.Close()
	sub, err := d.mkdirAll(path.Dir(rel))
	if err != nil {
		return err
	}
	defer sub.Close()
	return sub.writeAtomic(path.Base(rel), data, perm)
}
