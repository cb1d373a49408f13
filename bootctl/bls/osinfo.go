package bls

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/txboot/txboot/initagent/cmdline"
	"golang.org/x/sys/unix"
)

// maxOSFile bounds what is read of os-release, machine-id and
// kernel/cmdline: they are a few hundred bytes; a tree is not trusted.
const maxOSFile = 64 << 10

// readBeneath reads the regular file rel below root without following any
// symlink on the way (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS): the
// files an OS tree holds must not redirect txboot to the host's.
func readBeneath(root, rel string) ([]byte, error) {
	p := filepath.Join(root, rel)
	dfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return nil, fmt.Errorf("%s: symlink, not followed: %w", p, ErrNotRegular)
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s: %s: %w", p, KindOf(st.Mode), ErrNotRegular)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	b, err := io.ReadAll(io.LimitReader(f, maxOSFile+1))
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: p, Err: err}
	}
	if len(b) > maxOSFile {
		return nil, fmt.Errorf("read %s: %w", p, ErrTooLarge)
	}
	return b, nil
}

// OSName is the menu name of the OS in the /usr tree usr: PRETTY_NAME from
// usr/lib/os-release (os-release(5)), else NAME, else "". Control
// characters are dropped so the title stays one line.
func OSName(usr string) string {
	data, err := readBeneath(usr, "lib/os-release")
	if err != nil {
		return ""
	}
	vals := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		vals[k] = unquoteShell(v)
	}
	name := vals["PRETTY_NAME"]
	if name == "" {
		name = vals["NAME"]
	}
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return -1
		}
		return r
	}, strings.ToValidUTF8(name, ""))
	if len(name) > 200 {
		name = strings.ToValidUTF8(name[:200], "")
	}
	return strings.TrimSpace(name)
}

// unquoteShell undoes os-release's shell-style quoting: "…" with \ escaping
// " \ $ `, '…' literal, and bare words with \ escapes.
func unquoteShell(v string) string {
	var b strings.Builder
	var quote byte
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				b.WriteByte(c)
			}
		case c == '\\' && i+1 < len(v) && (quote == 0 || strings.IndexByte("\"\\$`", v[i+1]) >= 0):
			i++
			b.WriteByte(v[i])
		case quote == '"':
			if c == '"' {
				quote = 0
			} else {
				b.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote = c
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// MachineID is root's /etc/machine-id when it holds a valid ID (32 hex
// digits, not all zero), lowercased; else "" ("uninitialized" on a first
// boot, or none at all).
func MachineID(root string) string {
	data, err := readBeneath(root, "etc/machine-id")
	if err != nil {
		return ""
	}
	id := strings.ToLower(strings.TrimSpace(string(data)))
	if len(id) != 32 || strings.Trim(id, "0") == "" {
		return ""
	}
	for i := 0; i < len(id); i++ {
		if !('0' <= id[i] && id[i] <= '9' || 'a' <= id[i] && id[i] <= 'f') {
			return ""
		}
	}
	return id
}

// KernelCmdline is what kernel-install would put on an entry's command
// line, read from root.
type KernelCmdline struct {
	Path    string   // the file read; "" when there is none
	Root    string   // value of its last root=, or ""
	Options string   // the other arguments, in order
	Dropped []string // initrd= and txboot.*: txboot's own, never taken
}

// ReadKernelCmdline reads root/etc/kernel/cmdline, else
// root/usr/lib/kernel/cmdline (kernel-install's order; /proc/cmdline is the
// running kernel's, with the booted tx's txboot.* in it, so it is not
// used). Lines are joined with spaces. root= is split off, as txboot writes
// it from the entries' root setting, and reserved arguments are dropped.
// No file is not an error.
func ReadKernelCmdline(root string) (KernelCmdline, error) {
	var kc KernelCmdline
	var data []byte
	for _, rel := range []string{"etc/kernel/cmdline", "usr/lib/kernel/cmdline"} {
		b, err := readBeneath(root, rel)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return kc, err
		}
		kc.Path, data = filepath.Join(root, rel), b
		break
	}
	if kc.Path == "" {
		return kc, nil
	}
	if !utf8.Valid(data) || strings.ContainsRune(string(data), 0) {
		return kc, fmt.Errorf("%s: %w", kc.Path, ErrEncoding)
	}
	var keep []string
	rest := string(data)
	for {
		rest = strings.TrimLeft(rest, " \t\n\v\f\r")
		if rest == "" {
			break
		}
		if strings.HasPrefix(rest, "--") && (len(rest) == 2 || strings.ContainsRune(" \t\n\v\f\r", rune(rest[2]))) {
			keep = append(keep, strings.Join(strings.Fields(rest), " ")) // init's arguments
			break
		}
		tok := rawToken(rest)
		rest = rest[len(tok):]
		params, _ := cmdline.Split(tok)
		switch {
		case len(params) > 0 && params[0].Key == "root":
			kc.Root = params[0].Value
		case len(params) > 0 && reservedKey(params[0].Key) != "":
			kc.Dropped = append(kc.Dropped, tok)
		default:
			keep = append(keep, tok)
		}
	}
	kc.Options = strings.Join(keep, " ")
	return kc, nil
}
