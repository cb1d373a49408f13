// Package systemd holds txboot's systemd units; this test keeps the unit
// consistent with bootctl's verbs (the QEMU tests boot without systemd).
package systemd

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestHealthUnit(t *testing.T) {
	data, err := os.ReadFile("txboot-health.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := parseUnit(t, string(data))
	// `bootctl install` enables the unit from [Install] alone, so both
	// ways it is pulled in must be there: boot-complete.target only exists
	// in the boot transaction when systemd-boot's bless generator (Debian's
	// separate systemd-boot package) pulls it in; multi-user.target is in
	// every normal boot.
	tests := []struct {
		section, key, value string
	}{
		{"Install", "RequiredBy", "boot-complete.target"},
		{"Install", "WantedBy", "multi-user.target"},
		// Before the bless point either way: systemd-bless-boot.service
		// runs after boot-complete.target and finds the entry blessed.
		{"Unit", "Before", "boot-complete.target"},
		{"Unit", "After", "basic.target"},
		{"Unit", "ConditionPathExists", "/run/txboot/boot.json"},
		{"Service", "Type", "oneshot"},
		{"Service", "RemainAfterExit", "yes"},
		{"Service", "ExecStart", "/usr/lib/txboot/bootctl health --reboot"},
	}
	for _, tt := range tests {
		if !slices.Contains(unit[tt.section][tt.key], tt.value) {
			t.Errorf("[%s] %s= lacks %q (has %q)", tt.section, tt.key, tt.value, unit[tt.section][tt.key])
		}
	}
	// Nothing that exists only with the systemd-boot package may be
	// required, or the unit would not start without it.
	for _, key := range []string{"Requires", "Requisite", "BindsTo", "PartOf"} {
		for _, v := range unit["Unit"][key] {
			if strings.Contains(v, "bless") || v == "boot-complete.target" {
				t.Errorf("[Unit] %s=%s: the unit would depend on systemd-boot's units", key, v)
			}
		}
	}
	// Install keys outside [Install] are ignored by systemctl enable.
	for sec, keys := range unit {
		if sec == "Install" {
			continue
		}
		for _, k := range []string{"WantedBy", "RequiredBy", "Also", "Alias"} {
			if _, ok := keys[k]; ok {
				t.Errorf("%s= in [%s]", k, sec)
			}
		}
	}
}

// TestSealUnit: the seal unit runs bootctl seal after the health check,
// at the lowest priority, on txboot boots only, and is enabled by
// multi-user.target (bootctl install enables it from [Install] alone).
func TestSealUnit(t *testing.T) {
	data, err := os.ReadFile(SealUnitName)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != string(SealUnit) {
		t.Fatal("SealUnit is not the shipped file")
	}
	unit := parseUnit(t, string(data))
	for _, tt := range []struct{ section, key, value string }{
		{"Unit", "After", HealthUnitName},
		{"Unit", "ConditionPathExists", "/run/txboot/boot.json"},
		{"Service", "Type", "exec"},
		{"Service", "Nice", "19"},
		{"Service", "IOSchedulingClass", "idle"},
		{"Install", "WantedBy", "multi-user.target"},
	} {
		if !slices.Contains(unit[tt.section][tt.key], tt.value) {
			t.Errorf("[%s] %s= lacks %q (has %q)", tt.section, tt.key, tt.value, unit[tt.section][tt.key])
		}
	}
	exec := unit["Service"]["ExecStart"]
	if len(exec) != 1 || !strings.HasPrefix(exec[0], "/usr/lib/txboot/bootctl seal") {
		t.Errorf("ExecStart=%q, want /usr/lib/txboot/bootctl seal", exec)
	}
	// Sealing never decides a boot's health: nothing may wait for it.
	for _, key := range []string{"Before", "RequiredBy", "Requires", "BindsTo"} {
		for _, sec := range []string{"Unit", "Install"} {
			for _, v := range unit[sec][key] {
				if v == "boot-complete.target" || v == HealthUnitName {
					t.Errorf("[%s] %s=%s: the boot's blessing would wait for sealing", sec, key, v)
				}
			}
		}
	}
	names := map[string]bool{}
	for _, u := range Units() {
		names[u.Name] = len(u.Data) > 0
	}
	if !names[HealthUnitName] || !names[SealUnitName] {
		t.Errorf("Units() = %v, want both units with content", names)
	}
}

// parseUnit splits a unit file into section -> key -> values (space
// separated lists split; repeated keys add up), as systemd reads it.
func parseUnit(t *testing.T, text string) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	sec := ""
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			sec = line[1 : len(line)-1]
			if out[sec] == nil {
				out[sec] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == "" {
				t.Fatalf("line %d: %q is not key=value in a section", n+1, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if k == "ExecStart" {
				out[sec][k] = append(out[sec][k], v)
				continue
			}
			out[sec][k] = append(out[sec][k], strings.Fields(v)...)
		}
	}
	return out
}
