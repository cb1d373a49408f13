package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/bootinfo"
)

// TestModeColumn: list's compact MODE for each of BootMode's reasons.
func TestModeColumn(t *testing.T) {
	img := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		tx   txstore.Tx
		want string
	}{
		{txstore.Tx{Image: img, Sealed: true, Kernels: []string{"6.12.57+deb13-amd64"}}, "sealed"},
		{txstore.Tx{}, "unsealed (no image)"},
		{txstore.Tx{Image: img}, "unsealed (no kernel)"},
		{txstore.Tx{Image: img, Sealed: true, Kernels: []string{"6.1.0-40-amd64"}}, "unsealed (kernel 6.1.0-40-amd64)"},
		{txstore.Tx{Image: img, Kernels: []string{"6.12.1"}, SealNote: "fs-verity unsupported on ext4 (/dev/vda): run tune2fs -O verity /dev/vda"}, "unsealed (no fs-verity)"},
		{txstore.Tx{Image: img, Kernels: []string{"6.12.1"}}, "unsealed (not sealed yet)"},
	}
	for _, tt := range tests {
		if got := modeColumn(&tt.tx); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.tx, got, tt.want)
		}
	}
}

// TestStatusModes: a line for the booted tx (as boot.json says it booted)
// and one for the default when it says something else.
func TestStatusModes(t *testing.T) {
	img := "sha256:" + strings.Repeat("ab", 32)
	sealed := &txstore.Tx{ID: 2, Image: img, Sealed: true, Kernels: []string{"6.12.1"}}
	unsealed := &txstore.Tx{ID: 1, Image: img, Kernels: []string{"6.12.1"}}
	txs := []statusTx{{Tx: unsealed, BootMode: "unsealed", BootModeWhy: "not sealed yet (bootctl seal)"}, {Tx: sealed, BootMode: "sealed"}}
	tests := []struct {
		booted, def uint64
		info        *bootinfo.Info
		want        string
	}{
		{2, 2, nil, "Mode:     tx 2 boots sealed\n"},
		{2, 2, &bootinfo.Info{Booted: 2, Sealed: true}, "Mode:     tx 2 booted sealed\n"},
		{2, 2, &bootinfo.Info{Booted: 2, UnsealedWhy: "not sealed yet"}, "Mode:     tx 2 booted unsealed: not sealed yet\nMode:     tx 2 boots sealed\n"},
		{1, 2, nil, "Mode:     tx 1 boots unsealed: not sealed yet (bootctl seal)\nMode:     tx 2 boots sealed\n"},
		{0, 1, nil, "Mode:     tx 1 boots unsealed: not sealed yet (bootctl seal)\n"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		printStatusModes(&b, &statusOut{Booted: tt.booted, Info: tt.info, Transactions: txs}, tt.def)
		if b.String() != tt.want {
			t.Errorf("booted %d default %d: %q, want %q", tt.booted, tt.def, b.String(), tt.want)
		}
	}
}

// TestListStatusShowMode: list has a MODE column, status a Mode line, and
// both --json carry boot_mode (this host's store cannot seal).
func TestListStatusShowMode(t *testing.T) {
	root := storeWith(t, "one")
	if out := mustRun(t, "--root", root, "list"); !strings.Contains(out, "MODE") || !strings.Contains(out, "  unsealed (") {
		t.Errorf("list:\n%s", out)
	}
	if out := mustRun(t, "--root", root, "status"); !strings.Contains(out, "Mode:     tx 1 boots unsealed: ") {
		t.Errorf("status:\n%s", out)
	}
	var l struct {
		Transactions []struct {
			ID       uint64 `json:"id"`
			BootMode string `json:"boot_mode"`
			Why      string `json:"boot_mode_why"`
		} `json:"transactions"`
	}
	for _, verb := range []string{"list", "status"} {
		if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", verb)), &l); err != nil || len(l.Transactions) != 1 {
			t.Fatalf("%s --json: %v %+v", verb, err, l)
		}
		if tx := l.Transactions[0]; tx.ID != 1 || tx.BootMode != "unsealed" || tx.Why == "" {
			t.Errorf("%s --json: %+v", verb, tx)
		}
	}
}
