// Package txstore is the transaction store shared by bootctl (userspace) and
// initagent (PID 1 in the initramfs).
//
// On-disk layout under ROOT/.txboot (0700):
//
//	store.db            bbolt: tx records, defaults, event log
//	lock                flock(2) target: one writer at a time
//	objects/ab/<hash>…  CAS objects (raw contents, write bits stripped)
//	trees/<id>/usr/     a tx's /usr, hardlinks into objects/
//	trees/<id>/etc/     the /etc state a run left with the tx (EtcDir):
//	                    removed with the tree, in no digest
//	staging/            work in progress; emptied when a writer opens
package txstore

import (
	"errors"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/internal/dbio"
	"github.com/txboot/txboot/txstore/internal/manifestio"
	"github.com/txboot/txboot/txstore/internal/storeerr"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/records"
)

// State is a transaction's boot-assessment state (see package bootstate).
type State = bootstate.State

const (
	StatePending = bootstate.Pending
	StateTrying  = bootstate.Trying
	StateGood    = bootstate.Good
	StateBad     = bootstate.Bad
)

// Tx is one transaction record as stored in bbolt (see package records).
type Tx = records.Tx

// Event is one line of the store's event log (see package records).
type Event = records.Event

// PkgChange is one package a tx changed against its parent (see package
// records).
type PkgChange = records.PkgChange

// VerifyMode selects how deep Verify looks.
type VerifyMode int

const (
	VerifyOff  VerifyMode = iota
	VerifyFast            // structure, types, modes, sizes, hardlink identity; reads no content
	VerifyFull            // fast + re-hash every object
)

// Problem is one thing Verify found wrong, with the path involved.
type Problem = blit.Problem

// Sentinel errors callers check with errors.Is.
var (
	ErrNotFound    = errors.New("no such transaction")
	ErrBusy        = dbio.ErrBusy
	ErrNoStore     = dbio.ErrNoStore
	ErrCorrupt     = records.ErrCorrupt
	ErrReadOnly    = errors.New("store opened read-only")
	ErrUnsupported = manifest.ErrUnsupported
	ErrUnsafePath  = manifest.ErrUnsafePath
	ErrVerify      = errors.New("verification failed")
	ErrDigest      = errors.New("digest mismatch")
	ErrBadManifest = manifest.ErrBad
	ErrInvalid     = storeerr.ErrInvalid
	// ErrManifestTooLarge: a manifest object decodes (or declares it
	// decodes) to more bytes or lines than a manifest it could be: more
	// than manifest.MaxSize, manifest.MaxEntries, or what the tx's entry
	// count allows. Also an ErrBadManifest.
	ErrManifestTooLarge = manifestio.ErrTooLarge
)
