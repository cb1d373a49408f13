package cas

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A Writer's object holds exactly what was written, whatever the write
// sizes, through the buffered path (small) and the O_DIRECT one (≥
// directMin, tails not block-aligned, writes straddling the buffer), with
// the key's mode, and publishes to its name.
func TestWriterContent(t *testing.T) {
	s := testStore(t)
	sizes := []int{1, 4095, 4096, int(directMin) - 1, int(directMin), int(directMin) + 1, directChunk, directChunk + 7, 3<<20 + 123}
	for _, size := range sizes {
		for _, chunk := range []int{1 << 30, 1000, directChunk + 3} {
			if chunk == 1000 && size > 1<<20 {
				continue // slow and nothing new
			}
			t.Run(fmt.Sprintf("%d-%d", size, chunk), func(t *testing.T) {
				data := make([]byte, size)
				for i := range data {
					data[i] = byte(i*13 + size + chunk)
				}
				h := Hash(sha256.Sum256(data))
				k := NewKey(h, 0o755, uint32(euid), uint32(egid))
				w, err := s.Create(k, int64(size))
				if err != nil {
					t.Fatal(err)
				}
				for rest := data; len(rest) > 0; {
					n := min(chunk, len(rest))
					if m, err := w.Write(rest[:n]); err != nil || m != n {
						t.Fatalf("write %d: %d, %v", n, m, err)
					}
					rest = rest[n:]
				}
				tmp, err := w.Finish()
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(tmp, s.TmpDir+"/") {
					t.Fatalf("temp %s not in %s", tmp, s.TmpDir)
				}
				if err := s.Publish(tmp, k); err != nil {
					t.Fatal(err)
				}
				fd, err := s.Open(k)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(fd)
				got, err := HashObject(fd)
				var st unix.Stat_t
				unix.Fstat(fd, &st)
				if err != nil || got != h || st.Size != int64(size) || st.Mode&07777 != 0o555 {
					t.Fatalf("hash %s want %s, size %d, mode %o (%v)", got, h, st.Size, st.Mode&07777, err)
				}
				if _, err := os.Lstat(tmp); !os.IsNotExist(err) {
					t.Fatalf("temp %s still there: %v", tmp, err)
				}
			})
		}
	}
}

// A Writer refuses more bytes than its size, Finish refuses fewer, and
// neither leaves its temp file behind; nor does Abort.
func TestWriterWrongSize(t *testing.T) {
	s := testStore(t)
	for _, size := range []int{100, 2 * int(directMin)} {
		data := make([]byte, size)
		k := NewKey(Hash(sha256.Sum256(data)), 0o644, uint32(euid), uint32(egid))
		cases := []struct {
			name  string
			write int
			abort bool
		}{
			{"long", size + 1, false},
			{"short", size - 1, false},
			{"abort", size, true},
		}
		for _, c := range cases {
			w, err := s.Create(k, int64(size))
			if err != nil {
				t.Fatal(err)
			}
			tmp := w.Path()
			_, werr := w.Write(make([]byte, c.write))
			switch {
			case c.abort:
				w.Abort()
			case c.write > size:
				if werr == nil {
					t.Errorf("%d/%s: a write past the size was accepted", size, c.name)
				}
				w.Abort()
			default:
				if werr != nil {
					t.Fatal(werr)
				}
				if _, err := w.Finish(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("want %d", size)) {
					t.Errorf("%d/%s: Finish of a short object: %v", size, c.name, err)
				}
			}
			if _, err := os.Lstat(tmp); !os.IsNotExist(err) {
				t.Errorf("%d/%s: temp %s left behind (%v)", size, c.name, filepath.Base(tmp), err)
			}
			w.Abort() // again: a no-op
		}
	}
}

// Find names every object of the wanted contents (any mode), ignores other
// contents and non-canonical names, and survives a missing fan-out
// directory; Check stats one key and calls a symlink in its place damaged.
func TestFindCheck(t *testing.T) {
	s := testStore(t)
	put := func(data string, mode uint32) Key {
		k := NewKey(Hash(sha256.Sum256([]byte(data))), mode, uint32(euid), uint32(egid))
		tmp, err := s.StageBytes([]byte(data), k)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Publish(tmp, k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	a1, a2, b := put("a", 0o444), put("a", 0o555), put("b", 0o444)
	// Noise next to a's objects: a non-canonical name, a temp-like name.
	for _, junk := range []string{a1.Hash.String() + ".644", a1.Hash.String() + "x"} {
		if err := os.WriteFile(filepath.Join(s.Dir, fanName(a1.Hash[0]), junk), nil, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	missing := Hash(sha256.Sum256([]byte("not stored")))
	found, err := s.Find([]Hash{a1.Hash, missing})
	if err != nil {
		t.Fatal(err)
	}
	got := found[a1.Hash]
	if len(found) != 1 || len(got) != 2 || !(got[0] == a1 && got[1] == a2 || got[0] == a2 && got[1] == a1) {
		t.Fatalf("Find: %v", found)
	}
	if _, ok := found[b.Hash]; ok {
		t.Fatalf("Find returned an unwanted content")
	}
	for _, c := range []struct {
		k    Key
		want bool
	}{{a1, true}, {a2, true}, {NewKey(missing, 0o444, uint32(euid), uint32(egid)), false}} {
		if ok, err := s.Check(c.k); ok != c.want || err != nil {
			t.Errorf("Check %s: %v %v, want %v", c.k.RelPath(), ok, err, c.want)
		}
	}
	if err := os.Remove(s.Path(b)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", s.Path(b)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Check(b); ok || !errors.Is(err, ErrDamaged) {
		t.Errorf("Check of a symlink: %v %v, want ErrDamaged", ok, err)
	}
}
