package harness

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestChooseAccel(t *testing.T) {
	works := func() error { return nil }
	broken := func() error { return errors.New("QEMU failed: error: failed to set MSR 0x10a to 0x69") }
	for _, c := range []struct {
		env     string
		probe   probeFunc
		want    string
		wantErr bool
		whyHas  string
	}{
		{"", works, "kvm", false, "probe boot passed"},
		{"auto", works, "kvm", false, "probe boot passed"},
		{"", broken, "tcg", false, "MSR 0x10a"},
		{"auto", broken, "tcg", false, "using TCG"},
		{"tcg", works, "tcg", false, "=tcg"},
		{"tcg", broken, "tcg", false, "=tcg"},
		{"kvm", works, "kvm", false, "=kvm"},
		{"kvm", broken, "", true, "MSR 0x10a"},
		{"hvf", works, "", true, "want auto, kvm or tcg"},
	} {
		a, err := chooseAccel(c.env, c.probe)
		if c.wantErr {
			if !errors.Is(err, ErrAccel) || !strings.Contains(err.Error(), c.whyHas) {
				t.Errorf("env %q: err = %v, want ErrAccel mentioning %q", c.env, err, c.whyHas)
			}
			continue
		}
		if err != nil || a.Name != c.want || !strings.Contains(a.Why, c.whyHas) {
			t.Errorf("env %q: got %+v, %v; want %s with %q", c.env, a, err, c.want, c.whyHas)
		}
	}
}

// TestRunProbe drives runProbe with stand-ins for QEMU that behave like
// the failures seen on real machines; the real probe runs in every QEMU
// test of this package's users (ChooseAccel in Start).
func TestRunProbe(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The probe's timeout is behaviour only for the stand-ins that hang; for
	// those that end on their own it is a safety net, long enough that a
	// loaded machine never turns a pass into "no serial output". The banner
	// case needs its echo to land before the timeout, so it gets 10s.
	const ends, hangs = 2 * time.Minute, 2 * time.Second
	for _, c := range []struct {
		name, body, wantErr string
		timeout             time.Duration
	}{
		{"ok", `echo "[    0.000000] Linux version 6.1.0"; echo "Kernel panic"; exit 0`, "", ends},
		{"abort", `echo "qemu: warning: host doesn't support requested feature" >&2; echo "error: failed to set MSR 0x10a to 0x69" >&2; exit 134`, "failed to set MSR 0x10a", ends},
		{"hang", `exec sleep 60`, "no serial output within", hangs},
		{"hang-after-banner", `echo "Linux version 6.1"; echo "Probing EDD"; exec sleep 60`, "did not finish", 10 * time.Second},
		{"silent-exit", `exit 0`, "without serial output", ends},
	} {
		err := runProbe(script(c.name, c.body), "/nonexistent-kernel", c.timeout)
		if c.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.wantErr)
		}
	}
}
