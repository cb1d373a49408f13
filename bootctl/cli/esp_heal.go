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
func healESP(s *txstore.Store, c entriesConfig) (*bls.HealReport, error) {
	txs, err := s.List()
	if err != nil {
		return nil, err
	}
	def, err := s.Default()
	if err != nil {
		return nil, err
	}
	rep, err := bls.Heal(bls.HealConfig{ESP: c.ESP, Default: def}, healSources(s, txs))
	if err != nil {
		return nil, fmt.Errorf("check the ESP %s: %w", c.espName(), err)
	}
	return &rep, nil
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
// otherwise writes nothing): the entries' kernels and initrds are hashed,
// and only a damaged one is rewritten. Exit 3 when one cannot be repaired.
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
	hr, err := healESP(s, c)
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
