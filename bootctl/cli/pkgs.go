package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/txboot/txboot/bootctl/pkgdb"
	"github.com/txboot/txboot/txstore"
)

// txPkgs is what a tx's tree says of its packages (show, diff, status).
type txPkgs struct {
	set  pkgdb.Set
	have bool  // the tree has a package database
	err  error // it could not be read
}

func readPkgs(s *txstore.Store, id uint64) txPkgs {
	set, have, err := pkgdb.ReadTree(s.TreeDir(id))
	return txPkgs{set: set, have: have, err: err}
}

// pkgChange is a package change with how it reads, for --json.
type pkgChange struct {
	txstore.PkgChange
	Kind string `json:"kind"` // installed, removed, upgraded, downgraded, changed
}

func withKinds(cs []txstore.PkgChange) []pkgChange {
	out := []pkgChange{}
	for _, c := range cs {
		out = append(out, pkgChange{PkgChange: c, Kind: pkgdb.ChangeKind(c)})
	}
	return out
}

// pkgChanges is a tx's package changes against its parent.
type pkgChanges struct {
	From uint64 `json:"from,omitempty"` // the parent
	// Source: "recorded" (by the run that made the tx), "computed" (from
	// the parent's tree), "unknown" (Note says why) or "none" (no parent).
	Source  string      `json:"source"`
	Note    string      `json:"note,omitempty"`
	Changes []pkgChange `json:"changes"`
}

// changesOf finds tx t's package changes: as recorded, else from its
// parent's tree; cur is t's own database.
func changesOf(s *txstore.Store, t *txstore.Tx, cur txPkgs) pkgChanges {
	pc := pkgChanges{From: t.Parent, Changes: []pkgChange{}}
	switch {
	case t.Parent == 0:
		pc.Source = "none"
		return pc
	case len(t.PkgChanges) > 0:
		pc.Source, pc.Changes = "recorded", withKinds(t.PkgChanges)
		return pc
	case !cur.have:
		pc.Source, pc.Note = "unknown", fmt.Sprintf("tx %d has no package database", t.ID)
		return pc
	}
	pc.Source = "unknown"
	if _, err := s.Get(t.Parent); errors.Is(err, txstore.ErrNotFound) {
		pc.Note = "parent pruned"
		return pc
	}
	parent := readPkgs(s, t.Parent)
	switch {
	case parent.err != nil:
		pc.Note = parent.err.Error()
	case !parent.have:
		pc.Note = fmt.Sprintf("tx %d has no package database", t.Parent)
	default:
		pc.Source, pc.Changes = "computed", withKinds(pkgdb.Diff(parent.set, cur.set))
	}
	return pc
}

// summary is the changes in a few words: "3 changed from tx 1".
func (pc *pkgChanges) summary() string {
	switch pc.Source {
	case "none":
		return ""
	case "unknown":
		return fmt.Sprintf("changes from tx %d unknown: %s", pc.From, pc.Note)
	}
	return fmt.Sprintf("%d changed from tx %d", len(pc.Changes), pc.From)
}

// printPkgChanges prints one line per change, names as apt takes them on
// a system whose native architecture is native.
func printPkgChanges(w io.Writer, indent string, cs []pkgChange, native string) {
	for _, c := range cs {
		name := (&pkgdb.Package{Name: c.Name, Arch: c.Arch}).AptName(native)
		switch {
		case c.Old == "":
			fmt.Fprintf(w, "%s%-10s %s %s\n", indent, c.Kind, printable(name), printable(c.New))
		case c.New == "":
			fmt.Fprintf(w, "%s%-10s %s %s\n", indent, c.Kind, printable(name), printable(c.Old))
		default:
			fmt.Fprintf(w, "%s%-10s %s %s → %s\n", indent, c.Kind, printable(name), printable(c.Old), printable(c.New))
		}
	}
}

// brokenList names the packages present but not installed cleanly, with
// their state: "nginx (half-configured), foo (half-installed, reinstreq)".
func brokenList(set pkgdb.Set, native string) string {
	var parts []string
	for _, p := range set.Broken() {
		state := p.Status
		if p.Reinstreq {
			state += ", reinstreq"
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", p.AptName(native), state))
	}
	return strings.Join(parts, ", ")
}

// noPkgDB is the error for a tx without a package database.
func noPkgDB(id uint64) error {
	return exitError{ExitFail, fmt.Sprintf("tx %d carries no package database (its tree has no usr/%s: made before the database moved into /usr, or not a Debian tree)", id, pkgdb.StatusRel)}
}
