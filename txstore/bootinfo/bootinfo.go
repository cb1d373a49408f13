// Package bootinfo is the boot.json contract: initagent writes what it
// booted and why into the new root's /run, bootctl reads it. Both sides
// import this package, so the schema has one home.
package bootinfo

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/txboot/txboot/txstore/fsx"
)

// Path is where initagent leaves the record: the initramfs's /run, which
// switch_root moves into the new root.
const Path = "/run/txboot/boot.json"

// maxSize bounds Read: the real file is well under a kilobyte.
const maxSize = 1 << 20

// ErrBad means the file exists but is not a boot record.
var ErrBad = errors.New("bad boot info")

// Failure is one tx that could not be booted, and why.
type Failure struct {
	Tx     uint64 `json:"tx"`
	Reason string `json:"reason"`
	// Kind types the failure for callers that act on it (e.g.
	// "unsigned", "bad-signature"); "" for the untyped ones.
	Kind string `json:"kind,omitempty"`
}

// Info is the content of boot.json.
type Info struct {
	Booted    uint64    `json:"booted"`
	Requested uint64    `json:"requested"`
	Failures  []Failure `json:"failures,omitempty"`
	OnTrial   bool      `json:"on_trial"`
	// Watchdog: seconds the hardware watchdog was armed for (0: not armed).
	Watchdog int              `json:"watchdog_seconds,omitempty"`
	PhasesMS map[string]int64 `json:"phases_ms"`
	// NoDatabase: booted without store.db (damaged): boot counting off; why.
	NoDatabase string `json:"no_database,omitempty"`
	// SignedBy: the trusted key that signed the booted tx's digest ("":
	// the initramfs carries no keys).
	SignedBy string `json:"signed_by,omitempty"`
	// Etc: what the boot did to /etc (package etcstate: adopted, kept,
	// restored, merged with conflicts, copied; or why it was kept as it
	// was), one line.
	Etc string `json:"etc,omitempty"`
	// Sealed: the booted tx's /usr is its sealed image (erofs + overlayfs,
	// verity=require: the kernel checks every read); else UnsealedWhy says
	// why its tree was verified and bind-mounted instead.
	Sealed      bool   `json:"sealed"`
	UnsealedWhy string `json:"unsealed_why,omitempty"`
}

// Marshal is the file's exact encoding (indented JSON, one final newline);
// the golden fixture pins it.
func Marshal(info *Info) ([]byte, error) {
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode boot info: %w", err)
	}
	return append(data, '\n'), nil
}

// Unmarshal decodes a record; a file that does not decode, or names no
// booted tx, is ErrBad.
func Unmarshal(data []byte) (*Info, error) {
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBad, err)
	}
	if info.Booted == 0 {
		return nil, fmt.Errorf("%w: no booted tx", ErrBad)
	}
	return &info, nil
}

// Read reads the record at path. A missing file is an error satisfying
// errors.Is(err, fs.ErrNotExist) (not booted by txboot).
func Read(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxSize {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes", path, ErrBad, maxSize)
	}
	info, err := Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// Write replaces the record at path durably (temp file, fsync, rename,
// directory fsync), creating its directory, so a reader never sees a torn
// file.
func Write(path string, info *Info) error {
	data, err := Marshal(info)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return fsx.SyncDir(dir)
}
