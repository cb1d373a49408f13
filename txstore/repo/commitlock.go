package repo

import "github.com/txboot/txboot/txstore"

// lockCommit prepares the local steps that follow a download: what the
// import staged is published (the syncfs stays outside the lock), then
// the store's writer lock is taken (s from txstore.OpenFetch downloaded
// without it, so writers such as mark-good were never kept out; a writer
// Store already holds it). It returns the tx that has digest by now, if
// any: another pull may have committed it meanwhile, and committing it
// again would only make a twin.
func lockCommit(s *txstore.Store, im *txstore.Import, digest string) (*txstore.Tx, error) {
	if err := im.Flush(); err != nil {
		return nil, err
	}
	if err := s.LockWriter(); err != nil {
		return nil, err
	}
	txs, err := s.List()
	if err != nil {
		return nil, err
	}
	for _, t := range txs {
		if t.Digest == digest {
			return t, nil
		}
	}
	return nil, nil
}

// dropDownload removes the record of a pending download of digest, now
// committed, if there is one (read under the writer lock: a pull
// --download-only may have recorded it while this pull fetched).
func dropDownload(s *txstore.Store, digest string) error {
	ds, err := s.Downloads()
	if err != nil {
		return err
	}
	for _, d := range ds {
		if d.Digest == digest {
			return s.RemoveDownload(digest)
		}
	}
	return nil
}
