package cli

import (
	"fmt"
	"io"

	"github.com/txboot/txboot/bootctl/pkgdb"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/manifest"
)

// diffOut is diff's result (--json as is).
type diffOut struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
	// Packages: null when the package changes are unknown, PackagesNote
	// says why (a tx without a package database, or an unreadable one).
	Packages     []pkgChange `json:"packages"`
	PackagesNote string      `json:"packages_note,omitempty"`
	// Files: paths under /usr as the manifests name them ("." is /usr).
	Files  []manifest.FileChange `json:"files"`
	native string
}

func diffVerb() *verb {
	var from, to uint64
	return &verb{name: "diff", args: "A B", help: "what changed from tx A to tx B: packages (installed, removed, upgraded) and files (added, removed, changed)",
		pos: posArgs{min: 2, max: 2, msg: "diff takes two transaction ids, got %d arguments"}, store: storeRead,
		check: func(e *env, args []string) (err error) {
			if from, err = parseID(args[0]); err != nil {
				return err
			}
			to, err = parseID(args[1])
			return err
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			d, err := diffTxs(s, from, to)
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(d)
			}
			printDiff(e.stdout, d)
			return nil
		}}
}

// diffTxs compares two txs: files from their manifests, packages from
// their trees' package databases.
func diffTxs(s *txstore.Store, from, to uint64) (*diffOut, error) {
	var ms [2]*manifest.Manifest
	for i, id := range []uint64{from, to} {
		t, err := s.Get(id)
		if err != nil {
			return nil, err
		}
		if ms[i], err = s.Manifest(t); err != nil {
			return nil, err
		}
	}
	d := &diffOut{From: from, To: to, Files: manifest.Diff(ms[0], ms[1])}
	a, b := readPkgs(s, from), readPkgs(s, to)
	switch {
	case a.err != nil:
		d.PackagesNote = a.err.Error()
	case b.err != nil:
		d.PackagesNote = b.err.Error()
	case !a.have && !b.have:
		d.PackagesNote = "neither tx has a package database"
	case !a.have:
		d.PackagesNote = fmt.Sprintf("tx %d has no package database", from)
	case !b.have:
		d.PackagesNote = fmt.Sprintf("tx %d has no package database", to)
	default:
		d.Packages = withKinds(pkgdb.Diff(a.set, b.set))
		d.native = b.set.Native()
	}
	return d, nil
}

// printDiff is diff in text: the packages, then the files.
func printDiff(w io.Writer, d *diffOut) {
	fmt.Fprintf(w, "tx %d → tx %d\n", d.From, d.To)
	if d.Packages == nil {
		fmt.Fprintf(w, "packages: unknown: %s\n", printable(d.PackagesNote))
	} else {
		fmt.Fprintf(w, "packages: %d changed\n", len(d.Packages))
		printPkgChanges(w, "  ", d.Packages, d.native)
	}
	n := map[string]int{}
	for _, f := range d.Files {
		n[f.Kind]++
	}
	fmt.Fprintf(w, "files: %d changed (%d added, %d removed, %d changed)\n", len(d.Files), n[manifest.Added], n[manifest.Removed], n[manifest.Changed])
	for _, f := range d.Files {
		p := "/usr"
		if f.Path != "." {
			p += "/" + f.Path
		}
		if f.What != "" {
			fmt.Fprintf(w, "  %-8s %s (%s)\n", f.Kind, printable(p), f.What)
		} else {
			fmt.Fprintf(w, "  %-8s %s\n", f.Kind, printable(p))
		}
	}
}
