package bls

import "github.com/txboot/txboot/txstore/loader"

// The entry name grammar is shared with initagent and lives in
// txstore/loader; these keep bls's API for its callers.

// Name is an entry file name split into its ID and boot counters.
type Name = loader.Name

// MaxNameLen is the longest entry file name accepted (a FAT long name).
const MaxNameLen = loader.MaxNameLen

// confSuffix: see loader.ConfSuffix.
const confSuffix = loader.ConfSuffix

// ErrBadName reports an entry file name that is not a valid BLS entry name.
var ErrBadName = loader.ErrBadName

// ParseName is loader.ParseName.
func ParseName(filename string) (Name, error) { return loader.ParseName(filename) }

// EntryBase is loader.EntryBase.
func EntryBase(prefix string, id uint64) string { return loader.EntryBase(prefix, id) }

// EntryPattern is loader.EntryPattern.
func EntryPattern(prefix string, id uint64) string { return loader.EntryPattern(prefix, id) }

// MenuPattern is loader.MenuPattern.
func MenuPattern(prefix string) string { return loader.MenuPattern(prefix) }

func validNameChar(c byte) bool { return loader.ValidNameChar(c) }
