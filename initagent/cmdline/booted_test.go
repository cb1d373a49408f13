package cmdline

import "testing"

// TestBootedTx pins the one rule for which tx a command line boots, the
// rule initagent applies and bootctl reads /proc/cmdline and entries with.
func TestBootedTx(t *testing.T) {
	const hex = "ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
	tests := []struct {
		in     string
		id     uint64
		digest string
	}{
		{"root=/dev/sda ro txboot.tx=12 txboot.digest=sha256:" + hex + " quiet", 12, "sha256:" + hex},
		{"txboot.tx=1 txboot.tx=2", 2, ""},
		{"txboot.tx=2 txboot.tx=x", 0, ""},
		{"txboot.tx=x", 0, ""},
		{"txboot.tx=0", 0, ""},
		{"", 0, ""},
		{"xtxboot.tx=3", 0, ""},
		{"txboot.tx=4 -- txboot.tx=5", 4, ""},
		{`"txboot.tx=6"`, 6, ""},
		{"txboot.tx=7 txboot.digest=sha256:AB" + hex[2:], 7, "sha256:" + hex},
		{"txboot.tx=7 txboot.digest=sha256:ab", 7, ""},
	}
	for _, tt := range tests {
		id, d := BootedTx(tt.in)
		if id != tt.id || d != tt.digest {
			t.Errorf("BootedTx(%q) = %d, %q; want %d, %q", tt.in, id, d, tt.id, tt.digest)
		}
	}
}
