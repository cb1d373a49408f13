package txstore

import (
	"errors"
	"path/filepath"

	"github.com/txboot/txboot/txstore/sealimg"
)

// ImagePath is where tx id's sealed metadata image lives.
func (s *Store) ImagePath(id uint64) string {
	return filepath.Join(filepath.Dir(s.TreeDir(id)), sealimg.FileName)
}

// ObjectsDir is the store's objects/ directory: the data-only layer a
// sealed /usr reads content from.
func (s *Store) ObjectsDir() string { return filepath.Join(s.Dir, "objects") }

// SealResult is what Seal did to one tx.
type SealResult struct {
	ID      uint64
	Image   string // the image's fs-verity digest
	Built   bool   // the image was (re)built
	Enabled int    // files fs-verity was turned on for now
	Already int    // files that had it
	Sealed  bool
	Note    string // why not sealed
}

// Seal gives tx id an image if it has none and turns fs-verity on for
// every object it names and for its image, recording Image, Sealed and
// SealNote. A filesystem or kernel without fs-verity is not an error: the
// result says so (verity.ErrUnsupported in Note) and the tx boots unsealed.
func (s *Store) Seal(id uint64) (*SealResult, error) {
	return nil, errors.New("seal: not implemented yet")
}
