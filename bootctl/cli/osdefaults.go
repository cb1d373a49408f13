package cli

import (
	"fmt"
	"strings"

	"github.com/txboot/txboot/bootctl/bls"
)

// derived says which entry settings came from the OS rather than from
// flags or the saved settings.
type derived struct {
	rootArg, options, machineID bool
}

// osDefaults fills what flags and saved settings leave open from ROOT
// itself, as kernel-install does: root= and the other kernel arguments
// from etc/kernel/cmdline (else usr/lib/kernel/cmdline), the machine ID
// from etc/machine-id. They are read on every sync and never saved, so
// editing those files is enough. txboot's own keys there are ignored with
// a warning (they would override what every entry says).
func osDefaults(c *entriesConfig, root string, f *entryFlags) {
	needRoot := c.RootArg == ""
	needOpts := c.Options == "" && (f == nil || !f.optionsSet)
	if needRoot || needOpts {
		kc, err := bls.ReadKernelCmdline(root)
		switch {
		case err != nil:
			c.warnings = append(c.warnings, fmt.Sprintf("kernel command line not used: %v", err))
		default:
			if needRoot && kc.Root != "" {
				c.RootArg, c.derived.rootArg = kc.Root, true
			}
			if needOpts && kc.Options != "" {
				c.Options, c.derived.options = kc.Options, true
			}
			if needOpts && len(kc.Dropped) > 0 {
				c.warnings = append(c.warnings, fmt.Sprintf("%s: ignoring %q (initrd= and txboot.* are txboot's own)", kc.Path, strings.Join(kc.Dropped, " ")))
			}
		}
	}
	if c.MachineID == "" {
		if id := bls.MachineID(root); id != "" {
			c.MachineID, c.derived.machineID = id, true
		}
	}
}

// withoutDerived is c as it is saved: without what osDefaults read.
func (c entriesConfig) withoutDerived() entriesConfig {
	if c.derived.rootArg {
		c.RootArg = ""
	}
	if c.derived.options {
		c.Options = ""
	}
	if c.derived.machineID {
		c.MachineID = ""
	}
	return c
}
