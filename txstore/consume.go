package txstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/txboot/txboot/txstore/internal/consume"
)

// checkConsumable refuses to consume (and later remove) a directory that
// holds the store or lies inside it, or a filesystem root, and returns
// its absolute path with symlinks resolved.
func (s *Store) checkConsumable(src string) (string, error) {
	abs, err := filepath.Abs(src)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fmt.Errorf("commit --consume %s: %w", src, err)
	}
	store, err := filepath.EvalSymlinks(s.Dir)
	if err != nil {
		return "", fmt.Errorf("commit --consume: %w", err)
	}
	inside := func(a, b string) bool { // a is b or under it
		rel, err := filepath.Rel(b, a)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}
	if abs == "/" || inside(abs, store) || inside(store, abs) {
		return "", fmt.Errorf("commit --consume %s: %w: it holds the store, lies in it, or is /", src, ErrInvalid)
	}
	return abs, nil
}

// newConsumeJob checks that src may be consumed and names it by absolute
// path (a symlink given as src is followed, as the scan does): the journal
// records it.
func (s *Store) newConsumeJob(src string) (*consume.Job, error) {
	abs, err := s.checkConsumable(src)
	if err != nil {
		return nil, err
	}
	return consume.New(s.consumer(), abs), nil
}

// recoverConsumed finishes what a consuming commit killed before its end
// left: if the journal's tx is recorded, only the journal goes; otherwise
// src goes back to where the user put it (see consume.Store.PutBack), from staging/ or
// from its unrecorded trees/<id>, and a GC drops the objects that were
// src's own inodes. Cleanup calls it before it empties staging/ and removes
// unrecorded trees, which would otherwise delete the user's directory.
func (s *Store) recoverConsumed() error {
	p := filepath.Join(s.Dir, consume.JournalName)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("consume journal %s: %w", p, err)
	}
	var j consume.Journal
	if err := json.Unmarshal(b, &j); err != nil || !filepath.IsAbs(j.Src) || filepath.Clean(j.Src) != j.Src || j.Src == "/" ||
		j.ID == 0 || j.Work == "" || j.Work == "." || j.Work == ".." || strings.ContainsRune(j.Work, '/') {
		return fmt.Errorf("%w: consume journal %s is unreadable; a consumed directory may be in %s: move it back, then remove the journal",
			ErrCorrupt, p, filepath.Join(s.Dir, "staging"))
	}
	t, err := s.Get(j.ID)
	if err == nil && t.Digest == j.Digest {
		return s.consumer().DropJournal() // committed; killed before the journal went
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("consume journal %s: %w", p, err)
	}
	cands := []string{filepath.Join(s.Dir, "staging", j.Work, "tree", "usr")}
	if err != nil { // no record with that id: its tree, if any, is src
		cands = append(cands, s.TreeDir(j.ID))
	}
	for _, c := range cands {
		if fi, err := os.Lstat(c); err == nil && fi.IsDir() {
			if _, err := s.consumer().PutBack(c, j.Src); err != nil {
				return err
			}
			s.GC() // best effort: objects that are src's inodes go now, or at the next GC
			return nil
		}
	}
	return s.consumer().DropJournal() // src never moved, or is back already
}

// consumer is what package consume needs of s.
func (s *Store) consumer() consume.Store {
	return consume.Store{Dir: s.Dir, Objects: s.objects, Workers: s.opts.Workers}
}
