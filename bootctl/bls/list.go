package bls

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// EntryFile is one entry file on the ESP as read back by List.
type EntryFile struct {
	File   string // file name in loader/entries
	Name   Name
	Entry  *Entry // nil when Err is set
	TxID   uint64 // txboot.tx= from the options; 0 when absent
	Digest string // txboot.digest= from the options
	Err    error  // why the file could not be read or parsed
}

// List reads the entries in <esp>/loader/entries whose file names start with
// prefix ("" means DefaultPrefix), newest tx first. A file that does not
// parse is listed with Err set rather than failing the whole listing, so
// `bootctl status` can show it. A missing entries directory is an empty list;
// a missing ESP is an error.
func List(esp, prefix string) ([]EntryFile, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if _, err := os.Stat(esp); err != nil {
		return nil, fmt.Errorf("ESP %s: %w", esp, err)
	}
	dir := filepath.Join(esp, filepath.FromSlash(EntriesDir))
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	var out []EntryFile
	for _, de := range des {
		if !strings.HasPrefix(de.Name(), prefix) || !de.Type().IsRegular() {
			continue
		}
		n, err := ParseName(de.Name())
		if err != nil {
			continue
		}
		ef := EntryFile{File: de.Name(), Name: n}
		p := filepath.Join(dir, de.Name())
		if b, err := readLimited(p, MaxEntrySize+1); err != nil {
			ef.Err = err
		} else if e, err := Parse(b); err != nil {
			ef.Err = fmt.Errorf("%s: %w", p, err)
		} else {
			ef.Entry = e
			ef.TxID, ef.Digest = CmdlineTx(e.Options)
		}
		out = append(out, ef)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].TxID != out[j].TxID {
			return out[i].TxID > out[j].TxID
		}
		return out[i].File < out[j].File
	})
	return out, nil
}

// CmdlineTx extracts txboot.tx= and txboot.digest= from kernel options; the
// last occurrence wins, as in the kernel. A missing or malformed tx is 0.
func CmdlineTx(options string) (id uint64, digest string) {
	for _, f := range strings.Fields(options) {
		if v, ok := strings.CutPrefix(f, "txboot.tx="); ok {
			id, _ = strconv.ParseUint(v, 10, 64)
		} else if v, ok := strings.CutPrefix(f, "txboot.digest="); ok {
			digest = v
		}
	}
	return id, digest
}
