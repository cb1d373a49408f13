package boot

import (
	"fmt"
	"runtime/debug"
	"time"

	"github.com/txboot/txboot/txstore/etcstate"
)

// maxEtcConflictLines bounds how many conflicts the boot log names one by
// one; `bootctl status` lists them all.
const maxEtcConflictLines = 20

// switchEtc gives the chosen tx its /etc (the one it last ran with, a
// merge of a run's changes, or a copy: package etcstate), on the root
// still mounted read-write. /etc is never a reason to fail a boot: an
// error, or a panic, is said on the console and the boot goes on with
// /etc as it was. A boot without the database writes nothing, so it
// leaves /etc alone too.
func (r *run) switchEtc() error {
	res := r.res
	if res == nil || res.Tx == nil {
		return nil
	}
	if res.NoDatabase != "" {
		r.etc = "left as it was: booting without the database"
		r.log.logf(5, "/etc %s", r.etc)
		return nil
	}
	start := time.Now()
	sr, err := r.trySwitchEtc(res.Tx.ID)
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		r.etc = "kept as it was: " + err.Error()
		r.log.logf(4, "/etc %s (%s)", r.etc, took)
		r.log.console("txboot: /etc kept as it was: %v\n", err)
		return nil
	}
	r.etc = sr.String()
	r.log.logf(5, "%s (%s)", r.etc, took)
	for i, c := range sr.Conflicts {
		if i == maxEtcConflictLines {
			r.log.logf(5, "/etc: %d more conflicts (bootctl status lists them)", len(sr.Conflicts)-i)
			break
		}
		r.log.logf(5, "/etc/%s: %s", c.Path, c.Reason)
	}
	return nil
}

// trySwitchEtc is SwitchEtc with a panic turned into an error.
func (r *run) trySwitchEtc(id uint64) (sr *etcstate.SwitchResult, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.logf(7, "%s", debug.Stack())
			sr, err = nil, fmt.Errorf("internal error: %v", p)
		}
	}()
	sr, err = r.sys.SwitchEtc(r.plan.Sysroot, id)
	if err == nil && sr == nil {
		err = fmt.Errorf("no result")
	}
	return sr, err
}
