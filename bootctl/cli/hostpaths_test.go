package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/txboot/txboot/txstore/efivars"
)

// TestMain points every host path a verb reaches by default at a private
// directory before any test runs: a unit test must never open the host's
// /dev/watchdog (a nowayout watchdog would reboot the CI host), change its
// EFI variables, or read its boot.json. Tests that need these files set
// their own and restore these values.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bootctl-cli-host-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	watchdogPath = filepath.Join(dir, "watchdog")
	bootInfoPath = filepath.Join(dir, "boot.json")
	efivars.DefaultDir = filepath.Join(dir, "efivars")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
