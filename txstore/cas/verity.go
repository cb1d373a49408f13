package cas

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// verityState is what a Store learned about fs-verity while objects
// entered it: after the first ErrUnsupported it stops asking (a host that
// cannot seal pays one failed ioctl per Store), and it keeps why.
type verityState struct {
	off    atomic.Bool // the filesystem or kernel cannot do fs-verity
	mu     sync.Mutex
	note   string // why off, or the first other failure
	failed bool   // an object entered without fs-verity for another reason
}

// enableVerity turns fs-verity on for the staged object tmp before it is
// published, so that a sealing store only ever shows sealed objects: the
// kernel builds the Merkle tree now, while the content is likely still in
// the page cache. It needs a read-only descriptor and no writer anywhere,
// which Stage, StageLink, StageBytes and Writer.Finish leave (their file is
// closed). A failure is not the object's: it enters unsealed and the note
// says why (Seal tries again later).
func (s *Store) enableVerity(tmp string, k Key) {
	if s.v.off.Load() {
		return
	}
	f, err := os.OpenFile(tmp, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		err = verity.Enable(f)
		f.Close()
	}
	if err != nil {
		s.NoteVerity(fmt.Errorf("object %s: %w", k.RelPath(), err))
	}
}

// NoteVerity records a failure to turn fs-verity on (or to measure it):
// verity.ErrUnsupported turns the Store's attempts off for good; any other
// error is kept as the note when it is the first.
func (s *Store) NoteVerity(err error) {
	s.v.mu.Lock()
	defer s.v.mu.Unlock()
	if errors.Is(err, verity.ErrUnsupported) {
		if !s.v.off.Load() {
			s.v.note = err.Error()
			s.v.off.Store(true)
		}
		return
	}
	if !s.v.failed && !s.v.off.Load() {
		s.v.note, s.v.failed = err.Error(), true
	}
}

// VerityOff reports whether the Store found that fs-verity cannot be used
// here (verity.ErrUnsupported): nothing asks the kernel again.
func (s *Store) VerityOff() bool { return s.v.off.Load() }

// VerityNote says why objects entered without fs-verity: the
// ErrUnsupported that turned it off, else the first other failure; ""
// when every attempt worked (or none was made).
func (s *Store) VerityNote() string {
	s.v.mu.Lock()
	defer s.v.mu.Unlock()
	return s.v.note
}
