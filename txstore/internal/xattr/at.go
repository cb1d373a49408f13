package xattr

import (
	"errors"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNoAt: the kernel has no listxattrat/getxattrat (before Linux 6.13);
// read by path instead (LRead).
var ErrNoAt = errors.New("no listxattrat/getxattrat in this kernel")

// noAt is set once the kernel said ENOSYS.
var noAt atomic.Bool

// ReadAt is LRead of name in directory dirfd, relative to it: one short
// lookup instead of a walk of a whole path, which is what makes reading
// every entry's xattrs (fast verify) cheap. ErrNoAt on older kernels.
func ReadAt(dirfd int, name string) (string, error) {
	if noAt.Load() {
		return "", ErrNoAt
	}
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return "", err
	}
	var small [128]byte
	n, err := listAt(dirfd, p, small[:])
	switch {
	case err == unix.ENOSYS:
		noAt.Store(true)
		return "", ErrNoAt
	case (err == nil && n == 0) || isNotSup(err):
		return "", nil
	case err == nil:
		return readNames(atOps(dirfd, p), small[:n])
	}
	return read(atOps(dirfd, p))
}

func atOps(dirfd int, p *byte) ops { return ops{fd: dirfd, at: p} }

// listAt is listxattrat(2) without following a final symlink.
func listAt(dirfd int, p *byte, buf []byte) (int, error) {
	var bp unsafe.Pointer
	if len(buf) > 0 {
		bp = unsafe.Pointer(&buf[0])
	}
	r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
		uintptr(bp), uintptr(len(buf)), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// xattrArgs is struct xattr_args of getxattrat(2).
type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

// getAt is getxattrat(2) without following a final symlink. The value
// pointer travels inside a struct, out of the compiler's sight, so the
// kernel writes into a heap buffer (heap objects do not move), copied
// out after.
func getAt(dirfd int, p *byte, name string, buf []byte) (int, error) {
	np, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	heap := heapBuf(len(buf))
	args := xattrArgs{size: uint32(len(heap))}
	if len(heap) > 0 {
		args.value = uint64(uintptr(unsafe.Pointer(&heap[0])))
	}
	r, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
		uintptr(unsafe.Pointer(np)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	keep(heap)
	if e != 0 {
		return 0, e
	}
	if len(buf) == 0 { // a size query
		return int(r), nil
	}
	return copy(buf, heap[:r]), nil
}

// heapBuf and keep are not inlined, so the buffer is a heap object that
// lives across the syscall.
//
//go:noinline
func heapBuf(n int) []byte { return make([]byte, n) }

//go:noinline
func keep([]byte) {}

// ForceNoAt makes ReadAt act as on a kernel without the *xattrat calls,
// for tests of the by-path fallbacks; restore undoes it.
func ForceNoAt() (restore func()) {
	old := noAt.Swap(true)
	return func() { noAt.Store(old) }
}
