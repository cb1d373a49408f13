// Package pkgdb reads a tx's package database: dpkg's status file, which
// txboot keeps in /usr (lib/sysimage/dpkg/status) so that it travels with
// the tree it describes.
//
// Only what identifies a package is read: Package, Architecture, Version
// and Status. A stanza's Status is "want flag state" (dpkg(1)); by its
// state word a package is
//
//   - absent: not-installed, config-files (only conffiles are left, in
//     /etc, which /usr does not carry). Such stanzas are not in a Set.
//   - installed: installed, with the flag ok. This is the exact set that
//     AptArgs prints for reproducing the tx elsewhere.
//   - broken: half-installed, unpacked, half-configured, triggers-awaited,
//     triggers-pending, or any state with the flag reinstreq. Its files
//     are (partly) in /usr, so it is in the Set and in Diff, but not in
//     what AptArgs prints; bootctl lists it apart.
//
// The parser follows dpkg's (lib/dpkg/parse.c, checked against
// dpkg-query 1.22) where a status file can differ from other deb822
// files: field names are matched without regard to ASCII case;
// continuation lines start with a space or a tab, and a blank one is an
// error; a line starting with '#' is an error, not a comment (dpkg reads
// it as a field name without a colon and refuses the file); so is a file
// whose last line has no newline (cut short). Everything read is bounded
// (MaxSize, MaxLine, MaxStanzas) and checked: a name, version or
// architecture that dpkg would not write is an error, so what AptArgs
// prints is always a plain apt argument.
package pkgdb

import (
	"cmp"
	"errors"
	"slices"
	"strings"
)

// StatusRel is dpkg's status file relative to a tx's usr directory
// (dpkg's admindir is /usr/lib/sysimage/dpkg on a txboot system).
const StatusRel = "lib/sysimage/dpkg/status"

// UpdatesRel is dpkg's journal directory: records of a dpkg run that has
// not yet merged them into the status file (dpkg was interrupted).
const UpdatesRel = "lib/sysimage/dpkg/updates"

// Bounds on a status file. Debian 13 with a desktop has some 2,000
// packages and a status file of about 3 MiB; the largest archive has
// about 65,000 binary packages.
const (
	MaxSize    = 64 << 20 // bytes in the file
	MaxLine    = 1 << 20  // bytes in one line, newline excluded
	MaxStanzas = 200_000  // stanzas, absent packages included
)

// Errors callers check with errors.Is.
var (
	// ErrBad: the status file is not one dpkg would have written.
	ErrBad = errors.New("malformed dpkg status")
	// ErrTooLarge: over MaxSize, MaxLine or MaxStanzas; also an ErrBad.
	ErrTooLarge = errors.New("dpkg status over its bounds")
	// ErrNotRegular: the status file is a symlink or not a regular file.
	ErrNotRegular = errors.New("not a regular file")
	// ErrPending: dpkg's journal (updates/) holds records not yet merged
	// into the status file, so the file alone does not tell the truth.
	ErrPending = errors.New("dpkg's journal has unmerged records")
)

// State words of dpkg's Status field.
const (
	StateInstalled = "installed"
)

// states maps each state word dpkg writes to whether the package's files
// are (at least partly) present.
var states = map[string]bool{
	"not-installed":    false,
	"config-files":     false,
	"half-installed":   true,
	"unpacked":         true,
	"half-configured":  true,
	"triggers-awaited": true,
	"triggers-pending": true,
	"installed":        true,
}

var wants = map[string]bool{"unknown": true, "install": true, "hold": true, "deinstall": true, "purge": true}

// Package is one present package.
type Package struct {
	Name    string `json:"name"`
	Arch    string `json:"arch"` // "all" for architecture-independent packages
	Version string `json:"version"`
	// Status is the state word of dpkg's Status field ("installed",
	// "unpacked", …).
	Status string `json:"status"`
	// Reinstreq: dpkg's flag "reinstreq" (a failed unpack or removal;
	// the package must be reinstalled).
	Reinstreq bool `json:"reinstreq,omitempty"`
}

// Key is "name:arch", the identity of a package in a multiarch database.
func (p *Package) Key() string { return p.Name + ":" + p.Arch }

// Broken reports whether the package is present but not installed cleanly.
func (p *Package) Broken() bool { return p.Status != StateInstalled || p.Reinstreq }

// comparePkg orders packages by name, then architecture.
func comparePkg(a, b Package) int {
	return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Arch, b.Arch))
}

// Set is the present packages of one database, sorted by name, then
// architecture, each name:arch once.
type Set []Package

// Installed is the packages installed cleanly: the exact set.
func (s Set) Installed() Set {
	return s.filter(func(p *Package) bool { return !p.Broken() })
}

// Broken is the packages present but not installed cleanly.
func (s Set) Broken() Set {
	return s.filter(func(p *Package) bool { return p.Broken() })
}

func (s Set) filter(keep func(*Package) bool) Set {
	out := Set{}
	for i := range s {
		if keep(&s[i]) {
			out = append(out, s[i])
		}
	}
	return out
}

// Find returns the package name:arch.
func (s Set) Find(name, arch string) (Package, bool) {
	i, ok := slices.BinarySearchFunc(s, Package{Name: name, Arch: arch}, comparePkg)
	if !ok {
		return Package{}, false
	}
	return s[i], true
}

// Native is the database's native architecture: that of the dpkg package
// (dpkg's own, as dpkg --print-architecture says), "" without one.
func (s Set) Native() string {
	for i := range s {
		if s[i].Name == "dpkg" && s[i].Arch != "all" {
			return s[i].Arch
		}
	}
	return ""
}

// AptArgs is the installed packages as apt-get install arguments:
// "name=version", and "name:arch=version" for an architecture that is
// neither native nor "all" (every architecture but "all" when native is
// ""). Broken packages are left out: see Broken.
func (s Set) AptArgs(native string) []string {
	out := []string{}
	for _, p := range s.Installed() {
		out = append(out, p.AptName(native)+"="+p.Version)
	}
	return out
}

// AptName is the package's name as apt takes it: with ":arch" only for a
// foreign architecture.
func (p *Package) AptName(native string) string {
	if p.Arch == "all" || (native != "" && p.Arch == native) {
		return p.Name
	}
	return p.Name + ":" + p.Arch
}
