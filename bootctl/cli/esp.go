package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/txboot/txboot/bootctl/bls"
	"github.com/txboot/txboot/bootctl/esp"
	"github.com/txboot/txboot/txstore/efivars"
)

// Which ESP a verb works on:
//   - --esp, when given, always;
//   - in the running system (--root is /), the one the boot loader was
//     started from (esp.Finder: LoaderDevicePartUUID, mounted at /efi,
//     /boot or /boot/efi, else mounted privately). A saved path is never
//     used there: it was saved when the system was built, where the ESP
//     was somewhere else;
//   - offline (--root is an image or tree being prepared), the saved path,
//     else ROOT/boot/efi, ROOT/efi or ROOT/boot holding loader/.

// liveRoot is the running system's root; tests point it at a fake one.
var liveRoot = "/"

// newESPFinder describes the running system's devices; tests replace it
// with fakes.
var newESPFinder = func() *esp.Finder { return &esp.Finder{} }

// liveESPs caches what was found, per root, for the life of the process:
// a privately mounted ESP stays reachable until releaseESPs.
var liveESPs = map[string]liveESP{}

type liveESP struct {
	esp *esp.ESP
	err error
}

// isLive reports whether root is the running system's root.
func isLive(root string) bool {
	a, err1 := os.Stat(root)
	b, err2 := os.Stat(liveRoot)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// findLiveESP finds the running system's ESP once per process.
func findLiveESP(root string) (*esp.ESP, error) {
	key := filepath.Clean(root)
	if r, ok := liveESPs[key]; ok {
		return r.esp, r.err
	}
	e, err := newESPFinder().Find()
	liveESPs[key] = liveESP{e, err}
	return e, err
}

// releaseESPs lets privately mounted ESPs go (before a reboot, and in
// tests).
func releaseESPs() {
	for k, r := range liveESPs {
		r.esp.Close()
		delete(liveESPs, k)
	}
}

// espName is how messages name the ESP in c.
func (c entriesConfig) espName() string {
	if c.espDesc != "" {
		return c.espDesc
	}
	return c.ESP
}

// errNotBlessed is wrapped by mark-good and health when the store says
// good but the entry the boot loader counts could not be blessed.
var errNotBlessed = errors.New("boot entry not blessed")

// requireBlessable is checked by mark-good (and health) after the sync:
// when entries are managed (settings with a root= value are saved) or the
// boot loader counted this boot, an ESP must have been found; in the
// running system, the entry file systemd-boot booted must be gone
// (renamed to its good name), or the loader keeps counting it down.
// Without an ESP on a system the loader did not boot (offline --root, an
// image being built), nothing counts: pending says why there is no ESP,
// and the entries are written blessed by the next sync.
func requireBlessable(e *env, c entriesConfig, found bool, id uint64) (pending string, err error) {
	live := isLive(e.root)
	dir, booted, counted := loaderCounted(e, id)
	if !found {
		if c.RootArg == "" && !counted {
			return "", nil // txboot does not manage this system's boot entries
		}
		why := "no ESP is configured or found"
		if c.espErr != nil {
			why = c.espErr.Error()
		}
		if !counted && !bootedByLoader(e) {
			return why, nil
		}
		if c.espErr != nil {
			return "", fmt.Errorf("%w: %w", errNotBlessed, c.espErr)
		}
		return "", fmt.Errorf("%w: %s (pass --esp ESP)", errNotBlessed, why)
	}
	if !live || !counted {
		return "", nil
	}
	p := filepath.Join(c.ESP, filepath.FromSlash(dir), booted.String())
	if _, err := os.Lstat(p); err == nil {
		return "", fmt.Errorf("%w: the entry the boot loader booted, %s/%s, is still on %s", errNotBlessed, dir, booted.String(), c.espName())
	}
	return "", nil
}

// bootedByLoader reports whether systemd-boot started the running system
// (it sets LoaderEntrySelected on every boot); offline, nothing did.
func bootedByLoader(e *env) bool {
	if !isLive(e.root) {
		return false
	}
	sel, err := efivars.New(newESPFinder().EFIVarsDir).EntrySelected()
	return err == nil && sel != ""
}

// loaderCounted reads LoaderBootCountPath in the running system: whether
// systemd-boot counted this boot against tx id's entry, and which file.
func loaderCounted(e *env, id uint64) (dir string, name bls.Name, counted bool) {
	if !isLive(e.root) {
		return "", bls.Name{}, false
	}
	dir, name, err := efivars.New(newESPFinder().EFIVarsDir).BootCountEntry()
	if err != nil || !name.Counting || name.Base != bls.EntryBase(bls.DefaultPrefix, id) {
		return "", bls.Name{}, false
	}
	return dir, name, true
}
