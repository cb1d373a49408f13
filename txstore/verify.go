package txstore

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/internal/dbio"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// ManifestProblem is the Path of the Problem Verify reports when the tx's
// manifest object cannot be loaded; it is not a path in the tree.
const ManifestProblem = "manifest"

// Verify checks tx id's tree: fast or full (see blit.Verify). Problems name
// paths as "usr/…"; the error is only for failing to run at all.
func (s *Store) Verify(id uint64, mode VerifyMode) ([]Problem, error) {
	t, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	return s.verifying(mode, func() ([]Problem, error) { return s.verifyTree(t, mode) })
}

// verifyTree is Verify of tx t, under the gc lock.
func (s *Store) verifyTree(t *Tx, mode VerifyMode) ([]Problem, error) {
	id := t.ID
	m, err := s.Manifest(t)
	if err != nil {
		// Path already says "manifest" (and the caller knows the tx): keep
		// only what went wrong, which names the object.
		reason := strings.TrimPrefix(err.Error(), fmt.Sprintf("tx %d manifest: ", id))
		return []Problem{{Path: ManifestProblem, Reason: reason}}, nil
	}
	// trees/<id> is opened without following a symlink: one there (even to
	// a good copy, or to /) is damage to report, not a tree to check.
	tfd, prob := s.openTree(id)
	if prob != nil {
		return []Problem{*prob}, nil
	}
	defer unix.Close(tfd)
	probs, err := blit.VerifyAt(m, s.objects, tfd, "usr", mode == VerifyFull, s.opts.Workers, s.hashed)
	return underUsr(probs), err
}

// gcLock serialises deletions (prune, gc: exclusive) against readers that
// walk trees and objects (verify: shared).
func (s *Store) gcLock(how int) (func(), error) {
	fd, err := dbio.Lock(filepath.Join(s.Dir, "gc.lock"), how, s.opts.Timeout)
	if err != nil {
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

// VerifyManifest is Verify of tx id's tree against a manifest the caller
// found (FindManifest) rather than the one its record names.
func (s *Store) VerifyManifest(id uint64, m *manifest.Manifest, mode VerifyMode) ([]Problem, error) {
	return s.verifying(mode, func() ([]Problem, error) {
		probs, err := blit.Verify(m, s.objects, s.TreeDir(id), mode == VerifyFull, s.opts.Workers, s.hashed)
		return underUsr(probs), err
	})
}

// verifying runs a verify unless mode is VerifyOff, holding the gc lock
// shared: no prune or gc removes what it reads meanwhile.
func (s *Store) verifying(mode VerifyMode, fn func() ([]Problem, error)) ([]Problem, error) {
	if mode == VerifyOff {
		return nil, nil
	}
	unlock, err := s.gcLock(unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return fn()
}

// underUsr makes the paths of problems found in a tree's usr/ relative to
// trees/<id> ("usr/…"), as Verify reports them.
func underUsr(probs []Problem) []Problem {
	for i := range probs {
		if probs[i].Path == "." {
			probs[i].Path = "usr"
		} else {
			probs[i].Path = "usr/" + probs[i].Path
		}
	}
	return probs
}
