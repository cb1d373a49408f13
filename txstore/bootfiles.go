package txstore

import (
	"path/filepath"
	"strconv"
)

// Names in the store's boot/ directory, shared by bootctl (which builds a
// tx's initrd there) and prune (which removes it with the tx).
const (
	BootDir    = "boot"       // boot/<id>/: files built to boot tx id
	InitrdFile = "initrd.img" // boot/<id>/initrd.img
)

// BootFilesDir is boot/<id>: what bootctl built to boot tx id. Prune
// removes it with the tx.
func (s *Store) BootFilesDir(id uint64) string {
	return filepath.Join(s.Dir, BootDir, strconv.FormatUint(id, 10))
}

// InitrdPath is where bootctl keeps the initrd built for tx id.
func (s *Store) InitrdPath(id uint64) string {
	return filepath.Join(s.BootFilesDir(id), InitrdFile)
}
