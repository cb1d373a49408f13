package txstore

import (
	"fmt"
	"strconv"
	"strings"
)

// SealedKernel is the oldest kernel that can boot a tx sealed: overlayfs
// data-only lower layers came in 6.5 and verity=require in 6.6.
const SealedKernel = "6.6"

// KernelCanSeal reports whether kernel release kver (e.g.
// "6.12.57+deb13-amd64") is SealedKernel or newer.
func KernelCanSeal(kver string) bool {
	maj, min, ok := kernelMajorMinor(kver)
	return ok && (maj > 6 || maj == 6 && min >= 6)
}

func kernelMajorMinor(kver string) (int, int, bool) {
	parts := strings.SplitN(kver, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	maj, err1 := strconv.Atoi(parts[0])
	minStr := parts[1]
	if i := strings.IndexFunc(minStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minStr = minStr[:i]
	}
	min, err2 := strconv.Atoi(minStr)
	return maj, min, err1 == nil && err2 == nil
}

// bootKernel is the kernel a tx boots: the last of its list (as the entry
// writer picks it).
func bootKernel(t *Tx) string {
	if len(t.Kernels) == 0 {
		return ""
	}
	return t.Kernels[len(t.Kernels)-1]
}

// PinImage reports whether the tx's boot entry carries txboot.image=: it
// has an image, every object and the image are sealed, and its kernel can
// mount it. The pin is the entry's word that the tx boots sealed: initagent
// then boots it only sealed (a failure falls back), so nothing on the root
// filesystem (a record, an image without fs-verity) can turn the check off.
// Entries are rewritten when a tx becomes sealed (commit, bootctl seal).
func PinImage(t *Tx) bool {
	return t.Image != "" && t.Sealed && KernelCanSeal(bootKernel(t))
}

// BootMode says how tx t boots: "sealed", or "unsealed" and why.
func BootMode(t *Tx) (mode, why string) {
	switch k := bootKernel(t); {
	case t.Image == "" && t.SealNote != "":
		return "unsealed", "no image: " + t.SealNote
	case t.Image == "":
		return "unsealed", "no image yet (bootctl seal builds one)"
	case k == "":
		return "unsealed", "no kernel in the tx"
	case !KernelCanSeal(k):
		return "unsealed", fmt.Sprintf("kernel %s is older than %s (overlayfs verity=require)", k, SealedKernel)
	case !t.Sealed && t.SealNote != "":
		return "unsealed", "not sealed yet: " + t.SealNote
	case !t.Sealed:
		return "unsealed", "not sealed yet (bootctl seal)"
	}
	return "sealed", ""
}
