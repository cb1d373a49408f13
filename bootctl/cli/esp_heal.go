package cli

import (
	"fmt"
	"path/filepath"

	"github.com/txboot/txboot/bootctl/bls"
	"github.com/txboot/txboot/txstore"
)

// healSources lists every tx of the store that has a kernel, with the
// host paths bls.Heal may rewrite a damaged ESP file from: the kernel in
// its tree and the initrd built for it. Missing files are left to Heal to
// report.
func healSources(s *txstore.Store, txs []*txstore.Tx) []bls.TxInfo {
	var out []bls.TxInfo
	for _, t := range txs {
		if len(t.Kernels) == 0 {
			continue
		}
		kver := t.Kernels[len(t.Kernels)-1]
		out = append(out, bls.TxInfo{ID: t.ID, Digest: t.Digest, Kernel: kver,
			KernelPath: filepath.Join(s.TreeDir(t.ID), "lib/modules", kver, "vmlinuz"), InitrdPath: initrdPath(s, t.ID),
			Good: t.State == txstore.StateGood, Bad: t.State == txstore.StateBad})
	}
	return out
}

// healESP checks every kernel and initrd the entries on c's ESP name and
// repairs the damaged ones (status, and health on a boot not on trial:
// verbs that do not sync). The store may be read-only: the ESP files are
// named by their content, so a repair writes what any writer would.
// nextOnly limits the check to what the next boots need (nextBoots).
func healESP(s *txstore.Store, c entriesConfig, nextOnly bool) (*bls.HealReport, error) {
	txs, err := s.List()
	if err != nil {
		return nil, err
	}
	def, err := s.Default()
	if err != nil {
		return nil, err
	}
	src := healSources(s, txs)
	cfg := bls.HealConfig{ESP: c.ESP, Default: def}
	if nextOnly {
		cfg.Only = nextBoots(def, src)
	}
	rep, err := bls.Heal(cfg, src)
	if err != nil {
		return nil, fmt.Errorf("check the ESP %s: %w", c.espName(), err)
	}
	return &rep, nil
}

// nextBoots is what the next boots need on the ESP: the default's entry
// and the fallback's (the newest good tx other than the default: the entry
// bls gives its own copies). nil, everything, without a default (the
// loader then picks by its own order). Every sync still checks them all.
func nextBoots(def uint64, txs []bls.TxInfo) map[uint64]bool {
	if def == 0 {
		return nil
	}
	only := map[uint64]bool{def: true}
	var fb uint64
	for _, t := range txs {
		if t.ID != def && t.Good && t.ID > fb {
			fb = t.ID
		}
	}
	if fb != 0 {
		only[fb] = true
	}
	return only
}

// unrepaired is the exit error of a verb that found a kernel or initrd on
// the ESP damaged beyond what the store can repair (nil if none).
func unrepaired(reps []bls.Repair) error {
	n := 0
	for _, r := range reps {
		if r.Err != nil {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return exitError{ExitProblems, fmt.Sprintf("%d file(s) on the ESP are damaged and could not be repaired from the store (see above); the entries naming them cannot boot", n)}
}

// healthCheckESP is health's ESP check on a boot not on trial (which
// otherwise writes nothing): the kernels and initrds of the default's and
// the fallback's entries are hashed (every boot: the rest waits for the
// next sync, which checks all), and only a damaged one is rewritten. Exit
// 3 when one cannot be repaired.
func healthCheckESP(e *env, ef *entryFlags) error {
	s, err := e.openExisting(false)
	if err != nil {
		return err
	}
	defer s.Close()
	c, ok, err := loadEntriesConfig(s, e.root, ef)
	if err != nil || !ok {
		return err
	}
	hr, err := healESP(s, c, true)
	if err != nil {
		return err
	}
	for _, r := range hr.Repairs {
		fmt.Fprintf(e.stdout, "health: %s\n", printable(r.String()))
	}
	for _, p := range hr.Shared {
		fmt.Fprintf(e.stdout, "health: the fallback entry shares %s with the default's (the ESP had no room for its own copy at the last sync)\n", printable(p.Path))
	}
	return unrepaired(hr.Repairs)
}
