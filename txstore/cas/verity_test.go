package cas

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// Objects get fs-verity as they are published, whichever way they were
// staged. This host's kernel has no CONFIG_FS_VERITY, so here the first
// Publish turns the Store's attempts off and says why, and every object
// still enters (unsealed); where the kernel and filesystem can seal (the
// QEMU guests' ext4 with the verity feature), each object is sealed and the
// kernel's digest is the one computed in Go.
func TestPublishEnablesVerity(t *testing.T) {
	s := testStore(t)
	src := filepath.Join(t.TempDir(), "src")
	stagers := []struct {
		name  string
		stage func(data []byte, k Key) (string, error)
	}{
		{"writer", func(data []byte, k Key) (string, error) {
			w, err := s.Create(k, int64(len(data)))
			if err != nil {
				return "", err
			}
			if _, err := w.Write(data); err != nil {
				return "", err
			}
			return w.Finish()
		}},
		{"bytes", s.StageBytes},
		{"stage", func(data []byte, k Key) (string, error) {
			if err := os.WriteFile(src, data, 0o644); err != nil {
				return "", err
			}
			_, st, err := HashFile(src)
			if err != nil {
				return "", err
			}
			return s.Stage(src, k, &st)
		}},
	}
	for i, st := range stagers {
		t.Run(st.name, func(t *testing.T) {
			data := []byte(strings.Repeat(fmt.Sprintf("object %d ", i), 2000))
			k := NewKey(sha256.Sum256(data), 0o644, uint32(euid), uint32(egid))
			tmp, err := st.stage(data, k)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Publish(tmp, k); err != nil {
				t.Fatal(err)
			}
			got, err := verity.MeasurePath(s.Path(k))
			switch {
			case s.VerityOff():
				if !errors.Is(err, verity.ErrUnsupported) && !errors.Is(err, verity.ErrNotEnabled) {
					t.Errorf("measure after the Store gave up: %v", err)
				}
				if !strings.Contains(s.VerityNote(), "not supported") {
					t.Errorf("note %q does not say fs-verity is unsupported", s.VerityNote())
				}
			case err != nil:
				t.Fatalf("verity on, but the object is not sealed: %v (note %q)", err, s.VerityNote())
			case got != verity.DigestBytes(data):
				t.Fatalf("kernel digest %s, computed %s", got, verity.DigestBytes(data))
			}
			if err := s.Verify(k); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// NoteVerity: ErrUnsupported turns attempts off for good and is the note;
// another failure is noted (the first only) and attempts go on.
func TestNoteVerity(t *testing.T) {
	unsup := fmt.Errorf("object ab/x: %w", verity.ErrUnsupported)
	busy := fmt.Errorf("object ab/y: %w", unix.ETXTBSY)
	for _, tc := range []struct {
		name string
		errs []error
		off  bool
		note string
	}{
		{"none", nil, false, ""},
		{"unsupported", []error{unsup}, true, unsup.Error()},
		{"other", []error{busy, verity.ErrUnsupported}, true, verity.ErrUnsupported.Error()},
		{"first other kept", []error{busy, errors.New("second")}, false, busy.Error()},
		{"unsupported stays", []error{unsup, busy}, true, unsup.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Store{}
			for _, err := range tc.errs {
				s.NoteVerity(err)
			}
			if s.VerityOff() != tc.off || s.VerityNote() != tc.note {
				t.Errorf("off %v note %q, want %v %q", s.VerityOff(), s.VerityNote(), tc.off, tc.note)
			}
		})
	}
}
