package bls

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tempName is a hidden name in the target's directory: systemd-boot skips
// dot files and a leftover from a crash does not end in ".conf".
func tempName(name string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "." + name + "." + hex.EncodeToString(b[:]) + ".tmp", nil
}

// isTempFor reports whether file is a temp file tempName made for name.
func isTempFor(file, name string) bool {
	rest, ok := strings.CutPrefix(file, "."+name+".")
	if !ok {
		return false
	}
	h, ok := strings.CutSuffix(rest, ".tmp")
	if !ok || len(h) != 16 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

// syncDir makes a directory's entries (creates, renames, removals) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// WriteFileAtomic replaces dir/name with data so that after a crash the file
// holds either the old or the new content, never a mix: write a temp file in
// dir, fsync it, rename it over name, fsync dir. perm is ignored on FAT.
func WriteFileAtomic(dir, name string, data []byte, perm fs.FileMode) (err error) {
	tmp, err := createTemp(dir, name, perm)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	return commitTemp(tmp, dir, name)
}

func createTemp(dir, name string, perm fs.FileMode) (*os.File, error) {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return nil, fmt.Errorf("write %s: %w", filepath.Join(dir, name), fs.ErrInvalid)
	}
	for range 10 {
		tn, err := tempName(name)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(dir, tn), os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create temp for %s: %w", filepath.Join(dir, name), err)
		}
		return f, nil
	}
	return nil, fmt.Errorf("create temp for %s: %w", filepath.Join(dir, name), fs.ErrExist)
}

// commitTemp fsyncs and closes tmp, renames it to dir/name and fsyncs dir.
func commitTemp(tmp *os.File, dir, name string) error {
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	dst := filepath.Join(dir, name)
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("rename %s: %w", dst, err)
	}
	return syncDir(dir)
}

// RenameAtomic renames dir/oldName to dir/newName (replacing newName if it
// exists, like rename(2)) and fsyncs dir so the rename survives a crash.
func RenameAtomic(dir, oldName, newName string) error {
	if err := os.Rename(filepath.Join(dir, oldName), filepath.Join(dir, newName)); err != nil {
		return fmt.Errorf("rename %s to %s: %w", filepath.Join(dir, oldName), newName, err)
	}
	return syncDir(dir)
}

// RemoveDurable removes dir/name and fsyncs dir. A missing file is not an
// error: the goal, its absence, holds.
func RemoveDurable(dir, name string) error {
	p := filepath.Join(dir, name)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return syncDir(dir)
}

// mkdirAllDurable creates root/rel and any missing parents below root,
// fsyncing each parent that gained a directory.
func mkdirAllDurable(root, rel string) error {
	cur := root
	for _, c := range strings.Split(filepath.ToSlash(rel), "/") {
		if c == "" {
			continue
		}
		next := filepath.Join(cur, c)
		err := os.Mkdir(next, 0o755)
		switch {
		case err == nil:
			if err := syncDir(cur); err != nil {
				return err
			}
		case errors.Is(err, fs.ErrExist):
			st, serr := os.Stat(next)
			if serr != nil {
				return fmt.Errorf("mkdir %s: %w", next, serr)
			}
			if !st.IsDir() {
				return fmt.Errorf("mkdir %s: %w", next, fs.ErrExist)
			}
		default:
			return fmt.Errorf("mkdir %s: %w", next, err)
		}
		cur = next
	}
	return nil
}
