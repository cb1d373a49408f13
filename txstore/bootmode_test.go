package txstore

import (
	"strings"
	"testing"
)

func TestKernelCanSeal(t *testing.T) {
	for _, c := range []struct {
		kver string
		want bool
	}{
		{"6.12.57+deb13-amd64", true}, {"6.6.0", true}, {"6.6", true}, {"7.0.1", true},
		{"6.5.13", false}, {"6.1.0-40-amd64", false}, {"5.19.0", false},
		{"", false}, {"6", false}, {"x.y", false}, {"6.6rc1", true},
	} {
		if got := KernelCanSeal(c.kver); got != c.want {
			t.Errorf("KernelCanSeal(%q) = %v", c.kver, got)
		}
	}
}

// TestPinAndMode: the entry pins an image only for a sealed tx whose
// kernel can mount it; BootMode says why not otherwise.
func TestPinAndMode(t *testing.T) {
	const img = "sha256:" + "ab" + "000000000000000000000000000000000000000000000000000000000000cd"
	k612, k61 := []string{"6.12.57+deb13-amd64"}, []string{"6.1.0-40-amd64"}
	for _, c := range []struct {
		name string
		tx   Tx
		pin  bool
		why  string
	}{
		{"sealed", Tx{Image: img, Sealed: true, Kernels: k612}, true, ""},
		{"not sealed yet", Tx{Image: img, Kernels: k612}, false, "not sealed yet (bootctl seal)"},
		{"not sealed, note", Tx{Image: img, Kernels: k612, SealNote: "fs-verity unsupported"}, false, "not sealed yet: fs-verity unsupported"},
		{"old kernel", Tx{Image: img, Sealed: true, Kernels: k61}, false, "kernel 6.1.0-40-amd64 is older than 6.6"},
		{"no kernel", Tx{Image: img, Sealed: true}, false, "no kernel in the tx"},
		{"no image", Tx{Kernels: k612}, false, "no image yet"},
		{"no image, note", Tx{Kernels: k612, SealNote: "tree cannot be sealed"}, false, "no image: tree cannot be sealed"},
		{"last kernel decides", Tx{Image: img, Sealed: true, Kernels: []string{"6.1.0", "6.12.1"}}, true, ""},
	} {
		if got := PinImage(&c.tx); got != c.pin {
			t.Errorf("%s: PinImage = %v", c.name, got)
		}
		mode, why := BootMode(&c.tx)
		if (mode == "sealed") != (c.why == "") || !strings.Contains(why, c.why) {
			t.Errorf("%s: BootMode = %s, %q; want %q", c.name, mode, why, c.why)
		}
	}
}
