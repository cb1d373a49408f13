// Package efivars reads and writes systemd-boot's EFI variables (the Boot
// Loader Interface) through efivarfs.
//
// u-root's pkg/efivarfs is not used: its constructor insists on the efivarfs
// magic and keeps the path unexported, so it cannot be pointed at a test
// directory; it needs github.com/google/uuid, which is not in go.sum; and it
// fails to remove a variable where FS_IOC_GETFLAGS is unsupported. What is
// needed here is small: read, one-write(2) write, and remove, with the
// immutable flag handled the way systemd and chattr do.
package efivars

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/txstore/loader"
)

// DefaultDir is where the kernel mounts efivarfs. A variable only so that
// tests can point every default at a temporary directory, never the host's.
var DefaultDir = "/sys/firmware/efi/efivars"

// LoaderGUID is systemd-boot's vendor GUID for the Boot Loader Interface.
const LoaderGUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

// Variable names systemd-boot sets or reads.
const (
	LoaderEntrySelected = "LoaderEntrySelected" // entry ID booted this time
	LoaderEntryDefault  = "LoaderEntryDefault"  // persistent default (overrides loader.conf)
	LoaderEntryOneShot  = "LoaderEntryOneShot"  // entry ID to boot next time only
	LoaderBootCountPath = "LoaderBootCountPath" // ESP path of the counted entry booted
	LoaderEntries       = "LoaderEntries"       // all entry IDs in the menu
	LoaderInfo          = "LoaderInfo"          // boot loader name and version
	// LoaderDevicePartUUID is the GPT partition UUID of the ESP the boot
	// loader was started from.
	LoaderDevicePartUUID = "LoaderDevicePartUUID"
)

// Attributes is the EFI variable attribute bit mask.
type Attributes uint32

// Attribute bits (UEFI spec, GetVariable).
const (
	NonVolatile       Attributes = 0x1
	BootserviceAccess Attributes = 0x2
	RuntimeAccess     Attributes = 0x4
)

// DefaultAttrs are the attributes systemd uses for persistent loader
// variables such as LoaderEntryOneShot.
const DefaultAttrs = NonVolatile | BootserviceAccess | RuntimeAccess

// fsImmutableFL is FS_IMMUTABLE_FL from <linux/fs.h>; x/sys/unix lacks it.
const fsImmutableFL = 0x10

// MaxVarSize bounds what is read; loader variables are tiny, efivarfs
// variables are limited by NVRAM to tens of KiB.
const MaxVarSize = 1 << 20

// Sentinel errors, for errors.Is.
var (
	// ErrNotExist: the variable is not set, or there is no efivarfs (not
	// booted with UEFI, or not via systemd-boot). Errors carrying it also
	// match fs.ErrNotExist.
	ErrNotExist  = errors.New("EFI variable not set")
	ErrMalformed = errors.New("malformed EFI variable")
	ErrBadName   = errors.New("invalid EFI variable name")
)

// Vars accesses the variables in one efivarfs directory.
type Vars struct {
	Dir string // efivarfs mount point; "" means DefaultDir
}

// New returns Vars for dir ("" for DefaultDir).
func New(dir string) *Vars {
	return &Vars{Dir: dir}
}

func (v *Vars) path(name, guid string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", fmt.Errorf("%w: %q", ErrBadName, name)
	}
	if len(guid) != 36 || strings.ContainsAny(guid, "/\x00") {
		return "", fmt.Errorf("%w: GUID %q", ErrBadName, guid)
	}
	dir := v.Dir
	if dir == "" {
		dir = DefaultDir
	}
	return filepath.Join(dir, name+"-"+strings.ToLower(guid)), nil
}

func notExist(p string, err error) error {
	return fmt.Errorf("%s: %w: %w", p, ErrNotExist, err)
}

// Read returns a variable's attributes and data.
func (v *Vars) Read(name, guid string) (Attributes, []byte, error) {
	p, err := v.path(name, guid)
	if err != nil {
		return 0, nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil, notExist(p, err)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, MaxVarSize+1))
	if err != nil {
		return 0, nil, err // *fs.PathError: already "read <p>: …"
	}
	if len(buf) > MaxVarSize {
		return 0, nil, fmt.Errorf("%s: %w: larger than %d bytes", p, ErrMalformed, MaxVarSize)
	}
	// efivarfs shows a variable deleted behind its back as an empty file.
	if len(buf) == 0 {
		return 0, nil, notExist(p, fs.ErrNotExist)
	}
	attrs, data, err := DecodeVar(buf)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", p, err)
	}
	return attrs, data, nil
}

// Write sets a variable: attributes and data in a single write(2), as
// efivarfs requires, after clearing the immutable flag efivarfs puts on
// existing variables. The flag is restored afterwards, as systemd does.
func (v *Vars) Write(name, guid string, attrs Attributes, data []byte) error {
	p, err := v.path(name, guid)
	if err != nil {
		return err
	}
	restore, err := makeMutable(p)
	if err != nil {
		return err
	}
	defer restore()
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer unix.Close(fd)
	buf := EncodeVar(attrs, data)
	n, err := unix.Write(fd, buf)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if n != len(buf) {
		return fmt.Errorf("write %s: short write %d of %d bytes", p, n, len(buf))
	}
	// efivarfs replaces the variable on write; a plain file (tests) needs
	// truncating to match.
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err == nil && uint32(st.Type) != uint32(unix.EFIVARFS_MAGIC) {
		if err := unix.Ftruncate(fd, int64(len(buf))); err != nil {
			return fmt.Errorf("truncate %s: %w", p, err)
		}
	}
	return nil
}

// Delete removes a variable. Deleting a variable that is not set returns an
// error matching ErrNotExist.
func (v *Vars) Delete(name, guid string) error {
	p, err := v.path(name, guid)
	if err != nil {
		return err
	}
	if _, err := makeMutable(p); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return notExist(p, err)
		}
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// makeMutable clears FS_IMMUTABLE_FL on p if set (like `chattr -i`) and
// returns a function that sets it again. A missing file, or a file system
// without inode flags, needs nothing.
func makeMutable(p string) (restore func(), err error) {
	nop := func() {}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ENOENT) {
		return nop, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return nop, nil
		}
		return nil, fmt.Errorf("get flags of %s: %w", p, err)
	}
	if flags&fsImmutableFL == 0 {
		unix.Close(fd)
		return nop, nil
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags&^fsImmutableFL)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("clear immutable flag of %s: %w", p, err)
	}
	return func() {
		// Best effort: efivarfs sets the flag again at the next mount.
		_ = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags))
		unix.Close(fd)
	}, nil
}

// ReadString reads a loader variable holding a UTF-16LE string.
func (v *Vars) ReadString(name string) (string, error) {
	_, data, err := v.Read(name, LoaderGUID)
	if err != nil {
		return "", err
	}
	s, err := DecodeString(data)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

// EntrySelected is the ID of the entry booted this time.
func (v *Vars) EntrySelected() (string, error) { return v.ReadString(LoaderEntrySelected) }

// EntryDefault is the default entry set from the menu or `bootctl set-default`.
func (v *Vars) EntryDefault() (string, error) { return v.ReadString(LoaderEntryDefault) }

// Info is the boot loader's name and version, e.g. "systemd-boot 252.22-1".
func (v *Vars) Info() (string, error) { return v.ReadString(LoaderInfo) }

// EntryOneShot is the pending one-shot choice, if any.
func (v *Vars) EntryOneShot() (string, error) { return v.ReadString(LoaderEntryOneShot) }

// BootCountPath is the ESP path of the counted entry file booted this time,
// as the boot loader renamed it: `\loader\entries\txboot-12+2-1.conf`.
func (v *Vars) BootCountPath() (string, error) { return v.ReadString(LoaderBootCountPath) }

// BootCountEntry reads LoaderBootCountPath and parses it
// (loader.ParseBootCountPath).
func (v *Vars) BootCountEntry() (dir string, name loader.Name, err error) {
	p, err := v.BootCountPath()
	if err != nil {
		return "", loader.Name{}, err
	}
	return loader.ParseBootCountPath(p)
}

// DevicePartUUID is the partition UUID of the ESP systemd-boot started
// from, lower case (as udev's /dev/disk/by-partuuid names it; systemd-boot
// writes it upper case). Anything but a GUID is ErrMalformed: the value
// becomes part of a path.
func (v *Vars) DevicePartUUID() (string, error) {
	s, err := v.ReadString(LoaderDevicePartUUID)
	if err != nil {
		return "", err
	}
	if !isGUID(s) {
		return "", fmt.Errorf("%s: %w: %q is not a GUID", LoaderDevicePartUUID, ErrMalformed, s)
	}
	return strings.ToLower(s), nil
}

// isGUID: 8-4-4-4-12 hex digits.
func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'):
			return false
		}
	}
	return true
}

// Entries lists the IDs of all entries in the boot menu.
func (v *Vars) Entries() ([]string, error) {
	_, data, err := v.Read(LoaderEntries, LoaderGUID)
	if err != nil {
		return nil, err
	}
	l, err := DecodeStringList(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", LoaderEntries, err)
	}
	return l, nil
}

// SetEntryOneShot makes systemd-boot boot entry id (or the first matching a
// glob) next time only; it deletes the variable once read.
func (v *Vars) SetEntryOneShot(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty entry ID", ErrMalformed)
	}
	data, err := EncodeString(id)
	if err != nil {
		return err
	}
	return v.Write(LoaderEntryOneShot, LoaderGUID, DefaultAttrs, data)
}

// ClearEntryOneShot cancels a pending one-shot choice; none pending is fine.
func (v *Vars) ClearEntryOneShot() error {
	if err := v.Delete(LoaderEntryOneShot, LoaderGUID); err != nil && !errors.Is(err, ErrNotExist) {
		return err
	}
	return nil
}

// ClearEntryDefault removes a default chosen in the boot menu (systemd-boot
// writes LoaderEntryDefault on its 'd' key; it overrides loader.conf's
// default) and returns what it named; nothing set returns "", nil.
func (v *Vars) ClearEntryDefault() (string, error) {
	old, err := v.EntryDefault()
	if errors.Is(err, ErrNotExist) {
		return "", nil
	}
	if err != nil && !errors.Is(err, ErrMalformed) {
		return "", err
	}
	if err := v.Delete(LoaderEntryDefault, LoaderGUID); err != nil && !errors.Is(err, ErrNotExist) {
		return old, err
	}
	return old, nil
}

// DecodeVar splits efivarfs file content into attributes and data.
func DecodeVar(raw []byte) (Attributes, []byte, error) {
	if len(raw) < 4 {
		return 0, nil, fmt.Errorf("%w: %d bytes, no attributes", ErrMalformed, len(raw))
	}
	return Attributes(binary.LittleEndian.Uint32(raw)), raw[4:], nil
}

// EncodeVar is the efivarfs file content for attrs and data.
func EncodeVar(attrs Attributes, data []byte) []byte {
	buf := make([]byte, 4, 4+len(data))
	binary.LittleEndian.PutUint32(buf, uint32(attrs))
	return append(buf, data...)
}

// DecodeString decodes a UTF-16LE string ending at the first NUL (or at the
// end of data: a missing terminator is tolerated). Unpaired surrogates
// become U+FFFD.
func DecodeString(data []byte) (string, error) {
	if len(data)%2 != 0 {
		return "", fmt.Errorf("%w: odd UTF-16 length %d", ErrMalformed, len(data))
	}
	u := make([]uint16, 0, len(data)/2)
	for i := 0; i < len(data); i += 2 {
		c := binary.LittleEndian.Uint16(data[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u)), nil
}

// EncodeString encodes s as UTF-16LE with a terminating NUL.
func EncodeString(s string) ([]byte, error) {
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		return nil, fmt.Errorf("%w: string %q", ErrMalformed, s)
	}
	u := utf16.Encode([]rune(s))
	out := make([]byte, 0, 2*len(u)+2)
	for _, c := range u {
		out = binary.LittleEndian.AppendUint16(out, c)
	}
	return append(out, 0, 0), nil
}

// DecodeStringList decodes a list of NUL-terminated UTF-16LE strings, as in
// LoaderEntries. Empty strings are skipped; the final terminator may be
// missing.
func DecodeStringList(data []byte) ([]string, error) {
	if len(data)%2 != 0 {
		return nil, fmt.Errorf("%w: odd UTF-16 length %d", ErrMalformed, len(data))
	}
	var out []string
	var cur []uint16
	flush := func() {
		if len(cur) > 0 {
			out = append(out, string(utf16.Decode(cur)))
		}
		cur = cur[:0]
	}
	for i := 0; i < len(data); i += 2 {
		c := binary.LittleEndian.Uint16(data[i:])
		if c == 0 {
			flush()
			continue
		}
		cur = append(cur, c)
	}
	flush()
	return out, nil
}

// EncodeStringList encodes strings as LoaderEntries holds them.
func EncodeStringList(l []string) ([]byte, error) {
	var out []byte
	for _, s := range l {
		if s == "" {
			return nil, fmt.Errorf("%w: empty string in list", ErrMalformed)
		}
		b, err := EncodeString(s)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}
