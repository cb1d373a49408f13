package harness

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
)

// mtoolsEnv stops mtools from refusing images whose geometry it dislikes.
var mtoolsEnv = []string{"MTOOLS_SKIP_CHECK=1"}

// ESP is a FAT filesystem at byte Offset of the image Path (0 for a bare
// FAT image). Its methods use mtools, so they need no root; don't use them
// while a VM has the image open (QEMU locks it and caches writes).
type ESP struct {
	Path   string
	Offset int64
}

// drive is mtools' image@@offset syntax.
func (e ESP) drive() string {
	if e.Offset == 0 {
		return e.Path
	}
	return e.Path + "@@" + strconv.FormatInt(e.Offset, 10)
}

// mpath turns "/loader/x.conf" or "loader/x.conf" into "::/loader/x.conf".
func mpath(p string) string {
	return "::" + path.Clean("/"+p)
}

func (e ESP) mtool(stdin []byte, tool string, args ...string) ([]byte, error) {
	out, _, err := run(context.Background(), runOpts{env: mtoolsEnv, stdin: stdin}, tool, append([]string{"-i", e.drive()}, args...)...)
	if err != nil {
		// mtools says `File "::/x" not found`; let callers use errors.Is.
		if strings.Contains(err.Error(), "not found") {
			return out, fmt.Errorf("%s: %w: %w", e.Path, err, fs.ErrNotExist)
		}
		return out, fmt.Errorf("%s: %w", e.Path, err)
	}
	return out, nil
}

// ReadFile returns the content of a file on the ESP.
func (e ESP) ReadFile(p string) ([]byte, error) {
	// mcopy to "-" writes binary to stdout (mtype may translate text).
	return e.mtool(nil, "mcopy", "-n", mpath(p), "-")
}

// List returns the names in dir, sorted; subdirectories end in "/".
func (e ESP) List(dir string) ([]string, error) {
	out, err := e.mtool(nil, "mdir", "-b", mpath(dir))
	if err != nil {
		return nil, err
	}
	prefix := strings.TrimSuffix(mpath(dir), "/") + "/"
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimRight(l, "\r")
		if l == "" {
			continue
		}
		names = append(names, strings.TrimPrefix(l, prefix))
	}
	sort.Strings(names)
	return names, nil
}

// Exists reports whether a file or directory exists on the ESP.
func (e ESP) Exists(p string) (bool, error) {
	_, err := e.mtool(nil, "mdir", "-b", mpath(p))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// MkdirAll creates dir and its parents on the ESP.
func (e ESP) MkdirAll(dir string) error {
	clean := path.Clean("/" + dir)
	if clean == "/" {
		return nil
	}
	cur := ""
	for _, c := range strings.Split(clean[1:], "/") {
		cur += "/" + c
		ok, err := e.Exists(cur)
		if err != nil {
			return err
		}
		if !ok {
			if _, err := e.mtool(nil, "mmd", mpath(cur)); err != nil {
				return err
			}
		}
	}
	return nil
}

// WriteFile creates or replaces a file on the ESP, creating its parents.
func (e ESP) WriteFile(p string, data []byte) error {
	if err := e.MkdirAll(path.Dir(path.Clean("/" + p))); err != nil {
		return err
	}
	tmp, err := os.CreateTemp("", "txboot-esp-*")
	if err != nil {
		return fmt.Errorf("temp file for %s: %w", p, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	// -o overwrites without the interactive prompt; -n skips the text check.
	_, err = e.mtool(nil, "mcopy", "-o", "-n", tmp.Name(), mpath(p))
	return err
}

// Remove deletes a file from the ESP.
func (e ESP) Remove(p string) error {
	_, err := e.mtool(nil, "mdel", mpath(p))
	return err
}

// Rename moves a file on the ESP, replacing the target (like systemd-boot's
// boot-counter renames).
func (e ESP) Rename(from, to string) error {
	_, err := e.mtool(nil, "mmove", "-D", "o", mpath(from), mpath(to))
	return err
}

// ReadESPFile reads path from the FAT filesystem at espOffset of img.
func ReadESPFile(img string, espOffset int64, p string) ([]byte, error) {
	return ESP{Path: img, Offset: espOffset}.ReadFile(p)
}

// ListESPDir lists dir of the FAT filesystem at espOffset of img; see ESP.List.
func ListESPDir(img string, espOffset int64, dir string) ([]string, error) {
	return ESP{Path: img, Offset: espOffset}.List(dir)
}

// WriteESPFile writes path on the FAT filesystem at espOffset of img.
func WriteESPFile(img string, espOffset int64, p string, data []byte) error {
	return ESP{Path: img, Offset: espOffset}.WriteFile(p, data)
}

// DeleteESPFile removes path from the FAT filesystem at espOffset of img.
func DeleteESPFile(img string, espOffset int64, p string) error {
	return ESP{Path: img, Offset: espOffset}.Remove(p)
}
