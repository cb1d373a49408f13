package cli

import (
	"fmt"
	"io"

	"github.com/txboot/txboot/txstore"
)

// statusPkgs is status's word on the packages of the booted tx (the
// default when txboot booted nothing): how many changed from its parent.
type statusPkgs struct {
	Tx       uint64     `json:"tx"`
	Packages int        `json:"packages"`         // present in its database
	Broken   int        `json:"broken,omitempty"` // present, not installed cleanly
	Changes  pkgChanges `json:"changes"`
	Error    string     `json:"error,omitempty"` // the database could not be read
}

// statusPackages is nil when there is no such tx or it has no package
// database (a tree that is not Debian's says nothing here).
func statusPackages(s *txstore.Store, booted, def uint64) *statusPkgs {
	id := booted
	t, err := s.Get(id)
	if id == 0 || err != nil {
		if t, err = s.Get(def); def == 0 || err != nil {
			return nil
		}
	}
	cur := readPkgs(s, t.ID)
	switch {
	case cur.err != nil:
		return &statusPkgs{Tx: t.ID, Error: cur.err.Error()}
	case !cur.have:
		return nil
	}
	return &statusPkgs{Tx: t.ID, Packages: len(cur.set), Broken: len(cur.set.Broken()), Changes: changesOf(s, t, cur)}
}

// printStatusPackages prints status's one line on packages.
func printStatusPackages(w io.Writer, p *statusPkgs) {
	if p == nil {
		return
	}
	if p.Error != "" {
		fmt.Fprintf(w, "Packages: tx %d's database is unreadable: %s\n", p.Tx, printable(p.Error))
		return
	}
	line := p.Changes.summary()
	if line == "" {
		line = fmt.Sprintf("%d in tx %d", p.Packages, p.Tx)
	}
	if p.Broken > 0 {
		line += fmt.Sprintf("; %d not installed cleanly", p.Broken)
	}
	fmt.Fprintf(w, "Packages: %s (bootctl show %d)\n", printable(line), p.Tx)
}
