package blit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// Problem is one thing wrong with a tree, by path relative to the tree root.
type Problem struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

func (p Problem) String() string { return p.Path + ": " + p.Reason }

// ext4's link limit; an object at it may legitimately have copies.
const maxLinks = 65000

// Verify checks dir against m. Fast (full=false) reads no file content: it
// checks every entry's presence, type, mode, owner, size, symlink target,
// that each file is a hardlink of its object, and that nothing extra is
// present. Full also re-hashes every distinct object (and any copies).
// Problems come back sorted by path; err is only for verify's own failures.
func Verify(m *manifest.Manifest, objs *cas.Store, dir string, full bool, workers int) ([]Problem, error) {
	if workers <= 0 {
		workers = 2 * runtime.GOMAXPROCS(0)
	}
	if len(m.Entries) == 0 || m.Entries[0].Path != "." {
		return nil, fmt.Errorf("verify %s: %w: no root entry", dir, manifest.ErrBad)
	}
	children := map[string][]*manifest.Entry{}
	var dirs []*manifest.Entry
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Type == manifest.Dir {
			dirs = append(dirs, e)
		}
		if e.Path == "." {
			continue
		}
		parent := "."
		if j := strings.LastIndexByte(e.Path, '/'); j >= 0 {
			parent = e.Path[:j]
		}
		children[parent] = append(children[parent], e)
	}

	var mu sync.Mutex
	var problems []Problem
	add := func(p, format string, a ...any) {
		mu.Lock()
		problems = append(problems, Problem{Path: p, Reason: fmt.Sprintf(format, a...)})
		mu.Unlock()
	}
	var hashMu sync.Mutex
	toHash := map[string]string{} // path to hash → manifest path
	wantHash := map[string]cas.Hash{}
	queueHash := func(path, rel string, h cas.Hash) {
		hashMu.Lock()
		if _, ok := toHash[path]; !ok {
			toHash[path] = rel
			wantHash[path] = h
		}
		hashMu.Unlock()
	}

	var root unix.Stat_t
	if err := unix.Lstat(dir, &root); err != nil {
		add(".", "tree missing: %v", err)
		return problems, nil
	}
	checkDirAttrs(m.Entries[0].Path, &m.Entries[0], &root, add)

	jobs := make(chan *manifest.Entry, 256)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range jobs {
				verifyDir(d, children[d.Path], objs, dir, full, add, queueHash)
			}
		}()
	}
	for _, d := range dirs {
		jobs <- d
	}
	close(jobs)
	wg.Wait()

	if full {
		paths := make([]string, 0, len(toHash))
		for p := range toHash {
			paths = append(paths, p)
		}
		hj := make(chan string, 256)
		var hwg sync.WaitGroup
		for w := 0; w < workers; w++ {
			hwg.Add(1)
			go func() {
				defer hwg.Done()
				for p := range hj {
					f, err := os.Open(p)
					if err != nil {
						add(toHash[p], "cannot read content: %v", err)
						continue
					}
					h, err := cas.HashReader(f)
					f.Close()
					if err != nil {
						add(toHash[p], "cannot read content: %v", err)
					} else if h != wantHash[p] {
						add(toHash[p], "content corrupted: sha256 %s, want %s", h, wantHash[p])
					}
				}
			}()
		}
		for _, p := range paths {
			hj <- p
		}
		close(hj)
		hwg.Wait()
	}
	sort.Slice(problems, func(i, j int) bool {
		if problems[i].Path != problems[j].Path {
			return manifest.Less(problems[i].Path, problems[j].Path)
		}
		return problems[i].Reason < problems[j].Reason
	})
	return problems, nil
}

type addFunc func(p, format string, a ...any)

func checkDirAttrs(rel string, e *manifest.Entry, st *unix.Stat_t, add addFunc) {
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		add(rel, "is not a directory")
		return
	}
	if st.Mode&07777 != e.Mode {
		add(rel, "mode %04o, want %04o", st.Mode&07777, e.Mode)
	}
	checkOwner(rel, e, st, add)
}

func checkOwner(rel string, e *manifest.Entry, st *unix.Stat_t, add addFunc) {
	// An unprivileged commit cannot chown, so only root's trees are held to it.
	if cas.IsRoot() && (st.Uid != e.UID || st.Gid != e.GID) {
		add(rel, "owner %d:%d, want %d:%d", st.Uid, st.Gid, e.UID, e.GID)
	}
}

func verifyDir(d *manifest.Entry, kids []*manifest.Entry, objs *cas.Store, dir string, full bool, add addFunc, queueHash func(path, rel string, h cas.Hash)) {
	abs := dir
	if d.Path != "." {
		abs = filepath.Join(dir, d.Path)
	}
	f, err := os.Open(abs)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			add(d.Path, "cannot read directory: %v", err)
		} // a missing directory is reported by its parent
		return
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		add(d.Path, "cannot read directory: %v", err)
		return
	}
	want := make(map[string]*manifest.Entry, len(kids))
	for _, k := range kids {
		want[filepath.Base(k.Path)] = k
	}
	for _, n := range names {
		if _, ok := want[n]; !ok {
			rel := n
			if d.Path != "." {
				rel = d.Path + "/" + n
			}
			add(rel, "unexpected entry (not in the manifest)")
		}
	}
	for _, e := range kids {
		p := filepath.Join(dir, e.Path)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				add(e.Path, "missing")
			} else {
				add(e.Path, "cannot stat: %v", err)
			}
			continue
		}
		switch e.Type {
		case manifest.Dir:
			checkDirAttrs(e.Path, e, &st, add)
		case manifest.Symlink:
			if st.Mode&unix.S_IFMT != unix.S_IFLNK {
				add(e.Path, "is not a symlink")
				continue
			}
			if t, err := os.Readlink(p); err != nil || t != e.Target {
				add(e.Path, "symlink target %q, want %q", t, e.Target)
			}
			checkOwner(e.Path, e, &st, add)
		case manifest.File:
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				add(e.Path, "is not a regular file")
				continue
			}
			k := e.Key()
			if st.Size != e.Size {
				add(e.Path, "size %d, want %d", st.Size, e.Size)
			}
			if st.Mode&07777 != k.Mode {
				add(e.Path, "mode %04o, want %04o", st.Mode&07777, k.Mode)
			}
			checkOwner(e.Path, e, &st, add)
			if e.Size == 0 {
				continue
			}
			op := objs.Path(k)
			var ost unix.Stat_t
			if err := unix.Lstat(op, &ost); err != nil {
				add(e.Path, "object %s missing from the store: %v", k.RelPath(), err)
				continue
			}
			if ost.Size != e.Size {
				add(e.Path, "object %s has size %d, want %d", k.RelPath(), ost.Size, e.Size)
			}
			if ost.Dev == st.Dev && ost.Ino == st.Ino {
				if full {
					queueHash(op, e.Path, e.Hash)
				}
				continue
			}
			if ost.Dev == st.Dev && ost.Nlink < maxLinks {
				add(e.Path, "not a hardlink of object %s (replaced?)", k.RelPath())
				continue
			}
			if full { // a legitimate copy (EXDEV/EMLINK): only content can tell
				queueHash(p, e.Path, e.Hash)
			}
		}
	}
}
