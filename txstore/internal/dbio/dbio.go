// Package dbio opens the store's files safely: store.db for one bbolt
// call at a time (a damaged file is an error, never a panic or a hang, and
// is never rewritten), the flock files, and bbolt's meta pages checked by
// hand.
package dbio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/storeerr"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"
)

// Errors of opening (see package storeerr).
var (
	ErrBusy    = storeerr.ErrBusy
	ErrNoStore = storeerr.ErrNoStore
	ErrCorrupt = storeerr.ErrCorrupt
)

// Fsync makes the file at p durable.

func Fsync(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	return nil
}

// Lock takes a flock, polling until timeout.
func Lock(path string, how int, timeout time.Duration) (int, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return -1, fmt.Errorf("open lock %s: %w", path, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			unix.Close(fd)
			return -1, fmt.Errorf("lock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return -1, fmt.Errorf("%w: %s held for over %s", ErrBusy, path, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// With opens the database p (store.db) for one call of fn. bbolt panics on a damaged file (bad
// page ids, garbage pages), often only when a read reaches the damaged page,
// so the whole call — open, fn, close — runs under recover and a panic
// becomes ErrCorrupt naming the file: a damaged index must never crash
// bootctl or PID 1.
func With(p string, ro bool, timeout time.Duration, fn func(db *bbolt.DB) error) (err error) {
	dir := filepath.Dir(p)
	var file *os.File
	var db *bbolt.DB
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true)) // a stray read of the mapping panics instead of killing the process
	defer func() {
		if r := recover(); r != nil {
			abandon(db, file)
			err = fmt.Errorf("%w: %s: %s", ErrCorrupt, p, OneLine(fmt.Sprint(r)))
		}
	}()
	db, err = bbolt.Open(p, 0o600, &bbolt.Options{Timeout: timeout, ReadOnly: ro,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := OpenFile(name, flag)
			file = f
			return f, err
		}})
	if err != nil {
		return openError(p, dir, err)
	}
	err = fn(db)
	if errors.Is(err, ErrCorrupt) && !strings.Contains(err.Error(), p) {
		err = fmt.Errorf("%s: %w", p, err)
	}
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", p, cerr)
	}
	return err
}

// abandon releases what a bbolt call that panicked holds. Close is tried
// first, since it also unmaps the file; but a panic can leave one of bbolt's
// own mutexes taken, and then Close blocks forever, so it gets a moment and
// then the flock is dropped and the fd closed by hand (the mapping keeps
// the file's description, and with it the flock, alive until exit or exec).
func abandon(db *bbolt.DB, f *os.File) {
	if db != nil {
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer func() { recover() }()
			db.Close()
		}()
		select {
		case <-done:
			return
		case <-time.After(time.Second):
		}
	}
	if f != nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}
}

// errEmptyDB: bbolt would silently turn a 0-byte file into a new, empty
// database (and Cleanup would then take every tree for a leftover).
var errEmptyDB = errors.New("empty file (0 bytes)")

// OpenFile opens store.db for bbolt; tests inject I/O errors here.
var OpenFile = openDB

// openDB is bbolt's file opener: never create (the store makes its first
// database itself, in staging), never follow a symlink out of the store,
// never block on a FIFO, and refuse an empty file instead of letting bbolt
// initialise it.
func openDB(name string, flag int) (*os.File, error) {
	fd, err := unix.Open(name, flag&^os.O_CREATE|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	switch {
	case err != nil:
		err = &os.PathError{Op: "stat", Path: name, Err: err}
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		err = &os.PathError{Op: "open", Path: name, Err: unix.EISDIR}
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = fmt.Errorf("not a regular file (mode %#o)", st.Mode)
	case st.Size == 0:
		err = errEmptyDB
	default:
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, 0) // clear O_NONBLOCK
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// openError classifies a bbolt.Open failure: lock timeout, missing file,
// and I/O errors (EACCES, EIO, ELOOP …, anything carrying an errno) stay
// themselves; only what bbolt found wrong with the content is ErrCorrupt.
func openError(p, dir string, err error) error {
	var errno unix.Errno
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("%w: %s", ErrBusy, p)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w at %s", ErrNoStore, dir)
	case errors.As(err, &errno):
		return fmt.Errorf("store database: %w", err) // err names the path
	}
	// bbolt ignores a failed read of its meta pages and reports the file
	// as invalid: read the header again to tell an unreadable disk (EIO)
	// from damaged content.
	if rerr := readHeader(p); rerr != nil {
		return fmt.Errorf("store database: %w", rerr)
	}
	return fmt.Errorf("%w: %s: %w", ErrCorrupt, p, err)
}

// readHeader reads store.db's first page; only an I/O error (with its
// errno) is returned.
func readHeader(p string) error {
	f, err := OpenFile(p, os.O_RDONLY)
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			return err
		}
		return nil
	}
	defer f.Close()
	var buf [4096]byte
	if _, err := f.ReadAt(buf[:], 0); err != nil && !errors.Is(err, io.EOF) {
		var errno unix.Errno
		if errors.As(err, &errno) {
			return err // *fs.PathError: "read <p>: …"
		}
	}
	return nil
}

// OneLine keeps a panic message to one line of an error.
func OneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// MetaProblems checks bbolt's two meta pages by hand: with one of them
// damaged bbolt silently uses the other, older one, which can drop the last
// write (say, the record of the newest commit).
func MetaProblems(p string) []string {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil // the database open reports it
	}
	defer f.Close()
	page := func(off int64) ([]byte, bool) {
		b := make([]byte, 16+64)
		if _, err := f.ReadAt(b, off); err != nil {
			return nil, false
		}
		m := b[16:] // after the page header
		h := fnv.New64a()
		h.Write(m[:56])
		ok := binary.LittleEndian.Uint32(m[0:]) == 0xED0CDAED && binary.LittleEndian.Uint32(m[4:]) == 2 &&
			binary.LittleEndian.Uint64(m[56:]) == h.Sum64()
		return m, ok
	}
	m0, ok0 := page(0)
	size := int64(os.Getpagesize())
	if ok0 {
		size = int64(binary.LittleEndian.Uint32(m0[8:]))
	}
	_, ok1 := page(size)
	switch {
	case ok0 && ok1:
		return nil
	case ok0 || ok1:
		bad, good := 0, 1
		if ok0 {
			bad, good = 1, 0
		}
		return []string{fmt.Sprintf("meta page %d is damaged; bbolt uses meta page %d, which may be one write older", bad, good)}
	}
	return nil // both bad: the open fails and says so
}

// KeepOld preserves the current store.db as store.db.corrupt-<time> before
// it is replaced: a hard link (the name appears, nothing is copied; the
// database stays in place until the rename over it), else a durable copy.
// A store.db that is not a regular file (a directory, say) is renamed away.
// Returns "" when there is no store.db.
func KeepOld(p string, now time.Time) (string, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("keep %s: %w", p, err)
	}
	base := p + ".corrupt-" + now.Format("20060102T150405Z")
	saved := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(saved); errors.Is(err, os.ErrNotExist) {
			break
		}
		saved = fmt.Sprintf("%s.%d", base, i)
	}
	switch {
	case !fi.Mode().IsRegular():
		err = os.Rename(p, saved)
	default:
		if err = os.Link(p, saved); err != nil {
			err = copyDurable(p, saved)
		}
	}
	if err != nil {
		return "", fmt.Errorf("keep the old database as %s: %w", saved, err)
	}
	if err := fsx.SyncDir(filepath.Dir(p)); err != nil {
		return "", err
	}
	return saved, nil
}

// copyDurable copies src to dst via a temp file, fsynced, then renamed.
func copyDurable(src, dst string) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
