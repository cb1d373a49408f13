package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/bootinfo"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestStatusBootInfo: what initagent writes (bootinfo.Write) is what status
// reads, every field of a failure included (the typed kind was dropped when
// bootctl kept its own copy of the schema).
func TestStatusBootInfo(t *testing.T) {
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	root := t.TempDir()
	for i := 0; i < 3; i++ {
		mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/v", Data: strings.Repeat("v", i+1), Mode: 0o644}))
	}
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	if err := bootinfo.Write(bootInfoPath, &bootinfo.Info{Booted: 2, Requested: 3, OnTrial: true,
		Failures: []bootinfo.Failure{{Tx: 3, Reason: "no trusted key signed it", Kind: "unsigned"}}}); err != nil {
		t.Fatal(err)
	}
	efi := t.TempDir()
	out := mustRun(t, "--root", root, "status", "--efivars", efi)
	if !strings.Contains(out, "Booted:   tx 2 (fell back from tx 3)") || !strings.Contains(out, "tx 3 failed this boot: no trusted key signed it") {
		t.Errorf("status does not show the boot record:\n%s", out)
	}
	var js struct {
		Booted       uint64             `json:"booted"`
		Requested    uint64             `json:"requested"`
		BootFailures []bootinfo.Failure `json:"boot_failures"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", "status", "--efivars", efi)), &js); err != nil {
		t.Fatal(err)
	}
	want := bootinfo.Failure{Tx: 3, Reason: "no trusted key signed it", Kind: "unsigned"}
	if js.Booted != 2 || js.Requested != 3 || len(js.BootFailures) != 1 || js.BootFailures[0] != want {
		t.Errorf("status --json: %+v, want booted 2, requested 3, failures [%+v]", js, want)
	}
}
