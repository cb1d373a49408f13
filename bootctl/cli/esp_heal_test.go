package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/bootctl/bls"
)

// healSystem: tx 1 (kernel-A) and tx 2 (kernel-B, the default), both good,
// entries on esp. Returns the ESP-relative path of tx 2's kernel.
func healSystem(t *testing.T) (root, esp, rel string) {
	t.Helper()
	td := tools(t)
	root, esp = t.TempDir(), t.TempDir()
	if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-A", "--esp", esp, "--root-arg", "PARTUUID=1234"); code != 0 {
		t.Fatalf("commit 1: %s", out)
	}
	mustRun(t, "--root", root, "mark-good", "1")
	if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-B"); code != 0 {
		t.Fatalf("commit 2: %s", out)
	}
	mustRun(t, "--root", root, "mark-good", "2")
	h := sha256.Sum256([]byte("kernel-B"))
	return root, esp, "txboot/kernels/" + hex.EncodeToString(h[:]) + "/vmlinuz"
}

func flipBytes(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Every verb that touches the ESP checks the kernels and initrds against
// the digests in their paths and rewrites a damaged one from the store,
// and says so.
func TestVerbsRepairESP(t *testing.T) {
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	for _, tt := range []struct {
		name     string
		bootJSON string
		args     []string
	}{
		{"status", "", []string{"status"}},
		{"status --json", "", []string{"--json", "status"}},
		{"entries sync", "", []string{"entries", "sync"}},
		{"mark-good", "", []string{"mark-good", "2"}},
		{"mark-bad", "", []string{"mark-bad", "1"}},
		{"set-default", "", []string{"set-default", "2", "--efivars", "EFIVARS"}},
		{"health not on trial", `{"booted":2,"requested":2,"on_trial":false}`, []string{"health"}},
		{"health on trial", `{"booted":2,"requested":2,"on_trial":true}`, []string{"health"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root, esp, rel := healSystem(t)
			bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
			if tt.bootJSON != "" {
				os.WriteFile(bootInfoPath, []byte(tt.bootJSON), 0o644)
			}
			p := filepath.Join(esp, rel)
			flipBytes(t, p)
			args := append([]string{"--root", root}, tt.args...)
			for i, a := range args {
				if a == "EFIVARS" {
					args[i] = t.TempDir()
				}
			}
			code, out, errs := run(t, args...)
			if code != 0 {
				t.Fatalf("exit %d\n%s%s", code, out, errs)
			}
			if got, _ := os.ReadFile(p); string(got) != "kernel-B" {
				t.Fatalf("%s not repaired: %q\n%s%s", rel, got, out, errs)
			}
			if strings.Contains(tt.name, "json") {
				var st struct {
					Repairs []struct {
						Tx       uint64 `json:"tx"`
						Path     string `json:"path"`
						Why      string `json:"why"`
						Repaired bool   `json:"repaired"`
					} `json:"esp_repairs"`
				}
				if err := json.Unmarshal([]byte(out), &st); err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				if len(st.Repairs) != 1 || st.Repairs[0].Tx != 2 || st.Repairs[0].Path != rel || !st.Repairs[0].Repaired || st.Repairs[0].Why != bls.WhyMismatch {
					t.Fatalf("esp_repairs = %+v", st.Repairs)
				}
				return
			}
			want := "repaired ESP file " + rel + " (tx 2): content did not match its name"
			if !strings.Contains(out, want) {
				t.Fatalf("output lacks %q:\n%s%s", want, out, errs)
			}
		})
	}
}

// A damaged file whose content no tx in the store has any more is
// reported, and status exits 3.
func TestStatusUnrepairable(t *testing.T) {
	root, esp, rel := healSystem(t)
	flipBytes(t, filepath.Join(esp, rel))
	// tx 2's kernel gone from its tree (and no other tx has kernel-B).
	k := filepath.Join(root, ".txboot/trees/2/usr/lib/modules/6.1.0-test/vmlinuz")
	os.Chmod(filepath.Dir(k), 0o755)
	if err := os.Remove(k); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "--root", root, "status")
	if code != ExitProblems {
		t.Fatalf("status: exit %d, want %d\n%s%s", code, ExitProblems, out, errs)
	}
	if !strings.Contains(out, "ESP file "+rel+" (tx 2): content did not match its name; not repaired") || !strings.Contains(errs, "could not be repaired") {
		t.Fatalf("status output:\n%s%s", out, errs)
	}
	// The rest of the status is still there.
	if !strings.Contains(out, "Default:  tx 2") {
		t.Fatalf("status output:\n%s", out)
	}
}

// TestHealthChecksNextBootsOnly: at boot (health, not on trial) only the
// default's and the fallback's entries are checked; a damaged file only an
// older entry names is left for the next sync, which rewrites it.
func TestHealthChecksNextBootsOnly(t *testing.T) {
	oldInfo := bootInfoPath
	t.Cleanup(func() { bootInfoPath = oldInfo })
	root, esp, defRel := healSystem(t) // tx 1 kernel-A, tx 2 kernel-B (default)
	td := tools(t)
	if code, out := commitKernel(t, root, td, "6.1.0-test", "kernel-C"); code != 0 {
		t.Fatalf("commit 3: %s", out)
	}
	mustRun(t, "--root", root, "mark-good", "3") // default 3, fallback 2, tx 1 neither
	bootInfoPath = filepath.Join(t.TempDir(), "boot.json")
	os.WriteFile(bootInfoPath, []byte(`{"booted":3,"requested":3,"on_trial":false}`), 0o644)
	h := sha256.Sum256([]byte("kernel-A"))
	oldRel := "txboot/kernels/" + hex.EncodeToString(h[:]) + "/vmlinuz"
	flipBytes(t, filepath.Join(esp, oldRel))
	flipBytes(t, filepath.Join(esp, defRel)) // tx 2's: the fallback's
	out := mustRun(t, "--root", root, "health")
	if !strings.Contains(out, "repaired ESP file "+defRel+" (tx 2)") || strings.Contains(out, oldRel) {
		t.Errorf("health: want the fallback's file repaired and tx 1's left:\n%s", out)
	}
	if got, _ := os.ReadFile(filepath.Join(esp, oldRel)); string(got) == "kernel-A" {
		t.Fatalf("health rewrote %s (tx 1 is neither the default nor the fallback)", oldRel)
	}
	out = mustRun(t, "--root", root, "entries", "sync")
	if got, _ := os.ReadFile(filepath.Join(esp, oldRel)); string(got) != "kernel-A" {
		t.Fatalf("entries sync left %s damaged:\n%s", oldRel, out)
	}
}

// TestNextBoots: the default and the newest good tx other than it.
func TestNextBoots(t *testing.T) {
	txs := []bls.TxInfo{{ID: 1, Good: true}, {ID: 2, Good: true}, {ID: 3, Bad: true}, {ID: 4}}
	for _, tt := range []struct {
		def  uint64
		want []uint64
	}{
		{4, []uint64{2, 4}},
		{2, []uint64{1, 2}},
		{1, []uint64{1, 2}},
		{0, nil},
	} {
		got := nextBoots(tt.def, txs)
		if len(got) != len(tt.want) {
			t.Errorf("default %d: %v, want %v", tt.def, got, tt.want)
		}
		for _, id := range tt.want {
			if !got[id] {
				t.Errorf("default %d: %v lacks %d", tt.def, got, id)
			}
		}
	}
}
