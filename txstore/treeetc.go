package txstore

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// EtcDir is the name, beside a tree's usr/ in trees/<id>, of the /etc
// state a tx carries (CommitOptions.Etc; package etcstate writes and
// reads it). It goes with the tree (prune, cleanup, reblit keeps it) but
// is not part of the tx: no digest covers it, verify and fsck ignore it.
const EtcDir = "etc"

// EtcStateDir is where tx id's /etc state lives (see EtcDir).
func (s *Store) EtcStateDir(id uint64) string {
	return filepath.Join(filepath.Dir(s.TreeDir(id)), EtcDir)
}

// checkEtc refuses a CommitOptions.Etc that the commit could not move
// into its tree: not a directory (a symlink is not followed), or on
// another filesystem than the store.
func (s *Store) checkEtc(etc string) error {
	if etc == "" {
		return nil
	}
	var st, sst unix.Stat_t
	if err := unix.Lstat(etc, &st); err != nil {
		return fmt.Errorf("commit: /etc state %s: %w", etc, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("commit: %w: /etc state %s is not a directory", ErrInvalid, etc)
	}
	if err := unix.Stat(s.Dir, &sst); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if st.Dev != sst.Dev {
		return fmt.Errorf("commit: %w: /etc state %s is not on the store's filesystem (%s)", ErrInvalid, etc, s.Dir)
	}
	return nil
}

// placeEtc moves o.Etc to root/etc, beside the tree's usr/, before the
// syncfs that makes the tree durable.
func (j *commitJob) placeEtc(root string) error {
	if j.o.Etc == "" {
		return nil
	}
	if err := os.Rename(j.o.Etc, filepath.Join(root, EtcDir)); err != nil {
		return fmt.Errorf("commit %s: place the /etc state: %w", j.name, err)
	}
	return nil
}
