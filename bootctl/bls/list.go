package bls

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/txboot/txboot/initagent/cmdline"
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
	root, err := openESP(esp)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	// Not followed if a symlink: status must not list entries elsewhere.
	dir, err := root.openEntriesDir()
	if err != nil || dir == nil {
		return nil, err
	}
	defer dir.Close()
	des, err := dir.list()
	if err != nil {
		return nil, err
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
		b, err := dir.readFile(de.Name(), MaxEntrySize)
		if errors.Is(err, ErrNotRegular) {
			continue // swapped since the listing
		}
		if err != nil {
			ef.Err = err
		} else if e, err := Parse(b); err != nil {
			ef.Err = fmt.Errorf("%s: %w", dir.path(de.Name()), err)
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

// CmdlineTx is the tx and digest kernel options name, by initagent's rule
// (cmdline.BootedTx: the last txboot.tx= wins, a malformed digest is "").
func CmdlineTx(options string) (id uint64, digest string) {
	return cmdline.BootedTx(options)
}
