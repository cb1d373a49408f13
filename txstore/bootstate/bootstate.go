// Package bootstate is the boot-assessment state machine of one transaction,
// kept pure so both initagent and bootctl apply exactly the same rules.
//
//	pending ──attempt──▶ trying ──mark-good──▶ good
//	   │                   │  └─attempt with no tries left─▶ bad
//	   └──────mark-bad─────┴──────────mark-bad─────────────▶ bad
package bootstate

import (
	"errors"
	"fmt"
	"sort"
)

// State of a transaction.
type State string

const (
	Pending State = "pending" // committed, never booted
	Trying  State = "trying"  // booted at least once, not yet proven
	Good    State = "good"    // proven healthy
	Bad     State = "bad"     // marked bad, or out of tries
)

// DefaultTries is how many boots a new transaction gets to prove itself,
// like greenboot's and systemd-boot's customary 3.
const DefaultTries = 3

// Errors returned by Attempt.
var (
	ErrBad        = errors.New("transaction is marked bad")
	ErrOutOfTries = errors.New("transaction has no boot tries left")
)

// Boot is the assessment part of a tx record.
type Boot struct {
	State       State  `json:"state"`
	TriesLeft   int    `json:"tries_left"`
	Tries       int    `json:"tries"` // tries spent
	LastFailure string `json:"last_failure,omitempty"`
}

// New is the state of a freshly committed transaction.
func New(tries int) Boot {
	if tries <= 0 {
		tries = DefaultTries
	}
	return Boot{State: Pending, TriesLeft: tries}
}

// Attempt spends one try before a boot of a not-yet-good tx. A good tx costs
// nothing. Without force, a bad tx or one out of tries is refused (and one
// out of tries becomes bad); with force it boots anyway, still counted.
func (b *Boot) Attempt(force bool) error {
	switch b.State {
	case Good:
		return nil
	case Bad:
		if !force {
			return fmt.Errorf("%w (%s)", ErrBad, b.reason())
		}
		b.Tries++
		return nil
	}
	if b.TriesLeft <= 0 {
		b.State = Bad
		if b.LastFailure == "" {
			b.LastFailure = trialFailure(b.Tries)
		}
		if !force {
			return fmt.Errorf("%w (%s)", ErrOutOfTries, b.LastFailure)
		}
		b.Tries++
		return nil
	}
	b.TriesLeft--
	b.Tries++
	b.State = Trying
	return nil
}

func (b *Boot) reason() string {
	if b.LastFailure != "" {
		return b.LastFailure
	}
	return "no reason recorded"
}

// MarkGood records a proven boot.
func (b *Boot) MarkGood() {
	b.State = Good
	b.LastFailure = ""
}

// MarkBad records a failed boot; the tx is not chosen again unless forced.
func (b *Boot) MarkBad(reason string) {
	b.State = Bad
	b.TriesLeft = 0
	if reason == "" {
		reason = "marked bad"
	}
	b.LastFailure = reason
}

// SyncTries adopts the bootloader's remaining-tries counter (systemd-boot's
// +LEFT) so the two counters never disagree: the lower one wins, because a
// try the firmware already spent cannot be refunded.
func (b *Boot) SyncTries(left int) {
	if b.State == Good || b.State == Bad || left < 0 {
		return
	}
	if left < b.TriesLeft {
		b.TriesLeft = left
	}
}

// Candidate is what the fallback order needs to know of a tx.
type Candidate struct {
	ID    uint64
	State State
}

// FallbackOrder is the order in which initagent tries transactions: the
// requested one first (even if bad: Attempt decides), then older good ones
// newest first, then older untested ones newest first, then — rather than a
// rescue shell — newer good ones, newest first. Bad ones are never fallbacks.
func FallbackOrder(requested uint64, all []Candidate) []uint64 {
	c := append([]Candidate(nil), all...)
	sort.Slice(c, func(i, j int) bool { return c[i].ID > c[j].ID })
	var out []uint64
	seen := map[uint64]bool{}
	push := func(id uint64) {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	for _, x := range c {
		if x.ID == requested {
			push(x.ID)
		}
	}
	for _, pass := range []func(Candidate) bool{
		func(x Candidate) bool { return x.ID < requested && x.State == Good },
		func(x Candidate) bool { return x.ID < requested && (x.State == Pending || x.State == Trying) },
		func(x Candidate) bool { return x.ID > requested && x.State == Good },
	} {
		for _, x := range c {
			if pass(x) {
				push(x.ID)
			}
		}
	}
	return out
}

// KeepCandidate is what Keep needs to know of a tx.
type KeepCandidate struct {
	ID     uint64
	State  State
	Pinned bool
}

// Keep is the one rule for which txs survive a prune and which get
// bootloader entries, so the two never disagree. Kept are:
//
//  1. the newest good tx (highest ID in state Good): the fallback of last
//     resort, and what rollback needs;
//  2. every id in protect that is among all (the default, the booted tx;
//     0 is ignored);
//  3. the pinned txs;
//  4. the first newest txs of this order: the txs that are not bad, newest
//     (highest ID) first, then the bad ones, newest first. So a bad tx
//     only takes one of the newest slots when there are fewer than newest
//     txs that are not bad: it is never kept in preference to a good,
//     pending or trying one. The slots overlap 1–3: a default that is
//     also the newest takes one.
//
// newest < 1 counts as 1.
func Keep(all []KeepCandidate, newest int, protect ...uint64) map[uint64]bool {
	if newest < 1 {
		newest = 1
	}
	c := append([]KeepCandidate(nil), all...)
	sort.Slice(c, func(i, j int) bool { return c[i].ID > c[j].ID })
	keep := map[uint64]bool{}
	prot := map[uint64]bool{}
	for _, id := range protect {
		prot[id] = true
	}
	newestGood := false
	for _, x := range c {
		if (x.State == Good && !newestGood) || prot[x.ID] || x.Pinned {
			keep[x.ID] = true
		}
		newestGood = newestGood || x.State == Good
	}
	n := 0
	for _, bad := range []bool{false, true} {
		for _, x := range c {
			if (x.State == Bad) == bad && n < newest {
				keep[x.ID] = true
				n++
			}
		}
	}
	return keep
}
