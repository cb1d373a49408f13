// Package systemd holds txboot's systemd units; this test keeps the unit
// consistent with bootctl's verbs (the QEMU tests boot without systemd).
package systemd

import (
	"os"
	"strings"
	"testing"
)

func TestHealthUnit(t *testing.T) {
	data, err := os.ReadFile("txboot-health.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	for _, want := range []string{
		"Before=boot-complete.target",
		"RequiredBy=boot-complete.target",
		"ExecStart=/usr/lib/txboot/bootctl health --reboot",
		"Type=oneshot",
		"ConditionPathExists=/run/txboot/boot.json",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
}
