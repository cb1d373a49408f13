package etcstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/safefs"
	"golang.org/x/sys/unix"
)

// maxConflictsFile bounds conflicts.json: a conflict per entry at most.
const maxConflictsFile = 16 << 20

// conflictsFile is conflicts.json.
type conflictsFile struct {
	Tx        uint64     `json:"tx"`
	Conflicts []Conflict `json:"conflicts"`
}

// writeConflicts records the conflicts of the merge that made tx id's
// /etc in STORE/trees/<id>/etc/conflicts.json (temp, fsync, rename; an
// empty list says the merge was clean).
func writeConflicts(root string, id uint64, cs []Conflict) error {
	if cs == nil {
		cs = []Conflict{}
	}
	data, err := json.MarshalIndent(conflictsFile{Tx: id, Conflicts: cs}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode conflicts: %w", err)
	}
	return fsx.WriteFile(txEtc(root, id), ConflictsFile, append(data, '\n'), 0o644)
}

// Conflicts reads the paths where the switch into tx id kept the
// administrator's version (nil when it recorded none).
func Conflicts(root string, id uint64) ([]Conflict, error) {
	p := filepath.Join(txEtc(root, id), ConflictsFile)
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConflictsFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(data) > maxConflictsFile {
		return nil, fmt.Errorf("read %s: %w: over %d bytes", p, ErrTooBig, maxConflictsFile)
	}
	var cf conflictsFile
	if err := json.Unmarshal(data, &cf); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return cf.Conflicts, nil
}

// besideSuffixes are the names under which dpkg, ucf and txboot keep a
// package's version of a configuration file the administrator changed.
var besideSuffixes = []string{".dpkg-dist", ".dpkg-new", ".ucf-dist", BesideSuffix}

// KeptBeside lists the files in the live /etc that hold a package's
// version kept beside the administrator's (*.dpkg-dist, *.dpkg-new,
// *.ucf-dist, *.txboot-new): paths relative to /etc, sorted. The walk
// follows no symlink and stops at MaxEntries (ErrTooBig).
func KeptBeside(root string) ([]string, error) {
	etc := liveEtc(root)
	fd, err := openRoot(etc)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	w := &besideWalk{etc: etc}
	if err := w.dir(fd, ""); err != nil {
		return nil, err
	}
	slices.Sort(w.out)
	return w.out, nil
}

type besideWalk struct {
	etc   string
	count int
	out   []string
}

func (w *besideWalk) dir(fd int, rel string) error {
	if depth(rel) >= maxDepth {
		return fmt.Errorf("%s/%s: %w: deeper than %d directories", w.etc, rel, ErrTooBig, maxDepth)
	}
	ents, err := safefs.List(fd)
	if err != nil {
		return fmt.Errorf("list %s/%s: %w", w.etc, rel, err)
	}
	for _, e := range ents {
		if w.count++; w.count > MaxEntries {
			return fmt.Errorf("%s: %w: more than %d entries", w.etc, ErrTooBig, MaxEntries)
		}
		crel := join(rel, e.Name)
		t := safefs.TypeOf(fd, e)
		if t == unix.DT_DIR {
			sub, err := safefs.OpenDir(fd, e.Name)
			if err != nil {
				continue // gone or replaced meanwhile: not ours to report
			}
			err = w.dir(sub, crel)
			unix.Close(sub)
			if err != nil {
				return err
			}
			continue
		}
		for _, s := range besideSuffixes {
			if strings.HasSuffix(e.Name, s) && len(e.Name) > len(s) {
				w.out = append(w.out, crel)
				break
			}
		}
	}
	return nil
}
