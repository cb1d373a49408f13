package cas

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestKeyNames(t *testing.T) {
	h := Hash(sha256.Sum256([]byte("x")))
	cases := []struct {
		k    Key
		want string
	}{
		{NewKey(h, 0o644, 0, 0), h.String() + ".0444"},
		{NewKey(h, 0o4755, 0, 0), h.String() + ".4555"},
		{NewKey(h, 0o600, 1000, 100), h.String() + ".0400.1000.100"},
	}
	for _, c := range cases {
		if c.k.Name() != c.want {
			t.Errorf("name %s want %s", c.k.Name(), c.want)
		}
		k, err := ParseName(c.want)
		if err != nil || k != c.k {
			t.Errorf("parse %s: %v %v", c.want, k, err)
		}
	}
	for _, bad := range []string{"", "x", h.String(), h.String() + ".644", h.String() + ".0644", h.String() + ".0444.0.0", h.String() + ".0444.1", "../" + h.String() + ".0444"} {
		if _, err := ParseName(bad); !errors.Is(err, ErrBadHash) {
			t.Errorf("accepted %q", bad)
		}
	}
}

// Staging copies content exactly through both paths: buffered (small) and
// O_DIRECT (≥ directMin, with a tail that is not block-aligned), and
// StageLink takes a singly linked file by hardlink; each published object
// re-hashes to its key.
func TestStagePaths(t *testing.T) {
	s := testStore(t)
	dir := filepath.Dir(s.Dir)
	for _, size := range []int{1, 4095, int(directMin) - 1, int(directMin), 3<<20 + 123} {
		for _, link := range []bool{false, true} {
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(i*7 + size + len(fmt.Sprint(link)))
			}
			src := filepath.Join(dir, fmt.Sprintf("src-%d-%v", size, link))
			if err := os.WriteFile(src, data, 0o644); err != nil {
				t.Fatal(err)
			}
			h, st, err := HashFile(src)
			if err != nil {
				t.Fatal(err)
			}
			k := NewKey(h, 0o644, st.Uid, st.Gid)
			var tmp string
			if link {
				tmp, err = s.StageLink(src, k, &st)
			} else {
				tmp, err = s.Stage(src, k, &st)
			}
			if err != nil {
				t.Fatalf("size %d link %v: %v", size, link, err)
			}
			if err := s.Publish(tmp, k); err != nil {
				t.Fatal(err)
			}
			fd, err := s.Open(k)
			if err != nil {
				t.Fatal(err)
			}
			got, err := HashObject(fd)
			var ost unix.Stat_t
			unix.Fstat(fd, &ost)
			unix.Close(fd)
			if err != nil || got != h || ost.Size != int64(size) || ost.Mode&07777 != 0o444 {
				t.Fatalf("size %d link %v: hash %s want %s, size %d, mode %o (%v)", size, link, got, h, ost.Size, ost.Mode&07777, err)
			}
			if (ost.Ino == st.Ino) != link {
				t.Fatalf("size %d link %v: object inode shared with the source: %v", size, link, ost.Ino == st.Ino)
			}
		}
	}
}

// testStore is an empty CAS in a temp dir (objects/ and tmp/), closed
// when the test ends.
func testStore(t *testing.T) *Store {
	t.Helper()
	dir := t.TempDir()
	s := &Store{Dir: dir + "/objects", TmpDir: dir + "/tmp"}
	for _, d := range []string{s.Dir, s.TmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { s.Close() })
	return s
}
