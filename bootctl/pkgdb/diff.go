package pkgdb

import (
	"slices"

	"github.com/txboot/txboot/txstore/records"
)

// Diff lists the packages whose version differs between the databases
// from and to, by name:arch and in that order: Old is "" for a package
// only to has (installed), New is "" for one only from has (removed).
// Every present package counts, broken ones included; a package that went
// from installed to unpacked at the same version is no change here
// (Set.Broken tells it).
func Diff(from, to Set) []records.PkgChange {
	a, b := sorted(from), sorted(to)
	out := []records.PkgChange{}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		c := 0
		switch {
		case i == len(a):
			c = 1
		case j == len(b):
			c = -1
		default:
			c = comparePkg(a[i], b[j])
		}
		switch {
		case c < 0:
			out = append(out, records.PkgChange{Name: a[i].Name, Arch: a[i].Arch, Old: a[i].Version})
			i++
		case c > 0:
			out = append(out, records.PkgChange{Name: b[j].Name, Arch: b[j].Arch, New: b[j].Version})
			j++
		default:
			if a[i].Version != b[j].Version {
				out = append(out, records.PkgChange{Name: b[j].Name, Arch: b[j].Arch, Old: a[i].Version, New: b[j].Version})
			}
			i, j = i+1, j+1
		}
	}
	return out
}

// sorted returns s in Set order (a Set from Parse already is).
func sorted(s Set) Set {
	if slices.IsSortedFunc(s, comparePkg) {
		return s
	}
	s = slices.Clone(s)
	slices.SortFunc(s, comparePkg)
	return s
}

// ChangeKind is how a change reads: "installed", "removed", "upgraded" or
// "downgraded" (by CompareVersions; "changed" if the versions compare
// equal, as "1.0" and "1.00" do).
func ChangeKind(c records.PkgChange) string {
	switch {
	case c.Old == "":
		return "installed"
	case c.New == "":
		return "removed"
	}
	switch n := CompareVersions(c.Old, c.New); {
	case n < 0:
		return "upgraded"
	case n > 0:
		return "downgraded"
	}
	return "changed"
}
