package xattr

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// ops are the xattr syscalls on one file, by descriptor or, when path is
// set, by path (a symlink has no descriptor to read them through, so it
// goes by path with the l* calls, which never follow it). A plain struct,
// not closures: this is built once per entry of a tree.
type ops struct {
	fd   int
	path string
	at   *byte // name relative to fd (ReadAt): the *xattrat calls
}

func fdOps(fd int) ops        { return ops{fd: fd} }
func pathOps(path string) ops { return ops{fd: -1, path: path} }

func (o ops) list(b []byte) (int, error) {
	if o.at != nil {
		return listAt(o.fd, o.at, b)
	}
	if o.path != "" {
		return unix.Llistxattr(o.path, b)
	}
	return unix.Flistxattr(o.fd, b)
}

func (o ops) get(name string, b []byte) (int, error) {
	if o.at != nil {
		return getAt(o.fd, o.at, name, b)
	}
	if o.path != "" {
		return unix.Lgetxattr(o.path, name, b)
	}
	return unix.Fgetxattr(o.fd, name, b)
}

func (o ops) set(name string, v []byte) error {
	if o.at != nil {
		return unix.ENOSYS // ReadAt only reads
	}
	if o.path != "" {
		return unix.Lsetxattr(o.path, name, v, 0)
	}
	return unix.Fsetxattr(o.fd, name, v, 0)
}

func (o ops) remove(name string) error {
	if o.at != nil {
		return unix.ENOSYS
	}
	if o.path != "" {
		return unix.Lremovexattr(o.path, name)
	}
	return unix.Fremovexattr(o.fd, name)
}

// FRead returns the canonical encoding of open file fd's xattrs.
func FRead(fd int) (string, error) {
	// Most files have none: one flistxattr, no allocation, is the whole
	// cost then (scan and verify run this over every entry of a tree).
	var small [128]byte
	n, err := unix.Flistxattr(fd, small[:])
	if (err == nil && n == 0) || isNotSup(err) {
		return "", nil
	}
	if err == nil { // the names fit: no need to list them again
		return readNames(fdOps(fd), small[:n])
	}
	return read(fdOps(fd))
}

// LRead is FRead by path, not following a final symlink.
func LRead(path string) (string, error) {
	var small [128]byte
	n, err := unix.Llistxattr(path, small[:])
	if (err == nil && n == 0) || isNotSup(err) {
		return "", nil
	}
	if err == nil {
		return readNames(pathOps(path), small[:n])
	}
	return read(pathOps(path))
}

// names returns the raw name list (NUL-separated), nil when none.
func names(o ops) ([]byte, error) {
	// Most files have none: one listxattr into a stack-sized buffer is
	// the whole cost then (this runs over every entry of a tree).
	var small [256]byte
	buf := small[:]
	for {
		n, err := retry(func() (int, error) { return o.list(buf) })
		switch {
		case err == nil:
			if n == 0 {
				return nil, nil
			}
			return append([]byte(nil), buf[:n]...), nil
		case isNotSup(err):
			return nil, nil
		case err != unix.ERANGE:
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		// Too small (or the list grew since we sized it): ask the size.
		n, err = retry(func() (int, error) { return o.list(nil) })
		if err != nil {
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		buf = make([]byte, n+64)
	}
}

func value(o ops, name string, buf []byte) ([]byte, error) {
	for {
		n, err := retry(func() (int, error) { return o.get(name, buf) })
		if err == nil {
			return buf[:n], nil
		}
		if err != unix.ERANGE {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		n, err = retry(func() (int, error) { return o.get(name, nil) })
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		if n > ValueMax {
			return nil, fmt.Errorf("%w: %s value is %d bytes (at most %d)", ErrTooBig, name, n, ValueMax)
		}
		buf = make([]byte, n+64)
	}
}

func read(o ops) (string, error) {
	raw, err := names(o)
	if raw == nil || err != nil {
		return "", err
	}
	return readNames(o, raw)
}

// readNames reads the values of the listed names raw and encodes them.
func readNames(o ops, raw []byte) (string, error) {
	var xs []Xattr
	var small [256]byte
	buf := small[:]
	for _, n := range strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00") {
		if !Allowed(n) {
			return "", fmt.Errorf("%w %q: unsupported namespace (txboot records security.*, trusted.*, user.* and POSIX ACLs)", ErrXattr, n)
		}
		v, err := value(o, n, buf)
		if err == unix.ENODATA || errors.Is(err, unix.ENODATA) {
			continue // removed since the listing
		}
		if err != nil {
			return "", err
		}
		xs = append(xs, Xattr{Name: n, Value: append([]byte(nil), v...)})
	}
	return Encode(xs)
}

// FSet makes open file fd's xattrs exactly want (a canonical encoding):
// it sets each wanted attribute and removes any other (one the kernel
// added by inheritance, say a default ACL's copy or an SELinux label). It
// reports whether it changed anything; changing an access ACL changes the
// mode's group bits, so callers chmod afterwards when it did.
func FSet(fd int, want string) (bool, error) { return setExact(fdOps(fd), want) }

// LSet is FSet by path, not following a final symlink.
func LSet(path string, want string) (bool, error) { return setExact(pathOps(path), want) }

func setExact(o ops, want string) (bool, error) {
	xs, err := Parse(want)
	if err != nil {
		return false, err
	}
	raw, err := names(o)
	if err != nil {
		return false, err
	}
	if raw == nil && len(xs) == 0 {
		return false, nil
	}
	changed := false
	keep := map[string]bool{}
	for i := range xs {
		keep[xs[i].Name] = true
	}
	if raw != nil {
		for _, n := range strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00") {
			if keep[n] {
				continue
			}
			if err := o.remove(n); err != nil && err != unix.ENODATA {
				return changed, fmt.Errorf("remove xattr %s: %w", n, err)
			}
			changed = true
		}
	}
	for i := range xs {
		if err := o.set(xs[i].Name, xs[i].Value); err != nil {
			return changed, &SetError{Name: xs[i].Name, Err: err}
		}
		changed = true
	}
	return changed, nil
}

// SetError is a failure to set one attribute; it is an ErrXattr and wraps
// the errno.
type SetError struct {
	Name string
	Err  error
}

func (e *SetError) Error() string {
	if e.NotSupported() {
		return "filesystem does not support xattr " + e.Name + ": " + e.Err.Error()
	}
	return "cannot set xattr " + e.Name + ": " + e.Err.Error()
}

func (e *SetError) Unwrap() []error { return []error{ErrXattr, e.Err} }

// NotSupported: the filesystem has no such attributes (ENOTSUP), say a
// store on a filesystem mounted without user xattrs.
func (e *SetError) NotSupported() bool { return isNotSup(e.Err) }

func isNotSup(err error) bool { return err == unix.ENOTSUP || err == unix.EOPNOTSUPP }

func retry(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}
