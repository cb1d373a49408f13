package cli

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/txboot/txboot/bootctl/systemd"
)

// TestUnitsExecStartParse: every unit bootctl installs runs a bootctl
// command line this bootctl accepts. (txboot-seal.service once passed
// systemd's "5min" to a Go duration flag, so bootctl seal exited 2 on every
// boot and nothing was sealed; only a QEMU boot noticed.)
func TestUnitsExecStartParse(t *testing.T) {
	for _, u := range systemd.Units() {
		sc := bufio.NewScanner(bytes.NewReader(u.Data))
		n := 0
		for sc.Scan() {
			line, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "ExecStart=")
			if !ok {
				continue
			}
			n++
			f := strings.Fields(line)
			if len(f) < 2 || !strings.HasSuffix(f[0], "/bootctl") {
				t.Errorf("%s: ExecStart=%s does not run bootctl", u.Name, line)
				continue
			}
			// --help after the unit's own flags: they are parsed (a bad
			// value fails, exit 2) and nothing runs (exit 0).
			if code, _, errs := run(t, append(f[1:], "--help")...); code != 0 {
				t.Errorf("%s: bootctl %s: exit %d: %s", u.Name, strings.Join(f[1:], " "), code, errs)
			}
		}
		if n == 0 {
			t.Errorf("%s has no ExecStart", u.Name)
		}
	}
}
