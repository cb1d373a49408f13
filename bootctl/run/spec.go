// Package run is `bootctl run` and `bootctl shell`: a command changes a
// working copy of a tx's /usr and /etc in a private mount and PID
// namespace, chrooted into the system root, and what it changed becomes a
// new tx. Nothing on the live system changes until that tx boots.
//
// Two processes do the work. Run (in bootctl) prepares the working copy
// under the store's staging directory and starts bootctl again as the
// child (ChildArg), in new mount, PID, UTS and IPC namespaces. The child
// mounts the view, runs the command chrooted, kills what the command left
// running, moves a new kernel into /usr, copies the resulting /etc out and
// reports. Run then commits the overlay's upper directory as a layer over
// the source tx (txstore.CommitLayer).
package run

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ChildArg is the first argument bootctl's main gives the child.
const ChildArg = "__txboot-run-child"

// specEnv carries the child's Spec (JSON) from Run to Child.
const specEnv = "TXBOOT_RUN_SPEC"

// Spec is everything the child needs; every path is absolute on the host.
type Spec struct {
	Root     string // the system root ("/" when live)
	Mnt      string // where the child builds the chroot
	StoreDir string // hidden from the command
	UsrLower string // trees/<from>/usr
	UsrUpper string
	UsrWork  string
	EtcLower string // the /etc the command starts from
	EtcUpper string
	EtcWork  string
	EtcOut   string // the child copies the resulting /etc here
	Status   string // the child's report (childStatus, JSON)
	Argv     []string
	Env      []string
}

// childStatus is what the child reports: the command's exit code, or
// where setup or the aftermath failed.
type childStatus struct {
	Stage string `json:"stage"` // "setup", "command", "after", "done"
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
	// Kernels moved from the private /boot into usr/lib/modules/V/.
	Kernels []string `json:"kernels,omitempty"`
	// Dropped: usr/lib/modules/V directories removed because their
	// kernel package was removed (only our vmlinuz was left).
	Dropped []string `json:"dropped,omitempty"`
}

// Errors for errors.Is.
var (
	// ErrSetup: the working copy or the namespace could not be set up;
	// the command did not run and nothing was recorded.
	ErrSetup = errors.New("run: setting up the working copy failed")
	// ErrNoPkgDB: the system keeps dpkg's database in /var/lib/dpkg, so
	// it would not follow its tx.
	ErrNoPkgDB = errors.New("run: the package database is not part of /usr")
)

func readStatus(path string) (*childStatus, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: the child left no report: %w", ErrSetup, err)
	}
	var st childStatus
	if len(b) > 1<<20 || json.Unmarshal(b, &st) != nil {
		return nil, fmt.Errorf("%w: unreadable child report %s", ErrSetup, path)
	}
	return &st, nil
}

// writeStatus is best effort: the parent treats a missing report as a
// setup failure.
func writeStatus(path string, st *childStatus) {
	b, _ := json.Marshal(st)
	tmp := filepath.Join(filepath.Dir(path), ".status.tmp")
	if os.WriteFile(tmp, b, 0o600) == nil {
		os.Rename(tmp, path)
	}
}
