// Package storeerr holds the store's sentinel errors that its internal
// packages return too; package txstore exports each under the same name.
package storeerr

import "errors"

var (
	ErrBusy    = errors.New("store is locked by another writer")
	ErrNoStore = errors.New("no txboot store")
	ErrCorrupt = errors.New("store damaged")
	ErrInvalid = errors.New("invalid request")
)
