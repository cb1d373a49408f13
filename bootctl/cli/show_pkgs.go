package cli

import (
	"fmt"
	"io"

	"github.com/txboot/txboot/bootctl/pkgdb"
	"github.com/txboot/txboot/txstore"
)

// showOut is show --json: the record, and what its tree says of its
// packages (null: no package database).
type showOut struct {
	*txstore.Tx
	Packages *showPkgs `json:"packages"`
}

type showPkgs struct {
	Native    string     `json:"native,omitempty"`
	Installed pkgdb.Set  `json:"installed"`
	Broken    pkgdb.Set  `json:"broken"`
	Changes   pkgChanges `json:"changes"`
	Error     string     `json:"error,omitempty"` // the database could not be read
}

// showPackagesOf reads tx t's packages and its changes for show.
func showPackagesOf(s *txstore.Store, t *txstore.Tx) *showPkgs {
	cur := readPkgs(s, t.ID)
	if cur.err != nil {
		return &showPkgs{Installed: pkgdb.Set{}, Broken: pkgdb.Set{}, Changes: changesOf(s, t, cur), Error: cur.err.Error()}
	}
	if !cur.have {
		return nil
	}
	return &showPkgs{Native: cur.set.Native(), Installed: cur.set.Installed(), Broken: cur.set.Broken(), Changes: changesOf(s, t, cur)}
}

// printShowPackages is show's package lines.
func printShowPackages(w io.Writer, p *showPkgs) {
	switch {
	case p == nil:
		fmt.Fprintf(w, "  packages: none recorded (no usr/%s in this tx)\n", pkgdb.StatusRel)
		return
	case p.Error != "":
		fmt.Fprintf(w, "  packages: unreadable: %s\n", printable(p.Error))
		if p.Changes.Source == "recorded" {
			fmt.Fprintf(w, "  recorded changes from tx %d:\n", p.Changes.From)
			printPkgChanges(w, "    ", p.Changes.Changes, "")
		}
		return
	}
	n := len(p.Installed) + len(p.Broken)
	if sum := p.Changes.summary(); sum != "" {
		fmt.Fprintf(w, "  packages: %d (%s)\n", n, sum)
	} else {
		fmt.Fprintf(w, "  packages: %d\n", n)
	}
	printPkgChanges(w, "    ", p.Changes.Changes, p.Native)
	if len(p.Broken) > 0 {
		fmt.Fprintf(w, "  broken:   %d not installed cleanly: %s\n", len(p.Broken), brokenList(p.Broken, p.Native))
	}
}

// showPackageSet is show --packages: the tx's exact package set, one
// name=version a line, as apt-get install takes them. Broken packages
// cannot be asked of apt by version and are left out, with a warning.
func showPackageSet(e *env, s *txstore.Store, id uint64) error {
	if _, err := s.Get(id); err != nil {
		return err
	}
	cur := readPkgs(s, id)
	if cur.err != nil {
		return fmt.Errorf("tx %d: %w", id, cur.err)
	}
	if !cur.have {
		return noPkgDB(id)
	}
	native := cur.set.Native()
	broken := cur.set.Broken()
	if e.json {
		return e.printJSON(map[string]any{"tx": id, "native": native, "installed": cur.set.Installed(), "broken": broken, "apt": cur.set.AptArgs(native)})
	}
	if len(broken) > 0 {
		fmt.Fprintf(e.stderr, "bootctl: warning: tx %d: %d package(s) not installed cleanly are left out: %s\n", id, len(broken), brokenList(broken, native))
	}
	for _, a := range cur.set.AptArgs(native) {
		fmt.Fprintln(e.stdout, a)
	}
	return nil
}
