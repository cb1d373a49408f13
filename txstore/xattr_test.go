package txstore_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testkit"
	"github.com/txboot/txboot/txstore/testtree"
)

// xattrSource is the sample tree plus a copy of cat given
// cap_dac_read_search+ep by setcap, the same content without it, and a
// user.* xattr on a directory.
func xattrSource(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Skip(t, "needs root: security.capability")
	}
	src := sampleDir(t, testtree.File{Path: "bin/cat", Data: "cat binary", Mode: 0o755},
		testtree.File{Path: "bin/cat-plain", Data: "cat binary", Mode: 0o755})
	cat := filepath.Join(src, "bin/cat")
	if out, err := exec.Command("setcap", "cap_dac_read_search+ep", cat).CombinedOutput(); err != nil {
		// Without setcap, the raw v2 capability it would write.
		if err := unix.Setxattr(cat, "security.capability", []byte{1, 0, 0, 2, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0); err != nil {
			t.Fatalf("setcap: %v %s; setxattr: %v", err, out, err)
		}
	}
	if err := unix.Setxattr(filepath.Join(src, "lib"), "user.note", []byte("kept"), 0); err != nil {
		t.Fatal(err)
	}
	return src
}

func capOf(t *testing.T, p string) string {
	t.Helper()
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(p, "security.capability", buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// A committed tree keeps its files' capabilities and its directories'
// xattrs, copied or consumed; the object with a capability survives GC.
func TestCommitKeepsXattrs(t *testing.T) {
	for _, consume := range []bool{false, true} {
		t.Run(map[bool]string{false: "copy", true: "consume"}[consume], func(t *testing.T) {
			s, _ := newStore(t)
			src := xattrSource(t)
			want := capOf(t, filepath.Join(src, "bin/cat"))
			tx, _, err := s.Commit(src, txstore.CommitOptions{Consume: consume})
			if err != nil {
				t.Fatal(err)
			}
			tree := s.TreeDir(tx.ID)
			if got := capOf(t, filepath.Join(tree, "bin/cat")); got == "" || got != want {
				t.Fatalf("bin/cat capability %x, want %x", got, want)
			}
			if got := capOf(t, filepath.Join(tree, "bin/cat-plain")); got != "" {
				t.Fatalf("bin/cat-plain got a capability: the two share an object")
			}
			buf := make([]byte, 16)
			if n, err := unix.Lgetxattr(filepath.Join(tree, "lib"), "user.note", buf); err != nil || string(buf[:n]) != "kept" {
				t.Fatalf("lib user.note: %q, %v", buf[:n], err)
			}
			m, err := s.Manifest(tx)
			if err != nil {
				t.Fatal(err)
			}
			if m.Version != 2 || !strings.Contains(string(m.Encode()), "\nf bin/cat 0755 0 0 10 ") ||
				!strings.Contains(string(m.Encode()), " x:security.capability=01000002") {
				t.Fatalf("manifest v%d:\n%s", m.Version, m.Encode())
			}
			gc, err := s.GC()
			if err != nil {
				t.Fatal(err)
			}
			if gc.Removed != 0 {
				t.Fatalf("gc removed %d objects of a live tree", gc.Removed)
			}
			if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
				t.Fatalf("verify: %v %v", probs, err)
			}
			// Stripping the capability from the shared inode is damage.
			if err := unix.Removexattr(filepath.Join(tree, "bin/cat"), "security.capability"); err != nil {
				t.Fatal(err)
			}
			probs, err := s.Verify(tx.ID, txstore.VerifyFast)
			if err != nil || len(probs) != 1 || !strings.HasSuffix(probs[0].String(), "bin/cat: security.capability missing") || !probs[0].InStore {
				t.Fatalf("verify after stripping: %v %v", probs, err)
			}
		})
	}
}
