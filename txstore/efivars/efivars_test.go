package efivars

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/loader"
	"github.com/txboot/txboot/txstore/testkit"
)

var fixtures = New(filepath.Join("testdata", "efivars"))

func TestReadFixtures(t *testing.T) {
	tests := []struct {
		name string
		get  func() (string, error)
		want string
	}{
		{"info", fixtures.Info, "systemd-boot 252.22-1~deb12u1"},
		{"selected", fixtures.EntrySelected, "txboot-12+2-1.conf"},
		{"default", fixtures.EntryDefault, "txboot-11.conf"},
		{"boot count path", fixtures.BootCountPath, `\loader\entries\txboot-12+2-1.conf`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.get()
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	l, err := fixtures.Entries()
	if want := []string{"txboot-12+2-1.conf", "txboot-11.conf", "auto-reboot-to-firmware-setup"}; err != nil || !reflect.DeepEqual(l, want) {
		t.Fatalf("Entries = %q, %v", l, err)
	}
	dir, n, err := fixtures.BootCountEntry()
	want := loader.Name{Base: "txboot-12", Counting: true, Left: 2, Done: 1, LeftDigits: 1, DoneDigits: 1}
	if err != nil || dir != "loader/entries" || n != want {
		t.Fatalf("BootCountEntry = %q, %+v, %v", dir, n, err)
	}
	attrs, _, err := fixtures.Read(LoaderEntryDefault, LoaderGUID)
	if err != nil || attrs != DefaultAttrs {
		t.Fatalf("attrs = %#x, %v", attrs, err)
	}
}

func TestReadErrors(t *testing.T) {
	tests := []struct {
		name string
		v    *Vars
		vr   string
		err  error
	}{
		{"absent", fixtures, LoaderEntryOneShot, ErrNotExist},
		{"no efivarfs", New(filepath.Join(t.TempDir(), "none")), LoaderInfo, ErrNotExist},
		{"truncated", fixtures, "Truncated", ErrMalformed},
		{"odd UTF-16", fixtures, "OddLength", ErrMalformed},
		{"slash in name", fixtures, "../x", ErrBadName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.v.ReadString(tt.vr)
			if !errors.Is(err, tt.err) {
				t.Fatalf("ReadString(%s) = %v, want %v", tt.vr, err, tt.err)
			}
			if tt.err == ErrNotExist && !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%v does not match fs.ErrNotExist", err)
			}
		})
	}
	// An empty file is how efivarfs shows a variable deleted meanwhile.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, LoaderInfo+"-"+LoaderGUID), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir).Info(); !errors.Is(err, ErrNotExist) {
		t.Fatalf("empty variable: %v", err)
	}
}

func TestOneShot(t *testing.T) {
	v := New(t.TempDir())
	if err := v.ClearEntryOneShot(); err != nil {
		t.Fatalf("clearing an unset one-shot: %v", err)
	}
	if err := v.SetEntryOneShot("txboot-12345678.conf"); err != nil {
		t.Fatal(err)
	}
	// A shorter value must not leave bytes of the longer one behind.
	if err := v.SetEntryOneShot("txboot-1.conf"); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(v.Dir, LoaderEntryOneShot+"-"+LoaderGUID))
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte{7, 0, 0, 0}, utf16le("txboot-1.conf\x00")...)
	if !bytes.Equal(raw, want) {
		t.Fatalf("file = %x, want %x", raw, want)
	}
	if got, err := v.EntryOneShot(); err != nil || got != "txboot-1.conf" {
		t.Fatalf("EntryOneShot = %q, %v", got, err)
	}
	if err := v.ClearEntryOneShot(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.EntryOneShot(); !errors.Is(err, ErrNotExist) {
		t.Fatalf("after clear: %v", err)
	}
	if err := v.Delete(LoaderEntryOneShot, LoaderGUID); !errors.Is(err, ErrNotExist) {
		t.Fatalf("Delete(absent) = %v", err)
	}
	if err := v.SetEntryOneShot(""); !errors.Is(err, ErrMalformed) {
		t.Fatalf("SetEntryOneShot(\"\") = %v", err)
	}
}

// A default picked in the boot menu: cleared whatever it holds (even a
// malformed value), and clearing nothing is fine.
func TestClearEntryDefault(t *testing.T) {
	tests := []struct {
		name string
		set  []byte // raw variable data; nil = not set
		want string
	}{
		{"unset", nil, ""},
		{"txboot entry", utf16le("txboot-3.conf\x00"), "txboot-3.conf"},
		{"malformed (odd length)", []byte{'a', 0, 'b'}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := New(t.TempDir())
			if tc.set != nil {
				if err := v.Write(LoaderEntryDefault, LoaderGUID, DefaultAttrs, tc.set); err != nil {
					t.Fatal(err)
				}
			}
			old, err := v.ClearEntryDefault()
			if err != nil || old != tc.want {
				t.Fatalf("ClearEntryDefault() = %q, %v; want %q", old, err, tc.want)
			}
			if _, err := v.EntryDefault(); !errors.Is(err, ErrNotExist) {
				t.Fatalf("after clear: %v", err)
			}
		})
	}
}

func utf16le(s string) []byte {
	var b []byte
	for _, r := range s {
		b = append(b, byte(r), byte(r>>8))
	}
	return b
}

// TestImmutable checks the `chattr -i` dance on a file system with inode
// flags (ext4 and others; tmpfs since Linux 6.0). Needs CAP_LINUX_IMMUTABLE.
func TestImmutable(t *testing.T) {
	v := New(t.TempDir())
	if err := v.SetEntryOneShot("a.conf"); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(v.Dir, LoaderEntryOneShot+"-"+LoaderGUID)
	if err := setFlags(p, fsImmutableFL, true); err != nil {
		testkit.Skipf(t, "cannot set the immutable flag here: %v", err)
	}
	t.Cleanup(func() { _ = setFlags(p, fsImmutableFL, false) })
	if f, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Fatal("immutable file opened for writing; test is meaningless")
	}
	if err := v.SetEntryOneShot("b.conf"); err != nil {
		t.Fatalf("write to immutable variable: %v", err)
	}
	if got, _ := v.EntryOneShot(); got != "b.conf" {
		t.Fatalf("EntryOneShot = %q", got)
	}
	if flags, err := getFlags(p); err != nil || flags&fsImmutableFL == 0 {
		t.Fatalf("immutable flag not restored: %#x, %v", flags, err)
	}
	if err := v.ClearEntryOneShot(); err != nil {
		t.Fatalf("delete immutable variable: %v", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("variable still there: %v", err)
	}
}

func getFlags(p string) (uint32, error) {
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
}

func setFlags(p string, flag uint32, on bool) error {
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	f, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return err
	}
	if on {
		f |= flag
	} else {
		f &^= flag
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(f))
}

func TestStrings(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want string
		err  error
	}{
		{"terminated", utf16le("abc\x00"), "abc", nil},
		{"unterminated", utf16le("abc"), "abc", nil},
		{"stops at NUL", utf16le("ab\x00cd\x00"), "ab", nil},
		{"empty", nil, "", nil},
		{"surrogate pair", []byte{0x3d, 0xd8, 0x00, 0xde, 0, 0}, "\U0001F600", nil},
		{"lone surrogate", []byte{0x3d, 0xd8, 0, 0}, "\uFFFD", nil},
		{"odd", []byte{'a', 0, 'b'}, "", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeString(tt.in)
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("DecodeString = %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
	if _, err := EncodeString("a\x00b"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("EncodeString with NUL: %v", err)
	}
	if _, err := EncodeString("\xff"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("EncodeString with bad UTF-8: %v", err)
	}
	l, err := DecodeStringList(utf16le("a\x00\x00b\x00c"))
	if err != nil || !reflect.DeepEqual(l, []string{"a", "b", "c"}) {
		t.Fatalf("DecodeStringList = %q, %v", l, err)
	}
	if _, err := EncodeStringList([]string{"a", ""}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("EncodeStringList with empty: %v", err)
	}
}

func FuzzDecodeString(f *testing.F) {
	f.Add(utf16le("txboot-1.conf\x00"))
	f.Add([]byte{0x3d, 0xd8, 0x00, 0xde})
	f.Add([]byte{0x3d, 0xd8})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeString(b)
		if err != nil {
			return
		}
		if !utf8.ValidString(s) {
			t.Fatalf("invalid UTF-8 from %x", b)
		}
		enc, err := EncodeString(s)
		if err != nil {
			t.Fatalf("EncodeString(%q): %v", s, err)
		}
		if back, err := DecodeString(enc); err != nil || back != s {
			t.Fatalf("round trip %q -> %q, %v", s, back, err)
		}
	})
}

func FuzzEncodeString(f *testing.F) {
	f.Add("txboot-12+2-1.conf")
	f.Add("\U0001F600ä")
	f.Fuzz(func(t *testing.T, s string) {
		enc, err := EncodeString(s)
		if err != nil {
			return
		}
		if back, err := DecodeString(enc); err != nil || back != s {
			t.Fatalf("round trip %q -> %q, %v", s, back, err)
		}
		if l, err := DecodeStringList(enc); err != nil || (s != "" && !reflect.DeepEqual(l, []string{s})) {
			t.Fatalf("as list: %q, %v", l, err)
		}
	})
}

func FuzzDecodeStringList(f *testing.F) {
	raw, _ := os.ReadFile(filepath.Join("testdata", "efivars", LoaderEntries+"-"+LoaderGUID))
	f.Add(raw[4:])
	f.Add(utf16le("a\x00\x00b"))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := DecodeStringList(b)
		if err != nil {
			return
		}
		enc, err := EncodeStringList(l)
		if err != nil {
			t.Fatalf("EncodeStringList(%q): %v", l, err)
		}
		if back, err := DecodeStringList(enc); err != nil || !reflect.DeepEqual(back, l) {
			t.Fatalf("round trip %q -> %q, %v", l, back, err)
		}
	})
}

func FuzzDecodeVar(f *testing.F) {
	raw, _ := os.ReadFile(filepath.Join("testdata", "efivars", LoaderInfo+"-"+LoaderGUID))
	f.Add(raw)
	f.Add([]byte{7, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		attrs, data, err := DecodeVar(b)
		if err != nil {
			if len(b) >= 4 {
				t.Fatalf("DecodeVar(%x): %v", b, err)
			}
			return
		}
		if !bytes.Equal(EncodeVar(attrs, data), b) {
			t.Fatalf("round trip of %x", b)
		}
	})
}

// LoaderDevicePartUUID names the ESP systemd-boot was started from;
// systemd-boot writes it upper case, udev's by-partuuid links are lower
// case.
func TestDevicePartUUID(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte // file content; nil: no variable
		want string
		err  error
	}{
		{"upper case", EncodeVar(BootserviceAccess|RuntimeAccess, utf16le("5D0F2A3C-1B2E-4A8F-9C11-0123456789AB")), "5d0f2a3c-1b2e-4a8f-9c11-0123456789ab", nil},
		{"lower case", EncodeVar(RuntimeAccess, utf16le("5d0f2a3c-1b2e-4a8f-9c11-0123456789ab")), "5d0f2a3c-1b2e-4a8f-9c11-0123456789ab", nil},
		{"not set", nil, "", ErrNotExist},
		{"not a GUID", EncodeVar(RuntimeAccess, utf16le("../../etc")), "", ErrMalformed},
		{"GUID too long", EncodeVar(RuntimeAccess, utf16le("5d0f2a3c-1b2e-4a8f-9c11-0123456789abcd")), "", ErrMalformed},
		{"odd length", append(EncodeVar(RuntimeAccess, utf16le("5d0f2a3c")), 'x'), "", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.raw != nil {
				if err := os.WriteFile(filepath.Join(dir, LoaderDevicePartUUID+"-"+LoaderGUID), tt.raw, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := New(dir).DevicePartUUID()
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("got %q, %v; want %v", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
