package txstore

import "github.com/txboot/txboot/txstore/bootstate"

// Candidates is what bootstate's rules (FallbackOrder, HealDefault) need to
// know of each tx.
func Candidates(txs []*Tx) []bootstate.Candidate {
	c := make([]bootstate.Candidate, len(txs))
	for i, t := range txs {
		c[i] = bootstate.Candidate{ID: t.ID, State: t.State}
	}
	return c
}
