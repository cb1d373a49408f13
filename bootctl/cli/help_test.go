package cli

import (
	"strings"
	"testing"
)

// --help is a request, not a usage error: usage on stdout, exit 0.
func TestHelpFlags(t *testing.T) {
	tests := []struct {
		args []string
		want []string // on stdout
	}{
		{[]string{"--help"}, []string{"usage: bootctl", "commit"}},
		{[]string{"-h"}, []string{"usage: bootctl", "commit"}},
		{[]string{"help"}, []string{"usage: bootctl"}},
		{[]string{"commit", "--help"}, []string{"usage: bootctl commit DIR", "-summary", "-tries"}},
		{[]string{"verify", "-h"}, []string{"usage: bootctl verify", "-full"}},
		{[]string{"--root", "/nonexistent", "entries", "--help"}, []string{"usage: bootctl entries sync", "-root-arg"}},
		{[]string{"install", "--help"}, []string{"usage: bootctl install", "-esp", "-root-arg"}},
	}
	for _, tt := range tests {
		code, out, errs := run(t, tt.args...)
		if code != ExitOK || errs != "" {
			t.Errorf("%v: exit %d, stderr %q", tt.args, code, errs)
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: stdout lacks %q:\n%s", tt.args, w, out)
			}
		}
	}
}
