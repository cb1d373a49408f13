package boot

import (
	"errors"

	"github.com/txboot/txboot/initagent/cmdline"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/efivars"
	"github.com/txboot/txboot/txstore/loader"
)

// Sysroot is where the real root is mounted.
const Sysroot = "/sysroot"

// Main is PID 1. It never returns: it execs the real init, or ends in a
// rescue shell or a reboot. The flow is the table of steps in plan.go, run
// on the real machine (system.go); a panic in a step becomes a rescue.
func Main() { Run(linuxSystem{}, DefaultPlan()) }

func verifyMode(m cmdline.VerifyMode) txstore.VerifyMode {
	switch m {
	case cmdline.VerifyOff:
		return txstore.VerifyOff
	case cmdline.VerifyFull:
		return txstore.VerifyFull
	}
	return txstore.VerifyFast
}

// loaderCounter reads systemd-boot's boot counter for the entry it booted,
// so the store and the bootloader never disagree about tries left.
func loaderCounter(log *klog, req *Request, efivarsDir string) {
	v := efivars.New(efivarsDir)
	_, entry, err := v.BootCountEntry()
	if err != nil {
		if !errors.Is(err, efivars.ErrNotExist) {
			log.logf(4, "LoaderBootCountPath: %v", err)
		}
		return
	}
	id, ok := entry.TxID(loader.DefaultPrefix)
	if !ok || !entry.Counting {
		return
	}
	if req.Tx != 0 && req.Tx != id {
		log.logf(4, "systemd-boot counted entry %s but the command line names tx %d; ignoring the counter", entry, req.Tx)
		return
	}
	req.LoaderTx, req.LoaderTriesLeft = id, entry.Left
	log.logf(6, "systemd-boot entry %s: %d tries left", entry, entry.Left)
}
