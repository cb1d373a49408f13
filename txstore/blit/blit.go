// Package blit turns a manifest into a tree of hardlinks into the CAS, and
// verifies such a tree against its manifest.
package blit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// Stats describe one blit.
type Stats struct {
	Dirs, Links, Symlinks, Empty, Copies int
}

// Blit builds dst (which must not exist) from m, hardlinking file entries to
// their objects. Empty files are created fresh (thousands of links to one
// empty inode hit ext4's link limit); EMLINK and EXDEV fall back to a copy.
// Directories are created writable and get their final modes last, so a
// 0555 directory can still be filled.
func Blit(m *manifest.Manifest, objs *cas.Store, dst string, workers int) (Stats, error) {
	var st Stats
	if len(m.Entries) == 0 || m.Entries[0].Path != "." {
		return st, fmt.Errorf("blit %s: %w: no root entry", dst, manifest.ErrBad)
	}
	if workers <= 0 {
		workers = 2 * runtime.GOMAXPROCS(0)
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return st, fmt.Errorf("blit: %w", err)
	}
	var dirs []*manifest.Entry
	var rest []*manifest.Entry
	for i := range m.Entries {
		e := &m.Entries[i]
		if err := manifest.CheckPath(e.Path); err != nil {
			return st, fmt.Errorf("blit %s: %w", dst, err)
		}
		if e.Type == manifest.Dir {
			dirs = append(dirs, e)
		} else {
			rest = append(rest, e)
		}
	}
	// Parents precede children in canonical order, so one pass suffices.
	for _, e := range dirs[1:] {
		if err := unix.Mkdir(filepath.Join(dst, e.Path), 0o700); err != nil {
			return st, fmt.Errorf("blit mkdir %s: %w", filepath.Join(dst, e.Path), err)
		}
	}
	st.Dirs = len(dirs)

	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	jobs := make(chan *manifest.Entry, 512)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local Stats
			for e := range jobs {
				if err := place(e, objs, dst, &local); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
			mu.Lock()
			st.Links += local.Links
			st.Symlinks += local.Symlinks
			st.Empty += local.Empty
			st.Copies += local.Copies
			mu.Unlock()
		}()
	}
	for _, e := range rest {
		jobs <- e
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return st, firstErr
	}
	// Final directory modes, deepest first.
	for i := len(dirs) - 1; i >= 0; i-- {
		e := dirs[i]
		p := dst
		if e.Path != "." {
			p = filepath.Join(dst, e.Path)
		}
		if cas.IsRoot() && (e.UID != 0 || e.GID != 0) {
			if err := unix.Lchown(p, int(e.UID), int(e.GID)); err != nil {
				return st, fmt.Errorf("blit chown %s: %w", p, err)
			}
		}
		if err := unix.Chmod(p, e.Mode); err != nil {
			return st, fmt.Errorf("blit chmod %s: %w", p, err)
		}
	}
	return st, nil
}

func place(e *manifest.Entry, objs *cas.Store, dst string, st *Stats) error {
	p := filepath.Join(dst, e.Path)
	switch e.Type {
	case manifest.Symlink:
		if err := unix.Symlink(e.Target, p); err != nil {
			return fmt.Errorf("blit symlink %s: %w", p, err)
		}
		if cas.IsRoot() && (e.UID != 0 || e.GID != 0) {
			if err := unix.Lchown(p, int(e.UID), int(e.GID)); err != nil {
				return fmt.Errorf("blit chown %s: %w", p, err)
			}
		}
		st.Symlinks++
	case manifest.File:
		k := e.Key()
		if e.Size == 0 {
			fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o400)
			if err != nil {
				return fmt.Errorf("blit create %s: %w", p, err)
			}
			err = cas.SetAttrs(fd, k.Mode, k.UID, k.GID)
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("blit %s: %w", p, err)
			}
			st.Empty++
			return nil
		}
		err := unix.Link(objs.Path(k), p)
		if err == nil {
			st.Links++
			return nil
		}
		if !errors.Is(err, unix.EMLINK) && !errors.Is(err, unix.EXDEV) {
			return fmt.Errorf("blit link %s → object %s: %w", p, k.RelPath(), err)
		}
		if err := copyObject(objs.Path(k), p, k); err != nil {
			return err
		}
		st.Copies++
	default:
		return fmt.Errorf("blit %s: %w: type %q", p, manifest.ErrBad, e.Type)
	}
	return nil
}

func copyObject(src, dst string, k cas.Key) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("blit copy: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("blit copy: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = cas.SetAttrs(int(out.Fd()), k.Mode, k.UID, k.GID)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("blit copy %s: %w", dst, err)
	}
	return nil
}
