package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/bootinfo"
	"github.com/txboot/txboot/txstore/etcstate"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestStatusEtc: status says whose /etc is live, the conflicts of the
// switch into it, the package versions kept beside, and what this boot
// did; --json has the same under "etc". A root without /etc shows none.
func TestStatusEtc(t *testing.T) {
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	root := t.TempDir()
	for i := 0; i < 2; i++ {
		mustRun(t, "--root", root, "commit", tree(t, testtree.File{Path: "lib/v", Data: strings.Repeat("v", i+1), Mode: 0o644}))
	}
	efi := t.TempDir()
	if out := mustRun(t, "--root", root, "status", "--efivars", efi); strings.Contains(out, "/etc:") {
		t.Errorf("status shows /etc for a root without one:\n%s", out)
	}

	put := func(p, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	etc := filepath.Join(root, "etc")
	put(filepath.Join(etc, "app.conf"), "mine")
	put(filepath.Join(etc, "x.conf.dpkg-dist"), "dpkg's")
	if out := mustRun(t, "--root", root, "status", "--efivars", efi); !strings.Contains(out, "/etc:     no tx named yet") {
		t.Errorf("status for an /etc without owner:\n%s", out)
	}
	tx2 := etcstate.TxEtcDir(root, 2)
	put(filepath.Join(tx2, etcstate.BaseDir, "app.conf"), "v1")
	put(filepath.Join(tx2, etcstate.NewDir, "app.conf"), "v2")
	if _, err := etcstate.Switch(root, 1); err != nil {
		t.Fatal(err)
	}
	res, err := etcstate.Switch(root, 2)
	if err != nil || len(res.Conflicts) != 1 {
		t.Fatalf("Switch: %v %v", res, err)
	}
	if err := bootinfo.Write(bootInfoPath, &bootinfo.Info{Booted: 2, Requested: 2, Etc: res.String()}); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "--root", root, "status", "--efivars", efi)
	for _, want := range []string{
		"/etc:     tx 2's\n",
		"this boot: tx 2's /etc merged",
		"conflict /etc/app.conf: edited here, edited in the tx's new /etc; yours kept",
		"kept beside: /etc/app.conf.txboot-new\n",
		"kept beside: /etc/x.conf.dpkg-dist\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var js struct {
		Etc *statusEtc `json:"etc"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", "status", "--efivars", efi)), &js); err != nil {
		t.Fatal(err)
	}
	if js.Etc == nil || js.Etc.Owner != 2 || len(js.Etc.Conflicts) != 1 || js.Etc.Conflicts[0].Beside != "app.conf.txboot-new" ||
		strings.Join(js.Etc.KeptBeside, " ") != "app.conf.txboot-new x.conf.dpkg-dist" {
		t.Errorf("status --json etc: %+v", js.Etc)
	}
}
