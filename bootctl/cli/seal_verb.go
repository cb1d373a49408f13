package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/verity"
)

// sealTx is Store.Seal; tests replace it for the path this host's kernel
// (no fs-verity) cannot take.
var sealTx = func(s *txstore.Store, id uint64) (*txstore.SealResult, error) { return s.Seal(id) }

// sealOut is one tx's line of seal (--json as is).
type sealOut struct {
	ID      uint64 `json:"id"`
	Sealed  bool   `json:"sealed"`
	Image   string `json:"image,omitempty"`
	Built   bool   `json:"image_built"`
	Enabled int    `json:"enabled"` // files fs-verity was turned on for now
	Already int    `json:"already"` // files that had it
	// Note: why not sealed (the store's SealNote, with what to run);
	// Unsupported: because the filesystem or kernel has no fs-verity.
	Note        string `json:"note,omitempty"`
	Unsupported bool   `json:"unsupported,omitempty"`
	// BootsUnsealed: sealed, but the tx still boots unsealed (its kernel
	// is too old), txstore.BootMode's reason.
	BootsUnsealed string `json:"boots_unsealed,omitempty"`
	Error         string `json:"error,omitempty"`
}

func sealVerb() *verb {
	return &verb{name: "seal", args: "[ID…]", help: "turn fs-verity on for txs' objects and images so they boot sealed (all txs without ID)",
		pos: posArgs{max: -1}, store: storeWrite,
		check: func(e *env, args []string) error {
			for _, a := range args {
				if _, err := parseID(a); err != nil {
					return err
				}
			}
			return nil
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			ids, err := sealIDs(s, args)
			if err != nil {
				return err
			}
			outs, changed := sealAll(e, s, ids)
			if e.json {
				if err := e.printJSON(outs); err != nil {
					return err
				}
			} else {
				printSeal(e.stdout, outs)
			}
			return sealFinish(e, s, outs, changed)
		}}
}

// sealIDs is the txs named (each must exist: nothing is sealed for a
// typo), or every tx.
func sealIDs(s *txstore.Store, args []string) ([]uint64, error) {
	if len(args) == 0 {
		return verifyIDs(s, nil)
	}
	ids := make([]uint64, 0, len(args))
	for _, a := range args {
		id, _ := parseID(a) // checked by check
		if _, err := s.Get(id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// sealAll seals tx by tx; a failure is that tx's line and the others go
// on. changed: some tx's entry pin changed (a new image, or newly sealed:
// entries pin an image only once its tx is sealed).
func sealAll(e *env, s *txstore.Store, ids []uint64) (outs []sealOut, changed bool) {
	defer e.progressDone()
	for _, id := range ids {
		e.progress("sealing tx %d…", id)
		before := recordedPin(s, id)
		outs = append(outs, sealOne(s, id))
		changed = changed || recordedPin(s, id) != before
	}
	return outs, changed
}

func recordedPin(s *txstore.Store, id uint64) string {
	if t, err := s.Get(id); err == nil {
		return pinnedImage(t)
	}
	return ""
}

func sealOne(s *txstore.Store, id uint64) sealOut {
	o := sealOut{ID: id}
	r, err := sealTx(s, id)
	if err != nil {
		o.Error = err.Error()
		return o
	}
	o.Sealed, o.Image, o.Built, o.Enabled, o.Already, o.Note = r.Sealed, r.Image, r.Built, r.Enabled, r.Already, r.Note
	o.Unsupported = !r.Sealed && unsupportedNote(r.Note)
	if t, err := s.Get(id); err == nil && r.Sealed {
		if mode, why := txstore.BootMode(t); mode != "sealed" {
			o.BootsUnsealed = why
		}
	}
	return o
}

// unsupportedNote: a SealNote that says the filesystem or kernel has no
// fs-verity (txstore's unsupportedNote, or verity.ErrUnsupported's text).
func unsupportedNote(n string) bool {
	return strings.HasPrefix(n, "fs-verity unsupported") || strings.Contains(n, verity.ErrUnsupported.Error())
}

// printSeal is seal's text: a line a tx.
func printSeal(w io.Writer, outs []sealOut) {
	for _, o := range outs {
		fmt.Fprintf(w, "tx %d: %s\n", o.ID, sealLine(o))
	}
}

func sealLine(o sealOut) string {
	switch {
	case o.Error != "":
		return "failed: " + printable(o.Error)
	case o.Sealed:
		built := ""
		if o.Built {
			built = ", built now"
		}
		line := fmt.Sprintf("sealed (%d files sealed now, %d already; image %s%s)", o.Enabled, o.Already, o.Image, built)
		if o.BootsUnsealed != "" {
			line += "; boots unsealed: " + printable(o.BootsUnsealed)
		}
		return line
	case o.Note != "":
		return "not sealed: " + printable(o.Note)
	}
	return "not sealed"
}

// sealFinish: entries are re-synced when a pin changed (the entry pins a
// sealed tx's image as txboot.image=); a tx that failed fails the
// verb, one that cannot be sealed here does not.
func sealFinish(e *env, s *txstore.Store, outs []sealOut, changed bool) error {
	if changed {
		if err := resync(e, s, nil); err != nil {
			return fmt.Errorf("sealed, but the entries pinning the new images were not written: %w", err)
		}
	}
	failed := 0
	for _, o := range outs {
		if o.Error != "" {
			failed++
		}
	}
	if failed > 0 {
		return exitError{ExitFail, fmt.Sprintf("%d of %d transaction(s) could not be sealed", failed, len(outs))}
	}
	return nil
}
