package cas

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Writer is a new object written from a stream (a pull's download)
// straight into its staging fan-out directory with its key's mode and
// owner, so that publishing it is one rename: no temp file of its own, no
// hardlink, no second name to remove. Objects of at least directMin bytes
// are written with O_DIRECT through an aligned buffer, as Stage copies
// them (see directMin: the page-cache copy and the host's page faults
// were a pull's largest kernel cost). Durability is the caller's syncfs
// before Publish, as for Stage.
//
// Write, then Finish (the temp path for Publish) or Abort. A Writer is
// used by one goroutine.
type Writer struct {
	k      Key
	size   int64 // the bytes the caller will write, exactly
	fd     int
	tfd    int // the staging fan-out dir holding name
	name   string
	tmp    string // full path, for Publish and messages
	chmod  bool
	tmpGID int
	off    int64 // bytes written to the file
	direct bool
	bp     *[]byte // direct: the aligned buffer
	n      int     // direct: bytes in *bp not yet written
}

// Create starts object k of size bytes in TmpDir.
func (s *Store) Create(k Key, size int64) (*Writer, error) {
	d, tfd, err := s.tmpFan(k)
	if err != nil {
		return nil, err
	}
	mode, chmod := CreateMode(k.Mode)
	fd, name, direct, err := createObjectTemp(tfd, d.tmp, mode, size >= directMin)
	if err != nil {
		return nil, err
	}
	w := &Writer{k: k, size: size, fd: fd, tfd: tfd, name: name, chmod: chmod, tmpGID: d.tmpGID,
		tmp: d.tmp + "/" + fanName(k.Hash[0]) + "/" + name, direct: direct}
	if direct {
		w.bp = directPool.Get().(*[]byte)
	}
	return w, nil
}

// Write implements io.Writer. Writing more than size bytes is an error.
func (w *Writer) Write(p []byte) (int, error) {
	if w.fd < 0 {
		return 0, fmt.Errorf("write object %s: already finished", w.k.RelPath())
	}
	if w.off+int64(w.n)+int64(len(p)) > w.size {
		return 0, fmt.Errorf("write object %s: more than its %d bytes", w.k.RelPath(), w.size)
	}
	if !w.direct {
		if err := pwriteAll(w.fd, p, w.off); err != nil {
			return 0, fmt.Errorf("write %s: %w", w.tmp, err)
		}
		w.off += int64(len(p))
		return len(p), nil
	}
	written := 0
	for len(p) > 0 {
		buf := *w.bp
		c := copy(buf[w.n:], p)
		w.n += c
		p = p[c:]
		written += c
		if w.n == len(buf) {
			if err := w.flushDirect(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// flushDirect writes the buffered bytes at w.off, the last block zero
// padded (Finish truncates). A filesystem that refuses O_DIRECT on the
// first write turns it off here, for this file and the process.
func (w *Writer) flushDirect() error {
	buf := *w.bp
	n := w.n
	aligned := (n + directAlign - 1) &^ (directAlign - 1)
	clear(buf[n:aligned])
	err := pwriteAll(w.fd, buf[:aligned], w.off)
	if err == unix.EINVAL && w.off == 0 {
		directOK.Store(false)
		if err = clearDirect(w.fd); err == nil {
			w.direct = false
			err = pwriteAll(w.fd, buf[:n], 0)
		}
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", w.tmp, err)
	}
	w.off += int64(n)
	w.n = 0
	return nil
}

func pwriteAll(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		m, err := unix.Pwrite(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b, off = b[m:], off+int64(m)
	}
	return nil
}

// Finish writes what is buffered, checks that exactly size bytes were
// written, gives the file its key's owner and mode, closes it and returns
// its path for Publish. On error the file is removed.
func (w *Writer) Finish() (string, error) {
	if w.fd < 0 {
		return "", fmt.Errorf("write object %s: already finished", w.k.RelPath())
	}
	fail := func(err error) (string, error) {
		w.Abort()
		return "", err
	}
	if w.direct && w.n > 0 {
		if err := w.flushDirect(); err != nil {
			return fail(err)
		}
	}
	if w.off != w.size {
		return fail(fmt.Errorf("write object %s: %d bytes, want %d", w.k.RelPath(), w.off, w.size))
	}
	if w.direct && w.off%directAlign != 0 {
		if err := unix.Ftruncate(w.fd, w.off); err != nil {
			return fail(fmt.Errorf("truncate %s: %w", w.tmp, err))
		}
	}
	if err := finishAttrs(w.fd, w.k, w.chmod, w.tmpGID); err != nil {
		return fail(fmt.Errorf("object %s: %w", w.k.RelPath(), err))
	}
	w.release()
	err := unix.Close(w.fd)
	w.fd = -1
	if err != nil {
		unix.Unlinkat(w.tfd, w.name, 0)
		return "", fmt.Errorf("close temp object %s: %w", w.tmp, err)
	}
	return w.tmp, nil
}

// Abort closes and removes the file; safe after Finish (a no-op then).
func (w *Writer) Abort() {
	if w.fd < 0 {
		return
	}
	w.release()
	unix.Close(w.fd)
	w.fd = -1
	unix.Unlinkat(w.tfd, w.name, 0)
}

func (w *Writer) release() {
	if w.bp != nil {
		directPool.Put(w.bp)
		w.bp = nil
	}
}

// Path is the temp file's path (for messages).
func (w *Writer) Path() string { return w.tmp }

// Key is the object's key; Size the bytes it must hold.
func (w *Writer) Key() Key    { return w.k }
func (w *Writer) Size() int64 { return w.size }
