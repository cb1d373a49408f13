package cas

import (
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/internal/xattr"
	"github.com/txboot/txboot/txstore/testkit"
)

const capX = "security.capability=0100000204000000000000000000000000000000"

// stageKey stages src (content data) as k through the given path and
// publishes it.
func stageKey(t *testing.T, s *Store, src string, k Key, how string) {
	t.Helper()
	var tmp string
	var err error
	switch how {
	case "stage":
		tmp, err = s.Stage(src, k, nil)
	case "bytes":
		data, rerr := os.ReadFile(src)
		if rerr != nil {
			t.Fatal(rerr)
		}
		tmp, err = s.StageBytes(data, k)
	case "writer":
		data, rerr := os.ReadFile(src)
		if rerr != nil {
			t.Fatal(rerr)
		}
		w, cerr := s.Create(k, int64(len(data)))
		if cerr != nil {
			t.Fatal(cerr)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		tmp, err = w.Finish()
	}
	if err != nil {
		t.Fatalf("%s: %v", how, err)
	}
	if err := s.Publish(tmp, k); err != nil {
		t.Fatal(err)
	}
}

// The same content with other xattrs is another object, carrying them in
// its inode; the same content and xattrs is one object (Has finds it).
// Each way of creating an object sets them before it is published.
func TestObjectXattrs(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "security.capability needs root")
	}
	for _, how := range []string{"stage", "bytes", "writer"} {
		t.Run(how, func(t *testing.T) {
			s := testStore(t)
			src := filepath.Join(filepath.Dir(s.Dir), "src")
			if err := os.WriteFile(src, []byte("cat"), 0o755); err != nil {
				t.Fatal(err)
			}
			h := Hash(sha256.Sum256([]byte("cat")))
			plain := NewKey(h, 0o755, 0, 0)
			withCap := plain
			withCap.Xattrs = capX
			withUser := plain
			withUser.Xattrs = "user.a=01"
			if plain.Name() == withCap.Name() || withCap.Name() == withUser.Name() {
				t.Fatalf("names do not tell xattrs apart: %s %s %s", plain.Name(), withCap.Name(), withUser.Name())
			}
			for _, k := range []Key{plain, withCap, withUser} {
				stageKey(t, s, src, k, how)
				got, err := xattr.LRead(s.Path(k))
				if err != nil || got != k.Xattrs {
					t.Fatalf("object %s has xattrs %q, %v; want %q", k.Name(), got, err, k.Xattrs)
				}
			}
			ents, _ := os.ReadDir(filepath.Dir(s.Path(plain)))
			if len(ents) != 3 {
				t.Fatalf("%d objects, want 3", len(ents))
			}
			// The same content and xattrs: present, and a second publish
			// keeps the first object (dedupe).
			dup := plain
			dup.Xattrs = capX
			if has, err := s.Has(dup); err != nil || !has {
				t.Fatalf("Has(same content and xattrs) = %v, %v", has, err)
			}
			stageKey(t, s, src, dup, how)
			if ents, _ := os.ReadDir(filepath.Dir(s.Path(plain))); len(ents) != 3 {
				t.Fatalf("%d objects after a duplicate, want 3", len(ents))
			}
		})
	}
}

// An object whose xattrs were changed (a capability added or removed) is
// damaged: not reused by Has or Check, not linked by LinkObject.
func TestObjectXattrsDamaged(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "security.capability needs root")
	}
	s := testStore(t)
	src := filepath.Join(filepath.Dir(s.Dir), "src")
	if err := os.WriteFile(src, []byte("cat"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := Hash(sha256.Sum256([]byte("cat")))
	plain, withCap := NewKey(h, 0o755, 0, 0), NewKey(h, 0o755, 0, 0)
	withCap.Xattrs = capX
	stageKey(t, s, src, plain, "stage")
	stageKey(t, s, src, withCap, "stage")
	if err := unix.Lsetxattr(s.Path(plain), "security.capability", []byte{1, 0, 0, 2, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lremovexattr(s.Path(withCap), "security.capability"); err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	dfd, err := unix.Open(tree, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	for _, k := range []Key{plain, withCap} {
		s.Close() // drop the listing cache
		if _, err := s.Has(k); !errors.Is(err, ErrDamaged) {
			t.Errorf("Has(%s) = %v, want ErrDamaged", k.Name(), err)
		}
		if _, err := s.Check(k); !errors.Is(err, ErrDamaged) {
			t.Errorf("Check(%s) = %v, want ErrDamaged", k.Name(), err)
		}
		if err := s.LinkObject(k, 3, dfd, "x"); !errors.Is(err, ErrDamaged) {
			t.Errorf("LinkObject(%s) = %v, want ErrDamaged", k.Name(), err)
		}
		if _, err := os.Lstat(filepath.Join(tree, "x")); !os.IsNotExist(err) {
			t.Errorf("damaged object %s left linked", k.Name())
		}
	}
}

// StageLink takes the source inode: it gets exactly the key's xattrs, its
// own extra ones removed.
func TestStageLinkXattrs(t *testing.T) {
	s := testStore(t)
	src := filepath.Join(filepath.Dir(s.Dir), "src")
	if err := os.WriteFile(src, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(src, "user.stale", []byte("x"), 0); err != nil {
		testkit.Skipf(t, "no user xattrs here: %v", err)
	}
	h, st, err := HashFile(src)
	if err != nil {
		t.Fatal(err)
	}
	k := NewKey(h, 0o644, uint32(os.Geteuid()), uint32(os.Getegid()))
	k.Xattrs = "user.kept=6b"
	tmp, err := s.StageLink(src, k, &st)
	if errors.Is(err, ErrNoLink) {
		testkit.Skip(t, "no leases here")
	}
	if err != nil {
		t.Fatal(err)
	}
	if got, err := xattr.LRead(tmp); err != nil || got != k.Xattrs {
		t.Fatalf("staged link has xattrs %q, %v; want %q", got, err, k.Xattrs)
	}
}

// Object names with an xattr suffix parse back to a key that names the
// same file, and whose Ident matches the full key's.
func TestXattrNames(t *testing.T) {
	h := Hash(sha256.Sum256([]byte("x")))
	k := NewKey(h, 0o755, 1000, 100)
	k.Xattrs = capX
	name := k.Name()
	p, err := ParseName(name)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != name || p.Ident() != k.Ident() || p == k {
		t.Fatalf("parsed %+v from %s; ident %+v want %+v", p, name, p.Ident(), k.Ident())
	}
	plain := NewKey(h, 0o755, 0, 0)
	if plain.Ident() != plain {
		t.Fatal("Ident changed a key without xattrs")
	}
	for _, bad := range []string{name + "0", name[:len(name)-1], h.String() + ".0555.xABCDEF0123456789", h.String() + ".0555.x", h.String() + ".0555.xzzzzzzzzzzzzzzzz"} {
		if _, err := ParseName(bad); !errors.Is(err, ErrBadHash) {
			t.Errorf("accepted %q", bad)
		}
	}
}

// An object staged under a directory with a default ACL does not keep the
// copy the kernel gives it: objects have exactly their key's xattrs (and
// their key's mode, which an inherited ACL would have decided otherwise).
func TestObjectNoInheritedXattrs(t *testing.T) {
	s := testStore(t)
	// u::rwx g::rwx m::rwx o::rwx, u:1000:rwx: every new file gets an
	// access ACL and a mode from it, not from the umask.
	dflt := []byte{2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 7, 0, 0xe8, 3, 0, 0, 4, 0, 7, 0, 0xff, 0xff, 0xff, 0xff,
		0x10, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 7, 0, 0xff, 0xff, 0xff, 0xff}
	if err := unix.Setxattr(s.TmpDir, xattr.ACLDefault, dflt, 0); err != nil {
		testkit.Skipf(t, "no POSIX ACLs here: %v", err)
	}
	src := filepath.Join(filepath.Dir(s.Dir), "src")
	if err := os.WriteFile(src, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	k := NewKey(Hash(sha256.Sum256([]byte("data"))), 0o644, uint32(os.Geteuid()), uint32(os.Getegid()))
	for _, how := range []string{"stage", "writer"} {
		stageKey(t, s, src, k, how)
		if got, err := xattr.LRead(s.Path(k)); err != nil || got != "" {
			t.Fatalf("%s: object has xattrs %q, %v", how, got, err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(s.Path(k), &st); err != nil || st.Mode&07777 != k.Mode {
			t.Fatalf("%s: object mode %04o, want %04o", how, st.Mode&07777, k.Mode)
		}
		s.Close()
		if has, err := s.Has(k); err != nil || !has {
			t.Fatalf("%s: Has = %v, %v", how, has, err)
		}
		os.Remove(s.Path(k))
		s.Close()
	}
}
