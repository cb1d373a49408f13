// Package loader is the contract between txboot and systemd-boot that both
// initagent and bootctl rely on: the Boot Loader Specification entry file
// name grammar with boot counters, the "txboot-" prefix that maps an entry
// to its tx, and LoaderBootCountPath's format. It is pure (no I/O) so PID 1
// can import it without pulling in bootctl.
package loader

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MaxNameLen is the longest entry file name accepted (a FAT long name).
const MaxNameLen = 255

// ConfSuffix is matched case-sensitively: systemd-boot lists "*.CONF" but only
// parses boot counters in front of a literal ".conf".
const ConfSuffix = ".conf"

// DefaultPrefix starts every txboot entry's file name: "txboot-<id>…".
const DefaultPrefix = "txboot-"

// ErrBadName reports an entry file name that is not a valid BLS entry name.
var ErrBadName = errors.New("invalid boot entry file name")

// Name is an entry file name split into its ID and boot counters:
// "txboot-12+2-1.conf" is {Base: "txboot-12", Counting: true, Left: 2, Done: 1}.
// The digit widths are kept so that String reproduces the file name exactly.
type Name struct {
	Base       string // file name without counters and ".conf"
	Counting   bool   // a "+LEFT[-DONE]" suffix is present
	Left       int    // tries left (0: the entry is bad)
	Done       int    // tries done
	LeftDigits int    // digits LEFT was written with (0: minimal)
	DoneDigits int    // digits DONE was written with; 0: no "-DONE" part
}

// ValidNameChar reports whether c is in the BLS file name alphabet: [A-Za-z0-9] and "+-_.".
// The spec writes it as the class [a-zA-Z0-9+-_.]; read literally that class
// would include the range '+'..'_' (and '/'), which is clearly not meant.
func ValidNameChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c == '+', c == '-', c == '_', c == '.':
		return true
	}
	return false
}

// ParseName splits an entry file name like "txboot-12+3.conf" into its base
// and boot counters, following systemd-boot: the counters are the text after
// the last '+', "LEFT" or "LEFT-DONE" in decimal, directly before ".conf";
// anything else after the last '+' means the name has no counters.
func ParseName(filename string) (Name, error) {
	if len(filename) > MaxNameLen {
		return Name{}, fmt.Errorf("%w: %d bytes, longer than %d", ErrBadName, len(filename), MaxNameLen)
	}
	for i := 0; i < len(filename); i++ {
		if !ValidNameChar(filename[i]) {
			return Name{}, fmt.Errorf("%w: %q: character %q not allowed", ErrBadName, filename, filename[i])
		}
	}
	stem, ok := strings.CutSuffix(filename, ConfSuffix)
	if !ok {
		return Name{}, fmt.Errorf("%w: %q: no %s suffix", ErrBadName, filename, ConfSuffix)
	}
	// Hidden files are skipped by systemd-boot (and are our temp files).
	if stem == "" || stem[0] == '.' {
		return Name{}, fmt.Errorf("%w: %q: empty or hidden", ErrBadName, filename)
	}
	n := Name{Base: stem}
	plus := strings.LastIndexByte(stem, '+')
	if plus < 0 {
		return n, nil
	}
	left, rest, ok := cutNumber(stem[plus+1:])
	if !ok {
		return n, nil
	}
	c := Name{Base: stem[:plus], Counting: true, Left: left, LeftDigits: len(stem[plus+1:]) - len(rest)}
	if rest != "" {
		if rest[0] != '-' {
			return n, nil
		}
		done, tail, ok := cutNumber(rest[1:])
		if !ok || tail != "" {
			return n, nil
		}
		c.Done, c.DoneDigits = done, len(rest)-1
	}
	if c.Base == "" {
		return Name{}, fmt.Errorf("%w: %q: nothing before the boot counter", ErrBadName, filename)
	}
	return c, nil
}

// cutNumber parses leading decimal digits. Values above INT_MAX are not
// counters, as in systemd-boot.
func cutNumber(s string) (v int, rest string, ok bool) {
	i := 0
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, s, false
	}
	u, err := strconv.ParseUint(s[:i], 10, 64)
	if err != nil || u > math.MaxInt32 {
		return 0, s, false
	}
	return int(u), s[i:], true
}

// String is the file name: Base, counters if Counting, ".conf".
func (n Name) String() string {
	if !n.Counting {
		return n.Base + ConfSuffix
	}
	s := n.Base + "+" + fmt.Sprintf("%0*d", n.LeftDigits, n.Left)
	if n.DoneDigits > 0 {
		s += "-" + fmt.Sprintf("%0*d", n.DoneDigits, n.Done)
	}
	return s + ConfSuffix
}

// Plain is the name without boot counters: what a blessed (good) entry is
// called.
func (n Name) Plain() Name { return Name{Base: n.Base} }

// Bad reports whether the bootloader has run out of tries for this entry.
func (n Name) Bad() bool { return n.Counting && n.Left == 0 }

// ID is the entry identifier recent systemd-boot (v258+) uses for
// LoaderEntries, LoaderEntrySelected and the `default` pattern: the
// lower-cased file name without counters. Older systemd-boot keeps the
// counters; EntryPattern matches both.
func (n Name) ID() string { return strings.ToLower(n.Base + ConfSuffix) }

// TxID returns the transaction ID encoded in a txboot entry name
// (prefix + canonical decimal ID > 0), or false when the name is not one.
func (n Name) TxID(prefix string) (uint64, bool) {
	s, ok := strings.CutPrefix(n.Base, prefix)
	if !ok || s == "" || s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return id, true
}

// EntryBase is the file name base (no counters, no ".conf") for a tx.
func EntryBase(prefix string, id uint64) string {
	return prefix + strconv.FormatUint(id, 10)
}

// EntryPattern is a systemd-boot ID glob selecting tx id's entry whichever
// way systemd-boot forms entry IDs: before v258 the ID is the file name with
// its counters ("txboot-12+2-1.conf"), from v258 without ("txboot-12.conf").
// "[.+]" after the ID keeps "txboot-12" from also matching "txboot-120".
// systemd-boot lower-cases both sides, so do we. Use it for a one-shot
// choice (LoaderEntryOneShot), not as loader.conf's default: see MenuPattern.
func EntryPattern(prefix string, id uint64) string {
	return strings.ToLower(EntryBase(prefix, id)) + "[.+]*"
}

// MenuPattern is loader.conf's `default`: a glob matching every txboot
// entry. systemd-boot boots the first entry in menu order that matches, and
// puts entries with no tries left at the end, so a default that has failed
// all its tries falls through to the next-best entry. A pattern naming one
// entry would keep booting it even after it went bad (systemd issue #31215).
// Sync orders the entries with sort-key (see Sync).
func MenuPattern(prefix string) string {
	return strings.ToLower(prefix) + "[1-9]*"
}
