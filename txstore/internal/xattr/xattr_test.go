package xattr

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/testkit"
)

func TestDiff(t *testing.T) {
	for _, c := range []struct {
		want, got string
		out       []string
	}{
		{"", "", nil},
		{"user.a=01", "user.a=01", nil},
		{"security.capability=01", "", []string{"security.capability missing"}},
		{"user.x=01", "user.x=02", []string{"user.x differs"}},
		{"", "trusted.y=", []string{"extra xattr trusted.y"}},
		{"user.a=01,user.c=03", "user.b=02,user.c=04", []string{"user.a missing", "extra xattr user.b", "user.c differs"}},
	} {
		if got := Diff(c.want, c.got); !reflect.DeepEqual(got, c.out) {
			t.Errorf("Diff(%q, %q) = %q, want %q", c.want, c.got, got, c.out)
		}
	}
}

// ForObject strips the write bits of an access ACL's entries that mirror
// the mode (owner, mask, other), not of named entries or a default ACL.
func TestForObject(t *testing.T) {
	//               version  u::rw-                u:1000:rw-            g::rw-                m::rw-                o::rw-
	acc := "02000000" + "01000600ffffffff" + "02000600e8030000" + "04000600ffffffff" + "10000600ffffffff" + "20000600ffffffff"
	want := "02000000" + "01000400ffffffff" + "02000600e8030000" + "04000600ffffffff" + "10000400ffffffff" + "20000400ffffffff"
	if got := ForObject(ACLAccess + "=" + acc + ",user.a=02"); got != ACLAccess+"="+want+",user.a=02" {
		t.Errorf("ForObject = %q", got)
	}
	// Without a mask the owning group entry is the mode's group bits.
	noMask := "02000000" + "01000600ffffffff" + "04000600ffffffff" + "20000600ffffffff"
	if got := ForObject(ACLAccess + "=" + noMask); got != ACLAccess+"=02000000"+"01000400ffffffff"+"04000400ffffffff"+"20000400ffffffff" {
		t.Errorf("ForObject without mask = %q", got)
	}
	for _, same := range []string{"", "user.a=02", ACLDefault + "=" + acc} {
		if got := ForObject(same); got != same {
			t.Errorf("ForObject(%q) = %q", same, got)
		}
	}
}

// A tree's xattrs are read and set exactly: FSet removes what is not
// wanted, LRead sees a symlink's own; a system.* name other than the ACLs
// cannot be recorded.
func TestReadSet(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(f, "user.old", []byte("o"), 0); err != nil {
		testkit.Skipf(t, "no user xattrs: %v", err)
	}
	fd, err := unix.Open(f, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if got, err := FRead(fd); err != nil || got != "user.old=6f" {
		t.Fatalf("FRead = %q, %v", got, err)
	}
	long := "user." + strings.Repeat("n", 200) // more names than the first listing buffer holds
	want, _ := Encode([]Xattr{{Name: "user.new", Value: []byte("n")}, {Name: long, Value: make([]byte, 1000)}})
	changed, err := FSet(fd, want)
	if err != nil || !changed {
		t.Fatalf("FSet = %v, %v", changed, err)
	}
	if got, err := LRead(f); err != nil || got != want {
		t.Fatalf("after FSet: %q, %v; want %q", got, err, want)
	}
	if changed, err := FSet(fd, ""); err != nil || !changed {
		t.Fatalf("FSet none = %v, %v", changed, err)
	}
	if changed, err := FSet(fd, ""); err != nil || changed {
		t.Fatalf("FSet none again = %v, %v", changed, err)
	}
	if got, _ := FRead(fd); got != "" {
		t.Fatalf("left %q", got)
	}
	if _, err := FSet(fd, "user.b=01,user.a=01"); !errors.Is(err, ErrSyntax) {
		t.Fatalf("FSet of a non-canonical list: %v", err)
	}
	if os.Geteuid() == 0 {
		l := filepath.Join(dir, "l")
		os.Symlink("f", l)
		if _, err := LSet(l, "trusted.t=01"); err != nil {
			t.Fatal(err)
		}
		if got, _ := LRead(l); got != "trusted.t=01" {
			t.Fatalf("symlink's own xattrs: %q", got)
		}
		if got, _ := LRead(f); got != "" {
			t.Fatalf("LSet followed the symlink: %q", got)
		}
	}
	if _, err := Encode([]Xattr{{Name: "system.nfs4_acl"}}); !errors.Is(err, ErrXattr) || !strings.Contains(err.Error(), "system.nfs4_acl") {
		t.Fatalf("system.nfs4_acl: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "user.a=", "security.capability=0100000204000000000000000000000000000000,user.a%2C=01",
		"system.posix_acl_access=02000000", "user.b=01,user.a=01", "user.a=0A", "user.%41=00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		xs, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever parses is canonical: it encodes back to itself.
		if enc, err := Encode(xs); err != nil || enc != s {
			t.Fatalf("%q parsed, re-encodes to %q, %v", s, enc, err)
		}
		if ForObject(s) != s && !strings.Contains(s, ACLAccess) {
			t.Fatalf("ForObject changed %q", s)
		}
	})
}

// BenchmarkRead is the per-entry cost scan and verify add: reading the
// xattrs of a file that has none (one listxattr) and of one with one.
func BenchmarkRead(b *testing.B) {
	dir := b.TempDir()
	for _, c := range []struct {
		name string
		x    bool
	}{{"none", false}, {"one", true}} {
		p := filepath.Join(dir, c.name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		if c.x {
			if err := unix.Setxattr(p, "user.bench", []byte("v"), 0); err != nil {
				testkit.Skip(b, err.Error())
			}
		}
		fd, err := unix.Open(p, unix.O_RDONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("fd-"+c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := FRead(fd); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("path-"+c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := LRead(p); err != nil {
					b.Fatal(err)
				}
			}
		})
		dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("at-"+c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := ReadAt(dfd, c.name); err != nil {
					b.Fatal(err)
				}
			}
		})
		unix.Close(dfd)
		unix.Close(fd)
	}
}

func TestSetErrorMessage(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{unix.EOPNOTSUPP, "filesystem does not support xattr user.x: operation not supported"},
		{unix.EPERM, "cannot set xattr user.x: operation not permitted"},
	} {
		err := error(&SetError{Name: "user.x", Err: c.err})
		if err.Error() != c.want || !errors.Is(err, ErrXattr) || !errors.Is(err, c.err) {
			t.Errorf("%v: %q (is ErrXattr %v)", c.err, err, errors.Is(err, ErrXattr))
		}
	}
}

// ReadAt reads what LRead reads, relative to a directory fd, without
// following symlinks; with big values (past the first buffers) too.
func TestReadAt(t *testing.T) {
	dir := t.TempDir()
	f, l := filepath.Join(dir, "f"), filepath.Join(dir, "l")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Symlink("f", l)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	if _, err := ReadAt(dfd, "f"); err == ErrNoAt {
		testkit.Skip(t, "kernel before 6.13: no listxattrat")
	}
	long := "user." + strings.Repeat("n", 200)
	for _, want := range []string{"", "user.a=01", "user.a=01," + long + "=" + strings.Repeat("ab", 3000)} {
		if _, err := LSet(f, want); err != nil {
			testkit.Skipf(t, "no user xattrs: %v", err)
		}
		got, err := ReadAt(dfd, "f")
		if err != nil || got != want {
			t.Fatalf("ReadAt = %.40q, %v; want %.40q", got, err, want)
		}
	}
	if os.Geteuid() == 0 {
		if _, err := LSet(l, "trusted.l=02"); err != nil {
			t.Fatal(err)
		}
		if got, err := ReadAt(dfd, "l"); err != nil || got != "trusted.l=02" {
			t.Fatalf("ReadAt(symlink) = %q, %v", got, err)
		}
	}
	if _, err := ReadAt(dfd, "missing"); err != unix.ENOENT && !errors.Is(err, unix.ENOENT) {
		t.Fatalf("ReadAt(missing) = %v", err)
	}
}
