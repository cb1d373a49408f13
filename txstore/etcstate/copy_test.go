package etcstate

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var timeZero = time.Unix(0, 0)

// richEtc is an /etc with every kind of entry and attribute Copy keeps.
func richEtc(t *testing.T, dir string) string {
	return build(t, dir,
		f("hostname", "box\n"),
		f("shadow", "root:*:1::::::\n").mod(0o640).own(0, 42),
		d("ssl/private").mod(0o710).own(0, 111),
		f("ssl/private/key.pem", "KEY").mod(0o640).own(0, 111),
		f("sbin-helper", "#!x").mod(0o4755),
		d("sticky").mod(0o1777),
		f("ping", "ELF").mod(0o755).xab("security.capability", capNetRaw()),
		f("acl.txt", "acl").xab("system.posix_acl_access", acl()),
		f("tagged", "t").xa("user.mime", "text/plain").xa("trusted.t", "1"),
		d("tagged-dir").xa("user.d", "x"),
		l("localtime", "/usr/share/zoneinfo/Etc/UTC"),
		l("dangling", "../nowhere"),
		l("ssl/certs", "/usr/share/ca-certificates").own(7, 7),
		e{p: "initctl", typ: 'p'},
		f("empty", ""),
		d("a/b/c/d"),
		f("a/b/c/d/deep", "deep"),
		f(MarkerName, "3\n"),
	)
}

func TestCopyExact(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	src := richEtc(t, filepath.Join(tmp, "src"))
	// A device node too, where the filesystem allows one.
	if err := unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Logf("no device node in the test tree: %v", err)
	}
	mtime := unix.NsecToTimespec(1_600_000_000_123_456_789)
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, "hostname"), []unix.Timespec{mtime, mtime}, 0); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(tmp, "dst")
	if err := Copy(src, dst); err != nil {
		t.Fatal(err)
	}
	want := strings.ReplaceAll(dump(t, src), "\n"+MarkerName+" 100644 0:0 \"3\\n\"", "")
	if got := dump(t, dst); got != want {
		t.Errorf("copy differs:\n got %s\nwant %s", got, want)
	}
	if exists(filepath.Join(dst, MarkerName)) {
		t.Error("the marker was copied")
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dst, "hostname"), &st); err != nil || st.Mtim != mtime {
		t.Errorf("mtime %v, want %v (%v)", st.Mtim, mtime, err)
	}
	if eq, err := Equal(src, dst); err != nil || !eq {
		t.Errorf("Equal(src, copy) = %v, %v", eq, err)
	}
	// Copying onto something that exists is refused.
	if err := Copy(src, dst); !errors.Is(err, ErrExists) {
		t.Errorf("copy onto an existing dst: %v, want ErrExists", err)
	}
}

// Equal sees every kind of difference and nothing else (times, the marker).
func TestEqual(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name   string
		change func(dir string) error
		equal  bool
	}{
		{"same", func(string) error { return nil }, true},
		{"times", func(d string) error { return os.Chtimes(filepath.Join(d, "hostname"), timeZero, timeZero) }, true},
		{"marker", func(d string) error { return os.WriteFile(filepath.Join(d, MarkerName), []byte("9\n"), 0o644) }, true},
		{"content", func(d string) error { return os.WriteFile(filepath.Join(d, "hostname"), []byte("other\n"), 0o644) }, false},
		{"mode", func(d string) error { return os.Chmod(filepath.Join(d, "hostname"), 0o600) }, false},
		{"owner", func(d string) error { return os.Lchown(filepath.Join(d, "hostname"), 1, 1) }, false},
		{"xattr", func(d string) error { return unix.Lsetxattr(filepath.Join(d, "hostname"), "user.x", []byte("1"), 0) }, false},
		{"capability gone", func(d string) error { return unix.Removexattr(filepath.Join(d, "ping"), "security.capability") }, false},
		{"target", func(d string) error {
			os.Remove(filepath.Join(d, "localtime"))
			return os.Symlink("/elsewhere", filepath.Join(d, "localtime"))
		}, false},
		{"added", func(d string) error { return os.WriteFile(filepath.Join(d, "new"), nil, 0o644) }, false},
		{"removed", func(d string) error { return os.Remove(filepath.Join(d, "empty")) }, false},
		{"deep", func(d string) error { return os.WriteFile(filepath.Join(d, "a/b/c/d/deep"), []byte("x"), 0o644) }, false},
		{"dir mode", func(d string) error { return os.Chmod(filepath.Join(d, "a/b"), 0o700) }, false},
		{"file to dir", func(d string) error {
			os.Remove(filepath.Join(d, "empty"))
			return os.Mkdir(filepath.Join(d, "empty"), 0o644)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			a := richEtc(t, filepath.Join(tmp, "a"))
			b := filepath.Join(tmp, "b")
			if err := Copy(a, b); err != nil {
				t.Fatal(err)
			}
			if err := tc.change(b); err != nil {
				t.Fatal(err)
			}
			if eq, err := Equal(a, b); err != nil || eq != tc.equal {
				t.Errorf("Equal = %v, %v; want %v", eq, err, tc.equal)
			}
		})
	}
}

// The bounds are enforced with a clear error.
func TestCopyBounds(t *testing.T) {
	tmp := t.TempDir()
	src := build(t, filepath.Join(tmp, "src"), f("big", ""))
	if err := os.Truncate(filepath.Join(src, "big"), MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	err := Copy(src, filepath.Join(tmp, "dst"))
	if !errors.Is(err, ErrTooBig) || !strings.Contains(err.Error(), "big") {
		t.Errorf("copy of a file over MaxFileSize: %v, want ErrTooBig naming it", err)
	}
	if _, err := Equal(src, src); !errors.Is(err, ErrTooBig) {
		t.Errorf("Equal over MaxFileSize: %v, want ErrTooBig", err)
	}
	// A symlinked top is not followed.
	if err := os.Symlink(src, filepath.Join(tmp, "link")); err != nil {
		t.Fatal(err)
	}
	if err := Copy(filepath.Join(tmp, "link"), filepath.Join(tmp, "dst2")); err == nil {
		t.Error("Copy followed a symlinked source")
	}
}

// TestKeptBeside finds what dpkg, ucf and txboot kept beside, nothing else.
func TestKeptBeside(t *testing.T) {
	root := t.TempDir()
	build(t, filepath.Join(root, "etc"),
		f("a.conf", ""), f("a.conf.dpkg-dist", ""), f("x/b.conf.dpkg-new", ""),
		f("c.ucf-dist", ""), f("d/e.txboot-new", ""), f(".dpkg-dist", ""), f("a.conf.dpkg-old", ""))
	got, err := KeptBeside(root)
	want := []string{"a.conf.dpkg-dist", "c.ucf-dist", "d/e.txboot-new", "x/b.conf.dpkg-new"}
	if err != nil || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("KeptBeside = %q, %v; want %q", got, err, want)
	}
}

// TestOwner: the marker is read strictly.
func TestOwner(t *testing.T) {
	for _, tc := range []struct {
		data  string // "" no marker
		id    uint64
		ok    bool
		isErr bool
	}{
		{"", 0, false, false},
		{"12\n", 12, true, false},
		{"12", 0, false, true},
		{"012\n", 0, false, true},
		{"0\n", 0, false, true},
		{"x\n", 0, false, true},
		{"1\n2\n", 0, false, true},
		{strings.Repeat("1", 40) + "\n", 0, false, true},
	} {
		root := t.TempDir()
		build(t, filepath.Join(root, "etc"))
		if tc.data != "" {
			write(t, filepath.Join(root, "etc", MarkerName), tc.data)
		}
		id, ok, err := Owner(root)
		if id != tc.id || ok != tc.ok || (err != nil) != tc.isErr || (tc.isErr && !errors.Is(err, ErrBadMarker)) {
			t.Errorf("marker %q: Owner = %d, %v, %v", tc.data, id, ok, err)
		}
	}
	if _, _, err := Owner(t.TempDir()); !errors.Is(err, ErrNoEtc) {
		t.Errorf("no /etc: %v, want ErrNoEtc", err)
	}
}
