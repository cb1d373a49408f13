package txstore

import (
	"errors"
	"path/filepath"

	"github.com/txboot/txboot/txstore/internal/dbio"
	"golang.org/x/sys/unix"
)

// fetchLockName is the flock every live Import holds shared, from
// NewImport to Close. A pull opened with OpenFetch downloads without the
// writer lock; this lock is what keeps the writers that delete things away
// from its work: Cleanup leaves staging/import-* alone while it is held,
// and GC keeps unreferenced objects (the pull may have found or published
// them and will reference them at its commit). Both only try it, never
// wait: a slow download must not hold up a writer.
const fetchLockName = "fetch.lock"

// lockFetchShared takes Dir/fetch.lock shared for an Import, waiting at
// most Options.Timeout (only a running GC or Cleanup holds it exclusively).
func (s *Store) lockFetchShared() (int, error) {
	return dbio.Lock(filepath.Join(s.Dir, fetchLockName), unix.LOCK_SH, s.opts.Timeout)
}

// tryFetchExclusive tries Dir/fetch.lock exclusively, without waiting.
// busy reports that an Import holds it (a pull is running); otherwise the
// caller holds it until unlock, so that no Import starts meanwhile.
func (s *Store) tryFetchExclusive() (unlock func(), busy bool, err error) {
	fd, err := dbio.Lock(filepath.Join(s.Dir, fetchLockName), unix.LOCK_EX, 0)
	if errors.Is(err, ErrBusy) {
		return func() {}, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return func() { unix.Close(fd) }, false, nil
}
