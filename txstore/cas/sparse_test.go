package cas

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/testkit"
)

// A sparse file is staged sparsely: a 512 MiB file with 4 KiB of data (in
// the middle) and a data tail makes an object of about that much disk, with
// the same size and bytes.
func TestStageSparse(t *testing.T) {
	s := testStore(t)
	const size = 512 << 20
	cases := []struct {
		name string
		data map[int64][]byte // offset → bytes
	}{
		{"data in the middle", map[int64][]byte{256 << 20: bytes.Repeat([]byte("m"), 4096)}},
		{"data at the start and an unaligned tail", map[int64][]byte{0: bytes.Repeat([]byte("s"), 4096), size - 100: bytes.Repeat([]byte("t"), 100)}},
		{"all hole", nil},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := filepath.Join(filepath.Dir(s.Dir), "sparse")
			os.Remove(src)
			f, err := os.Create(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(size); err != nil {
				t.Fatal(err)
			}
			for off, b := range c.data {
				if _, err := f.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
			var st unix.Stat_t
			if err := unix.Stat(src, &st); err != nil {
				t.Fatal(err)
			}
			if st.Blocks*512 > 1<<20 {
				testkit.Skipf(t, "the test filesystem does not keep holes (%d blocks)", st.Blocks)
			}
			k := NewKey(Hash(sha256.Sum256([]byte{byte(i)})), 0o644, uint32(os.Geteuid()), uint32(os.Getegid()))
			tmp, err := s.Stage(src, k, &st)
			if err != nil {
				t.Fatal(err)
			}
			var ost unix.Stat_t
			if err := unix.Stat(tmp, &ost); err != nil {
				t.Fatal(err)
			}
			if ost.Size != size {
				t.Fatalf("object size %d, want %d", ost.Size, size)
			}
			if ost.Blocks*512 > 1<<20 {
				t.Fatalf("object takes %d KiB on disk for %d KiB of data", ost.Blocks/2, st.Blocks/2)
			}
			of, err := os.Open(tmp)
			if err != nil {
				t.Fatal(err)
			}
			defer of.Close()
			for off, b := range c.data {
				// The data with the hole byte before and after it, if any.
				want, start := append([]byte(nil), b...), off
				if off > 0 {
					want, start = append([]byte{0}, want...), off-1
				}
				if off+int64(len(b)) < size {
					want = append(want, 0)
				}
				got := make([]byte, len(want))
				if n, err := of.ReadAt(got, start); n != len(got) {
					t.Fatalf("read at %d: %d bytes, %v", start, n, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("bytes around %d differ", off)
				}
			}
			os.Remove(tmp)
		})
	}
}
