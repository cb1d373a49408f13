package bls

import (
	"crypto/rand"
	"encoding/hex"
	"io/fs"
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

// WriteFileAtomic replaces dir/name with data so that after a crash the file
// holds either the old or the new content, never a mix: write a temp file in
// dir, fsync it, rename it over name, fsync dir. perm is ignored on FAT. An
// existing name that is not a regular file is left alone (ErrNotRegular).
func WriteFileAtomic(dir, name string, data []byte, perm fs.FileMode) error {
	d, err := openESP(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.writeAtomic(name, data, perm)
}

// RenameAtomic renames dir/oldName to dir/newName (replacing a regular
// newName, like rename(2)) and fsyncs dir so the rename survives a crash.
func RenameAtomic(dir, oldName, newName string) error {
	d, err := openESP(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.rename(oldName, newName)
}

// RemoveDurable removes the regular file dir/name and fsyncs dir. A missing
// file is not an error: the goal, its absence, holds.
func RemoveDurable(dir, name string) error {
	d, err := openESP(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.remove(name)
}
