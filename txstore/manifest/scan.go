package manifest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/txboot/txboot/txstore/cas"
	"golang.org/x/sys/unix"
)

// FileFunc is called once per regular file after it is hashed, from a worker
// goroutine; the commit path uses it to stage new objects while other files
// are still hashing. st is the stat taken before the content was read.
type FileFunc func(e *Entry, path string, st *unix.Stat_t) error

// ScanOptions tune Scan.
type ScanOptions struct {
	Workers int      // default 2×GOMAXPROCS: hashing overlaps with I/O
	OnFile  FileFunc // optional
}

// Scan walks dir (which becomes the manifest root ".") and hashes every
// regular file in parallel. Symlinks are recorded, never followed.
func Scan(dir string, opts ScanOptions) (*Manifest, error) {
	workers := opts.Workers
	if workers <= 0 {
		workers = 2 * runtime.GOMAXPROCS(0)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("scan %s: not a directory", dir)
	}
	root := Entry{Path: ".", Type: Dir, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid}

	// Walk: directories are read in parallel; every entry is lstat'ed once.
	var (
		mu       sync.Mutex
		entries  = []Entry{root}
		files    []int // indexes of regular files in entries
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	sem := make(chan struct{}, workers)
	var walk func(rel string)
	walk = func(rel string) {
		defer wg.Done()
		sem <- struct{}{}
		abs := filepath.Join(dir, rel)
		names, err := readNames(abs)
		if err != nil {
			<-sem
			fail(err)
			return
		}
		local := make([]Entry, 0, len(names))
		var subdirs []string
		for _, name := range names {
			p := name
			if rel != "." {
				p = rel + "/" + name
			}
			var s unix.Stat_t
			if err := unix.Lstat(filepath.Join(dir, p), &s); err != nil {
				<-sem
				fail(fmt.Errorf("lstat %s: %w", filepath.Join(dir, p), err))
				return
			}
			e := Entry{Path: p, UID: s.Uid, GID: s.Gid, Mode: s.Mode & 07777}
			switch s.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				e.Type = Dir
				subdirs = append(subdirs, p)
			case unix.S_IFREG:
				e.Type = File
				e.Size = s.Size
			case unix.S_IFLNK:
				e.Type = Symlink
				e.Mode = 0
				t, err := os.Readlink(filepath.Join(dir, p))
				if err != nil {
					<-sem
					fail(fmt.Errorf("readlink %s: %w", filepath.Join(dir, p), err))
					return
				}
				e.Target = t
			default:
				<-sem
				fail(fmt.Errorf("%w: %s (mode %o): /usr may hold only directories, regular files and symlinks", ErrUnsupported, filepath.Join(dir, p), s.Mode))
				return
			}
			if err := CheckPath(p); err != nil {
				<-sem
				fail(err)
				return
			}
			local = append(local, e)
		}
		<-sem
		mu.Lock()
		base := len(entries)
		entries = append(entries, local...)
		for i := range local {
			if local[i].Type == File {
				files = append(files, base+i)
			}
		}
		mu.Unlock()
		for _, sd := range subdirs {
			wg.Add(1)
			go walk(sd)
		}
	}
	wg.Add(1)
	walk(".")
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}

	// Hash in parallel; OnFile stages new objects from the same workers.
	jobs := make(chan int, 256)
	var hwg sync.WaitGroup
	for w := 0; w < workers; w++ {
		hwg.Add(1)
		go func() {
			defer hwg.Done()
			for i := range jobs {
				e := &entries[i]
				abs := filepath.Join(dir, e.Path)
				h, s, err := cas.HashFile(abs)
				if err != nil {
					fail(err)
					continue
				}
				if s.Size != e.Size || s.Mode&07777 != e.Mode || s.Uid != e.UID || s.Gid != e.GID {
					fail(fmt.Errorf("%s changed while it was being scanned", abs))
					continue
				}
				e.Hash = h
				if opts.OnFile != nil {
					if err := opts.OnFile(e, abs, &s); err != nil {
						fail(err)
					}
				}
			}
		}()
	}
	for _, i := range files {
		mu.Lock()
		stop := firstErr != nil
		mu.Unlock()
		if stop {
			break
		}
		jobs <- i
	}
	close(jobs)
	hwg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	m := &Manifest{Entries: entries}
	m.Sort()
	return m, nil
}

// readNames lists a directory's entry names without following symlinks.
func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("read dir %s: %w", dir, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read dir %s: %w", dir, err)
	}
	return names, nil
}
