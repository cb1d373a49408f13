// Package verity computes and applies fs-verity (Documentation/filesystems/
// fsverity.rst): a file's digest is SHA-256 over a descriptor that holds
// the root of a Merkle tree of its 4096-byte blocks. The kernel computes
// the same tree when FS_IOC_ENABLE_VERITY seals a file, checks every page
// against it on read, and reports the digest in constant time
// (FS_IOC_MEASURE_VERITY). Digest computes it in userspace, so a host
// whose kernel cannot seal (no CONFIG_FS_VERITY) still names files by it.
package verity

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockSize is the Merkle tree block size txboot uses (the page size on
// x86-64; ext4 requires block size == page size before 6.3).
const BlockSize = 4096

const (
	hashSHA256  = 1  // FS_VERITY_HASH_ALG_SHA256
	logBlock    = 12 // log2(BlockSize)
	descSize    = 256
	hashesBlock = BlockSize / sha256.Size
)

// Sum is an fs-verity SHA-256 digest.
type Sum [sha256.Size]byte

// Prefix is how a Sum is spelled in text: "sha256:" + 64 hex digits.
const Prefix = "sha256:"

func (s Sum) String() string { return Prefix + hex.EncodeToString(s[:]) }

// IsZero reports an unset Sum.
func (s Sum) IsZero() bool { return s == Sum{} }

// ErrBadSum: a digest string that is not "sha256:" + 64 lowercase hex.
var ErrBadSum = errors.New("malformed fs-verity digest")

// ParseSum parses Sum.String's form.
func ParseSum(s string) (Sum, error) {
	var d Sum
	h, ok := strings.CutPrefix(s, Prefix)
	if !ok || len(h) != 2*sha256.Size || strings.ToLower(h) != h {
		return d, fmt.Errorf("%w: %q", ErrBadSum, s)
	}
	if _, err := hex.Decode(d[:], []byte(h)); err != nil {
		return d, fmt.Errorf("%w: %q", ErrBadSum, s)
	}
	return d, nil
}

// Digest reads r to its end and returns its fs-verity digest and length.
func Digest(r io.Reader) (Sum, int64, error) {
	h := hashers.Get().(*Hasher)
	defer hashers.Put(h)
	h.Reset()
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	for {
		n, err := r.Read(*bp)
		h.Write((*bp)[:n])
		if err == io.EOF {
			return h.Sum(), h.Size(), nil
		}
		if err != nil {
			return Sum{}, h.Size(), err
		}
	}
}

// DigestBytes is Digest of b.
func DigestBytes(b []byte) Sum {
	h := hashers.Get().(*Hasher)
	defer hashers.Put(h)
	h.Reset()
	h.Write(b)
	return h.Sum()
}

// hashers and readBufs keep Digest from allocating per call: an image
// step may digest 100k small objects.
var (
	hashers  = sync.Pool{New: func() any { return NewHasher() }}
	readBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}
)

// descriptorDigest hashes struct fsverity_descriptor (version 1, no salt).
func descriptorDigest(root [sha256.Size]byte, size int64) Sum {
	var d [descSize]byte
	d[0] = 1 // version
	d[1] = hashSHA256
	d[2] = logBlock
	binary.LittleEndian.PutUint64(d[8:], uint64(size))
	copy(d[16:], root[:])
	return sha256.Sum256(d[:])
}

// Sentinel errors of Enable and Measure.
var (
	// ErrUnsupported: the kernel or filesystem cannot do fs-verity here
	// (no CONFIG_FS_VERITY, ext4 without the verity feature, tmpfs, …).
	ErrUnsupported = errors.New("fs-verity is not supported on this filesystem or kernel")
	// ErrNotEnabled: the file has no fs-verity (Measure).
	ErrNotEnabled = errors.New("file has no fs-verity")
)

func classify(err error) error {
	switch {
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.ENOSYS):
		return fmt.Errorf("%w (%w)", ErrUnsupported, err)
	case errors.Is(err, unix.ENODATA):
		return fmt.Errorf("%w (%w)", ErrNotEnabled, err)
	}
	return err
}

// Enable seals f (open read-only, no writer anywhere) with fs-verity:
// from now on its content cannot change and every read is checked. It is
// idempotent: a file already sealed is not an error. It reads the whole
// file (the kernel builds the Merkle tree).
func Enable(f *os.File) error {
	arg := unix.FsverityEnableArg{Version: 1, Hash_algorithm: hashSHA256, Block_size: BlockSize}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_ENABLE_VERITY, uintptr(unsafe.Pointer(&arg)))
	if e == 0 || e == unix.EEXIST {
		return nil
	}
	return fmt.Errorf("enable fs-verity on %s: %w", f.Name(), classify(e))
}

// EnablePath opens path read-only and Enables it.
func EnablePath(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return Enable(f)
}

// Measure returns f's fs-verity digest from the kernel, in constant time.
func Measure(f *os.File) (Sum, error) {
	var buf struct {
		unix.FsverityDigest
		d [64]byte
	}
	buf.Size = uint16(len(buf.d))
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_MEASURE_VERITY, uintptr(unsafe.Pointer(&buf)))
	if e != 0 {
		return Sum{}, fmt.Errorf("measure fs-verity of %s: %w", f.Name(), classify(e))
	}
	if buf.Algorithm != hashSHA256 || buf.Size != sha256.Size {
		return Sum{}, fmt.Errorf("measure fs-verity of %s: algorithm %d size %d, want SHA-256", f.Name(), buf.Algorithm, buf.Size)
	}
	var s Sum
	copy(s[:], buf.d[:])
	return s, nil
}

// MeasurePath opens path read-only and Measures it.
func MeasurePath(path string) (Sum, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Sum{}, err
	}
	defer f.Close()
	return Measure(f)
}

// DigestPath is the fs-verity digest of path's content: measured by the
// kernel when the file is sealed, else computed here.
func DigestPath(path string) (Sum, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Sum{}, err
	}
	defer f.Close()
	if s, err := Measure(f); err == nil {
		return s, nil
	}
	s, _, err := Digest(f)
	if err != nil {
		return Sum{}, fmt.Errorf("fs-verity digest of %s: %w", path, err)
	}
	return s, nil
}
