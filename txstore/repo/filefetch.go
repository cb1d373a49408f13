package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// NewFetcher returns the Fetcher for a repository URL: an HTTPFetcher for
// http:// and https://, a FileFetcher for file:///ABS/DIR (a mirror on a
// USB stick, a VM without a network). conns sizes the HTTP client.
func NewFetcher(base string, conns int) (Fetcher, error) {
	if strings.HasPrefix(base, "file:") {
		return NewFileFetcher(base)
	}
	return NewHTTPFetcher(base, conns)
}

// FileFetcher reads a repository from a local directory. Every path is
// opened beneath the directory one component at a time with
// O_PATH|O_NOFOLLOW: a symlink anywhere (or "..", or an absolute path) can
// never lead out of it. Only regular files are served, and only they are
// ever opened for reading: a device node, FIFO or socket is refused from
// its O_PATH fstat, so its driver's open never runs and nothing blocks.
// Missing files are a *StatusError with Code 404 and refused ones (a
// symlink, a device, a directory) Code 403, as a web server would answer,
// so Pull treats both alike.
type FileFetcher struct {
	dir  string // absolute, cleaned
	base string // file:// URL of dir with a final slash, for messages
}

// NewFileFetcher checks base: file:///ABS/DIR (or file://localhost/…),
// without query or fragment, naming an existing directory.
func NewFileFetcher(base string) (*FileFetcher, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("repository URL %q: %w", base, err)
	}
	if u.Scheme != "file" || (u.Host != "" && u.Host != "localhost") || u.RawQuery != "" || u.Fragment != "" || u.User != nil || !filepath.IsAbs(u.Path) {
		return nil, fmt.Errorf("repository URL %q: want file:///ABSOLUTE/DIR without host, query or fragment", base)
	}
	dir := filepath.Clean(u.Path)
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	unix.Close(fd)
	b := (&url.URL{Scheme: "file", Path: dir}).String()
	if !strings.HasSuffix(b, "/") {
		b += "/"
	}
	return &FileFetcher{dir: dir, base: b}, nil
}

// URL implements Fetcher.
func (f *FileFetcher) URL(path string) string { return f.base + path }

// Get implements Fetcher. Every component is opened O_PATH first, which
// opens nothing but a reference (no driver's open, no FIFO handshake), and
// checked with fstat; only a regular file is then opened for reading, and
// only through that very reference, so a device node or FIFO in the
// repository is refused before anything of it runs or blocks.
func (f *FileFetcher) Get(ctx context.Context, path string) (io.ReadCloser, error) {
	u := f.URL(path)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
	}
	parts := strings.Split(path, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return nil, &StatusError{URL: u, Code: http.StatusForbidden, Status: "403 Forbidden (not a plain relative path)"}
		}
	}
	dfd, err := unix.Open(f.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
	}
	defer func() { unix.Close(dfd) }()
	for i, p := range parts {
		fd, err := unix.Openat(dfd, p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, f.openErr(u, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
		}
		typ := st.Mode & unix.S_IFMT
		last := i == len(parts)-1
		switch {
		case typ == unix.S_IFLNK:
			unix.Close(fd)
			return nil, f.openErr(u, unix.ELOOP)
		case !last && typ != unix.S_IFDIR:
			unix.Close(fd)
			return nil, f.openErr(u, unix.ENOTDIR)
		case last && typ != unix.S_IFREG:
			unix.Close(fd)
			return nil, &StatusError{URL: u, Code: http.StatusForbidden, Status: "403 Forbidden (not a regular file)"}
		case last:
			return f.reopen(u, filepath.Join(f.dir, path), dfd, p, fd, &st)
		}
		unix.Close(dfd)
		dfd = fd
	}
	panic("unreachable")
}

// reopen opens for reading the regular file that O_PATH descriptor pfd
// (with stat st, name base in directory dfd) refers to, and closes pfd.
// Through /proc/self/fd the open reaches that very inode, whatever the
// name points to by now; without /proc it falls back to the name (with
// O_NONBLOCK, so a FIFO swapped in meanwhile cannot block) and checks it
// is still the same file.
func (f *FileFetcher) reopen(u, name string, dfd int, base string, pfd int, st *unix.Stat_t) (io.ReadCloser, error) {
	defer unix.Close(pfd)
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		fd, err = unix.Openat(dfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, f.openErr(u, err)
	}
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
	}
	if now.Mode&unix.S_IFMT != unix.S_IFREG || now.Dev != st.Dev || now.Ino != st.Ino {
		unix.Close(fd)
		return nil, &StatusError{URL: u, Code: http.StatusForbidden, Status: "403 Forbidden (replaced while opened)"}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// openErr maps an open error to what a web server would answer.
func (f *FileFetcher) openErr(u string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return &StatusError{URL: u, Code: http.StatusNotFound, Status: "404 Not Found"}
	case errors.Is(err, unix.ELOOP):
		return &StatusError{URL: u, Code: http.StatusForbidden, Status: "403 Forbidden (symlink)"}
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return &StatusError{URL: u, Code: http.StatusForbidden, Status: "403 Forbidden (permission denied)"}
	}
	return fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
}
