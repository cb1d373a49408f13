package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/txboot/txboot/txstore"
)

// How status and list show the way each tx boots: sealed (erofs image +
// overlayfs verity=require, the kernel checks every read) or unsealed, and
// why (txstore.BootMode).

// modeColumn is list's compact MODE: "sealed", or "unsealed (SHORT)".
func modeColumn(t *txstore.Tx) string {
	mode, why := txstore.BootMode(t)
	if mode == "sealed" {
		return mode
	}
	return mode + " (" + shortWhy(why) + ")"
}

// shortWhy is the gist of BootMode's reason, for a column.
func shortWhy(why string) string {
	switch {
	case strings.HasPrefix(why, "no image"):
		return "no image"
	case why == "no kernel in the tx":
		return "no kernel"
	case strings.HasPrefix(why, "kernel "):
		k, _, _ := strings.Cut(strings.TrimPrefix(why, "kernel "), " ")
		return "kernel " + printable(k)
	case unsupportedNote(strings.TrimPrefix(why, "not sealed yet: ")):
		return "no fs-verity"
	}
	return "not sealed yet"
}

// printStatusModes prints status's lines for how the booted tx booted (boot.json,
// when it tells) and how the default boots next; one line when they are
// the same tx and say the same.
func printStatusModes(w io.Writer, out *statusOut, def uint64) {
	booted, bootedLine := out.Booted, ""
	if booted != 0 {
		bootedLine = bootedMode(out, booted)
		fmt.Fprintf(w, "Mode:     tx %d %s\n", booted, bootedLine)
	}
	if def == 0 || def == booted && sameMode(bootedLine, nextMode(out, def)) {
		return
	}
	fmt.Fprintf(w, "Mode:     tx %d %s\n", def, nextMode(out, def))
}

// sameMode: "booted sealed" and "boots sealed" say the same of a tx.
func sameMode(a, b string) bool {
	trim := func(s string) string { return strings.TrimPrefix(strings.TrimPrefix(s, "booted "), "boots ") }
	return trim(a) == trim(b)
}

// bootedMode: this boot's mode as initagent recorded it, else the record's.
func bootedMode(out *statusOut, id uint64) string {
	if bi := out.Info; bi != nil && bi.Booted == id {
		if bi.Sealed {
			return "booted sealed"
		}
		if bi.UnsealedWhy != "" {
			return "booted unsealed: " + printable(bi.UnsealedWhy)
		}
	}
	return nextMode(out, id)
}

// nextMode: how the tx boots next, from its record.
func nextMode(out *statusOut, id uint64) string {
	for _, t := range out.Transactions {
		if t.ID == id {
			if t.BootMode == "sealed" {
				return "boots sealed"
			}
			return "boots unsealed: " + printable(t.BootModeWhy)
		}
	}
	return "is not in the store"
}

// listTx is a tx in list --json: the record and how it boots.
type listTx struct {
	*txstore.Tx
	BootMode    string `json:"boot_mode"`
	BootModeWhy string `json:"boot_mode_why,omitempty"`
}

func listModes(txs []*txstore.Tx) []listTx {
	out := make([]listTx, 0, len(txs))
	for _, t := range txs {
		mode, why := txstore.BootMode(t)
		out = append(out, listTx{Tx: t, BootMode: mode, BootModeWhy: why})
	}
	return out
}
