package bootstate

import "fmt"

// AdoptLoaderCounter takes systemd-boot's remaining-tries counter for the
// entry it booted (from LoaderBootCountPath; < 0: unknown). The loader names
// the entry after it spent this boot's try, while the store spends it in
// Attempt, so the store's count before this boot is the loader's plus one.
// It reports whether the store's count went down.
func (b *Boot) AdoptLoaderCounter(loaderLeft int) bool {
	if loaderLeft < 0 {
		return false
	}
	before := b.TriesLeft
	b.SyncTries(loaderLeft + 1)
	return b.TriesLeft != before
}

// TrialOver reports whether the tx was on trial and has no tries left. Once
// another tx was booted, such a tx failed its trial: systemd-boot skips an
// entry with no tries left by itself, and only mark-good ends a trial well.
func (b *Boot) TrialOver() bool { return b.State == Trying && b.TriesLeft <= 0 }

// FailTrial marks a tx whose trial is over (TrialOver) bad, with the reason
// Attempt would give, and reports whether it did.
func (b *Boot) FailTrial() bool {
	if !b.TrialOver() {
		return false
	}
	b.MarkBad(trialFailure(b.Tries))
	return true
}

func trialFailure(tries int) string { return fmt.Sprintf("not marked good after %d tries", tries) }

// HealDefault is the one rule for moving a bad default, applied by
// initagent after it booted a good tx and by bootctl after mark-good and
// mark-bad. If the default def is bad (or has no record), the new default is
//
//  1. booted, when it is good: it has just been shown to boot here;
//  2. else the first good tx of FallbackOrder(def): the tx initagent
//     itself falls back to when the bad default is requested, so the
//     store's default then names what the machine boots anyway.
//
// It returns 0 when the default stays: def is 0 (none recorded), def is
// not bad, or no tx is good. A new default is always a good tx.
func HealDefault(def uint64, all []Candidate, booted uint64) uint64 {
	if def == 0 {
		return 0
	}
	state := map[uint64]State{}
	for _, c := range all {
		state[c.ID] = c.State
	}
	if s, ok := state[def]; ok && s != Bad {
		return 0
	}
	if booted != def && state[booted] == Good {
		return booted
	}
	for _, id := range FallbackOrder(def, all) {
		if id != def && state[id] == Good {
			return id
		}
	}
	return 0
}
