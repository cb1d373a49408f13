// Package txstore is the transaction store shared by bootctl (userspace) and
// initagent (PID 1 in the initramfs).
//
// On-disk layout under ROOT/.txboot (0700):
//
//	store.db            bbolt: tx records, defaults, event log
//	lock                flock(2) target: one writer at a time
//	objects/ab/<hash>…  CAS objects (raw contents, write bits stripped)
//	trees/<id>/usr/     a tx's /usr, hardlinks into objects/
//	staging/            work in progress; emptied when a writer opens
package txstore

import (
	"errors"
	"time"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/sign"
)

// State is a transaction's boot-assessment state (see package bootstate).
type State = bootstate.State

const (
	StatePending = bootstate.Pending
	StateTrying  = bootstate.Trying
	StateGood    = bootstate.Good
	StateBad     = bootstate.Bad
)

// Tx is one transaction record as stored in bbolt (JSON-encoded).
type Tx struct {
	ID       uint64    `json:"id"`
	Digest   string    `json:"digest"` // "sha256:<64 hex>" of the canonical manifest
	Parent   uint64    `json:"parent,omitempty"`
	Created  time.Time `json:"created"`
	Summary  string    `json:"summary,omitempty"`
	Kernels  []string  `json:"kernels,omitempty"` // versions with usr/lib/modules/<v>/vmlinuz
	Entries  int       `json:"entries"`           // manifest entries
	Bytes    int64     `json:"bytes"`             // sum of regular file sizes
	Manifest string    `json:"manifest"`          // CAS object (hex sha256 of the zstd bytes)
	Pinned   bool      `json:"pinned,omitempty"`
	Updated  time.Time `json:"updated"`
	// Signatures over Digest (sign.SignTx): commit --sign, or carried from
	// the repository a tx was pulled from.
	Signatures []sign.Signature `json:"signatures,omitempty"`
	// Version and Origin: the version string and repository URL of a
	// pulled tx ("" for a local commit).
	Version string `json:"version,omitempty"`
	Origin  string `json:"origin,omitempty"`
	bootstate.Boot
}

// Event is one line of the store's event log (boot attempts, fallbacks, marks).
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // e.g. "commit", "boot", "fallback", "mark-good", "mark-bad", "prune"
	TxID   uint64    `json:"tx,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

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
	ErrBusy        = errors.New("store is locked by another writer")
	ErrNoStore     = errors.New("no txboot store")
	ErrCorrupt     = errors.New("store damaged")
	ErrReadOnly    = errors.New("store opened read-only")
	ErrUnsupported = manifest.ErrUnsupported
	ErrUnsafePath  = manifest.ErrUnsafePath
	ErrVerify      = errors.New("verification failed")
	ErrDigest      = errors.New("digest mismatch")
	ErrBadManifest = manifest.ErrBad
	ErrInvalid     = errors.New("invalid request")
)
