package etcstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/layout"
	"golang.org/x/sys/unix"
)

// Names in the store directory while a switch runs. The new /etc is built
// at switchNew and exchanged with ROOT/etc, so switchNew then holds the
// old one; switchIntent says which exchange was meant, so a later Switch
// can tell the two apart after a crash.
const (
	switchNew    = "etc-switch.new"  // the /etc being built; after the exchange, the old one
	switchOld    = "etc-switch.old"  // the old /etc on its way to trees/<owner>/etc/last
	switchGone   = "etc-switch.gone" // an older last/ being replaced
	switchIntent = "etc-switch.json" // {"from": owner, "to": id} while an exchange may be under way
)

// Failpoints, in order along a switch.
var (
	fpHalfBuilt  = failpoint.New("etc-switch/half-built")  // new /etc written, no marker yet
	fpBuilt      = failpoint.New("etc-switch/built")       // new /etc complete with its marker
	fpIntent     = failpoint.New("etc-switch/intent")      // intent durable, not exchanged
	fpExchanged  = failpoint.New("etc-switch/exchanged")   // ROOT/etc is the new one
	fpRenamedOld = failpoint.New("etc-switch/renamed-old") // the old one at switchOld
	fpAside      = failpoint.New("etc-switch/aside")       // the owner's older last/ at switchGone
	fpSaved      = failpoint.New("etc-switch/saved")       // the old one is the owner's last/
)

// Action is what Switch did to /etc.
type Action string

// Actions.
const (
	Adopted  Action = "adopted"  // /etc had no owner: it is now the tx's as it is
	Kept     Action = "kept"     // /etc was the tx's already
	Restored Action = "restored" // the /etc the tx last ran with (its last/)
	Merged   Action = "merged"   // 3-way merge of its base/, the live /etc and its new/
	Copied   Action = "copied"   // a copy of the live /etc (a committed or pulled tx)
)

// SwitchResult says what Switch did, for the boot log.
type SwitchResult struct {
	Tx       uint64 `json:"tx"`
	Action   Action `json:"action"`
	OldOwner uint64 `json:"old_owner,omitempty"` // the tx whose /etc was live before (0: none)
	// Saved: the old /etc became trees/<OldOwner>/etc/last; false when
	// that tree is gone (pruned) or there was no owner, and it was removed.
	Saved     bool       `json:"saved,omitempty"`
	Conflicts []Conflict `json:"conflicts,omitempty"`
	// Recovered: what was found of a switch a crash interrupted, and done.
	Recovered []string `json:"recovered,omitempty"`
	// Warning: something went wrong after the new /etc was in place (it
	// is live; the next Switch finishes the rest), or the marker was
	// unreadable and treated as none.
	Warning string `json:"warning,omitempty"`
}

// String is one line for the boot log.
func (r *SwitchResult) String() string {
	var b strings.Builder
	switch r.Action {
	case Adopted:
		fmt.Fprintf(&b, "/etc adopted as tx %d's (it named no owner)", r.Tx)
	case Kept:
		fmt.Fprintf(&b, "/etc is tx %d's already", r.Tx)
	case Restored:
		fmt.Fprintf(&b, "tx %d's /etc restored (the one it last ran with)", r.Tx)
	case Merged:
		fmt.Fprintf(&b, "tx %d's /etc merged (its new defaults onto the live /etc)", r.Tx)
		if n := len(r.Conflicts); n > 0 {
			fmt.Fprintf(&b, ", %d conflict(s): yours kept, the tx's versions beside as *%s (bootctl status lists them)", n, BesideSuffix)
		}
	case Copied:
		fmt.Fprintf(&b, "tx %d's /etc copied from the live one", r.Tx)
	}
	switch {
	case r.OldOwner != 0 && r.Saved:
		fmt.Fprintf(&b, "; tx %d's saved for its next boot", r.OldOwner)
	case r.OldOwner != 0 && r.Action != Kept && r.Action != Adopted:
		fmt.Fprintf(&b, "; tx %d's dropped (its tree is gone)", r.OldOwner)
	}
	if len(r.Recovered) > 0 {
		fmt.Fprintf(&b, "; after a crash: %s", strings.Join(r.Recovered, ", "))
	}
	if r.Warning != "" {
		fmt.Fprintf(&b, "; warning: %s", r.Warning)
	}
	return b.String()
}

// intent is switchIntent's content.
type intent struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
}

// source says where tx id's /etc comes from when it is not the owner:
// its last/, else a merge when a run made it (new/), else a copy.
func source(root string, id uint64) (Action, error) {
	dir := txEtc(root, id)
	for _, c := range []struct {
		name string
		a    Action
	}{{LastDir, Restored}, {NewDir, Merged}} {
		ok, err := isDir(filepath.Join(dir, c.name))
		if err != nil {
			return "", fmt.Errorf("%s/%s: %w", dir, c.name, err)
		}
		if ok {
			return c.a, nil
		}
	}
	return Copied, nil
}

// Switch gives the live ROOT/etc to tx id, at boot (the root mounted
// read-write, nothing else running):
//
//   - no owner named: the live /etc is adopted (marker written), unless
//     a run made the tx (its new/), whose changes are merged onto it;
//   - owner == id: nothing;
//   - else the new /etc is built in STORE/etc-switch.new (from the tx's
//     last/, else a merge, else a copy of the live one), marked, swapped
//     with ROOT/etc by renameat2(RENAME_EXCHANGE), and the old one moved
//     to trees/<owner>/etc/last (removed if that tree is gone).
//
// Leftovers of an interrupted switch are dealt with first. At every
// instant ROOT/etc is a whole /etc whose marker names its owner. On an
// error /etc is as it was (ErrCrossDevice: ROOT/etc and the store are on
// different filesystems); a problem after the exchange is a Warning.
func Switch(root string, id uint64) (*SwitchResult, error) {
	if id == 0 {
		return nil, errors.New("etc switch: tx 0")
	}
	etc := liveEtc(root)
	if ok, err := isDir(etc); err != nil || !ok {
		return nil, fmt.Errorf("%w: %s (%v)", ErrNoEtc, etc, err)
	}
	res := &SwitchResult{Tx: id}
	notes, err := recoverSwitch(root)
	res.Recovered = notes
	if err != nil {
		return res, fmt.Errorf("finish an interrupted /etc switch: %w", err)
	}
	owner, ok, err := Owner(root)
	if errors.Is(err, ErrBadMarker) {
		res.Warning = err.Error() + " (treated as naming no owner)"
		ok, err = false, nil
	}
	if err != nil {
		return res, err
	}
	if ok && owner == id {
		res.Action = Kept
		return res, nil
	}
	act, err := source(root, id)
	if err != nil {
		return res, err
	}
	if !ok && act != Merged {
		res.Action = Adopted
		return res, writeMarker(etc, id)
	}
	res.Action, res.OldOwner = act, owner
	return res, swap(root, id, owner, res)
}

// swap builds tx id's /etc, exchanges it with the live one and saves the
// old one as owner's last/ (owner 0: none, dropped).
func swap(root string, id, owner uint64, res *SwitchResult) error {
	store := storeDir(root)
	staging := filepath.Join(store, switchNew)
	etc := liveEtc(root)
	if err := buildEtc(root, id, staging, res); err != nil {
		layout.RemoveTree(staging)
		return err
	}
	if err := writeIntent(store, intent{From: owner, To: id}); err != nil {
		layout.RemoveTree(staging)
		return err
	}
	if err := fpIntent.Inject(); err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, etc, unix.AT_FDCWD, staging, unix.RENAME_EXCHANGE); err != nil {
		layout.RemoveTree(staging)
		os.Remove(filepath.Join(store, switchIntent))
		if err == unix.EXDEV {
			return fmt.Errorf("%w: %s and %s: /etc cannot be swapped atomically", ErrCrossDevice, etc, store)
		}
		return fmt.Errorf("swap %s with %s: %w", staging, etc, err)
	}
	// From here /etc is the new one: a failure is a warning, and the
	// next Switch's recovery finishes the rest.
	if err := afterExchange(root, owner, res); err != nil {
		res.Warning = err.Error() + "; the next boot finishes it"
	}
	return nil
}

// buildEtc makes staging tx id's /etc and marks it.
func buildEtc(root string, id uint64, staging string, res *SwitchResult) error {
	dir := txEtc(root, id)
	var err error
	switch res.Action {
	case Restored:
		err = Copy(filepath.Join(dir, LastDir), staging)
	case Copied:
		err = Copy(liveEtc(root), staging)
	case Merged:
		res.Conflicts, err = Merge3(filepath.Join(dir, BaseDir), liveEtc(root), filepath.Join(dir, NewDir), staging)
		if err == nil {
			err = writeConflicts(root, id, res.Conflicts)
		}
	}
	if err != nil {
		return fmt.Errorf("build tx %d's /etc: %w", id, err)
	}
	if err := fpHalfBuilt.Inject(); err != nil {
		return err
	}
	if err := writeMarker(staging, id); err != nil {
		return err
	}
	return fpBuilt.Inject()
}

func afterExchange(root string, owner uint64, res *SwitchResult) error {
	store := storeDir(root)
	if err := fpExchanged.Inject(); err != nil {
		return err
	}
	for _, d := range []string{root, store} {
		if err := fsx.SyncDir(d); err != nil {
			return err
		}
	}
	old := filepath.Join(store, switchOld)
	if err := os.Rename(filepath.Join(store, switchNew), old); err != nil {
		return fmt.Errorf("move the old /etc aside: %w", err)
	}
	if err := fsx.SyncDir(store); err != nil {
		return err
	}
	if err := fpRenamedOld.Inject(); err != nil {
		return err
	}
	if err := removeIntent(store); err != nil {
		return err
	}
	saved, err := saveOld(root, owner, old)
	res.Saved = saved
	return err
}

// saveOld moves the old /etc at old to trees/<owner>/etc/last, replacing
// an older one; without that tree (owner 0, or pruned) it is removed.
func saveOld(root string, owner uint64, old string) (bool, error) {
	store := storeDir(root)
	tree := filepath.Join(store, layout.TreesDir, strconv.FormatUint(owner, 10))
	ok, err := isDir(tree)
	if err != nil {
		return false, err
	}
	if owner == 0 || !ok {
		return false, layout.RemoveTree(old)
	}
	dir := filepath.Join(tree, "etc")
	if err := os.Mkdir(dir, 0o755); err == nil {
		if err := fsx.SyncDir(tree); err != nil {
			return false, err
		}
	} else if !errors.Is(err, os.ErrExist) {
		return false, fmt.Errorf("save the old /etc: %w", err)
	}
	last := filepath.Join(dir, LastDir)
	gone := filepath.Join(store, switchGone)
	if _, err := os.Lstat(last); err == nil {
		if err := os.Rename(last, gone); err != nil {
			return false, fmt.Errorf("save the old /etc: %w", err)
		}
		if err := fpAside.Inject(); err != nil {
			return false, err
		}
	}
	if err := os.Rename(old, last); err != nil {
		return false, fmt.Errorf("save the old /etc as %s: %w", last, err)
	}
	for _, d := range []string{dir, store} {
		if err := fsx.SyncDir(d); err != nil {
			return false, err
		}
	}
	if err := fpSaved.Inject(); err != nil {
		return false, err
	}
	return true, layout.RemoveTree(gone)
}

// recoverSwitch finishes what a crash left of a switch: an older last/
// set aside is removed, an old /etc swapped out is saved as its owner's
// last/, and an unfinished build is removed. It says what it did.
func recoverSwitch(root string) ([]string, error) {
	store := storeDir(root)
	if ok, err := isDir(store); err != nil || !ok {
		return nil, err // no store: nothing to recover
	}
	var notes []string
	gone := filepath.Join(store, switchGone)
	if _, err := os.Lstat(gone); err == nil {
		if err := layout.RemoveTree(gone); err != nil {
			return notes, err
		}
	}
	old := filepath.Join(store, switchOld)
	n, err := recoverOld(root, old)
	if n != "" {
		notes = append(notes, n)
	}
	if err != nil {
		return notes, err
	}
	staging := filepath.Join(store, switchNew)
	if _, err := os.Lstat(staging); err == nil {
		in := readIntent(store)
		live, ok, _ := Owner(root)
		if in != nil && ok && live == in.To {
			// The exchange happened: staging holds the old /etc.
			if err := os.Rename(staging, old); err != nil {
				return notes, fmt.Errorf("move the old /etc aside: %w", err)
			}
			if err := fsx.SyncDir(store); err != nil {
				return notes, err
			}
			n, err := recoverOld(root, old)
			notes = append(notes, n)
			if err != nil {
				return notes, err
			}
		} else {
			if err := layout.RemoveTree(staging); err != nil {
				return notes, err
			}
			notes = append(notes, "removed an unfinished /etc build")
		}
	}
	return notes, removeIntent(store)
}

// recoverOld saves an old /etc left at old (if any) as its marker's
// last/, or removes it.
func recoverOld(root, old string) (string, error) {
	if _, err := os.Lstat(old); err != nil {
		return "", nil
	}
	x, _, _ := readMarker(old) // unreadable: 0, removed
	saved, err := saveOld(root, x, old)
	switch {
	case err != nil:
		return "", err
	case saved:
		return fmt.Sprintf("saved tx %d's old /etc", x), nil
	case x != 0:
		return fmt.Sprintf("dropped tx %d's old /etc (its tree is gone)", x), nil
	}
	return "dropped an old /etc that named no owner", nil
}

func writeIntent(store string, in intent) error {
	data, _ := json.Marshal(in)
	return fsx.WriteFile(store, switchIntent, append(data, '\n'), 0o600)
}

// readIntent reads switchIntent; nil when missing or unreadable.
func readIntent(store string) *intent {
	f, err := os.OpenFile(filepath.Join(store, switchIntent), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	buf := make([]byte, 256)
	n, _ := readFull(int(f.Fd()), buf)
	var in intent
	if n == len(buf) || json.Unmarshal(buf[:n], &in) != nil || in.To == 0 {
		return nil
	}
	return &in
}

func removeIntent(store string) error {
	err := os.Remove(filepath.Join(store, switchIntent))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", switchIntent, err)
	}
	return fsx.SyncDir(store)
}

// View returns the /etc tx id would boot with now, as Switch would make
// it, without changing anything live: the live ROOT/etc itself when id
// owns it (or it names no owner and id has no new/); id's last/ when it
// has one; a merge of its base/, the live /etc and its new/ built at dst
// (which must not exist; the caller removes it) when a run made it; else
// the live ROOT/etc. Paths returned other than dst are not to be written.
func View(root string, id uint64, dst string) (string, error) {
	owner, ok, err := Owner(root)
	if errors.Is(err, ErrBadMarker) {
		ok, err = false, nil
	}
	if err != nil {
		return "", err
	}
	live := liveEtc(root)
	if ok && owner == id {
		return live, nil
	}
	act, err := source(root, id)
	if err != nil {
		return "", err
	}
	dir := txEtc(root, id)
	switch {
	case !ok && act != Merged:
		return live, nil
	case act == Restored:
		return filepath.Join(dir, LastDir), nil
	case act == Merged:
		if _, err := Merge3(filepath.Join(dir, BaseDir), live, filepath.Join(dir, NewDir), dst); err != nil {
			return "", err
		}
		return dst, nil
	}
	return live, nil
}
