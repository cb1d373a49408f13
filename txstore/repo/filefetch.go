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
// opened beneath the directory one component at a time with O_NOFOLLOW:
// a symlink anywhere (or "..", or an absolute path) can never lead out of
// it. Only regular files are served. Missing files are a *StatusError
// with Code 404 and refused ones (a symlink, a device, a directory) Code
// 403, as a web server would answer, so Pull treats both alike.
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

// Get implements Fetcher.
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
	dfd, err := unix.Open(f.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
	}
	for _, p := range parts[:len(parts)-1] {
		fd, err := unix.Openat(dfd, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ENOTDIR { // O_DIRECTORY|O_NOFOLLOW on a symlink: ENOTDIR, not ELOOP
			var st unix.Stat_t
			if unix.Fstatat(dfd, p, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			}
		}
		unix.Close(dfd)
		if err != nil {
			return nil, f.openErr(u, err)
		}
		dfd = fd
	}
	// O_NONBLOCK: a FIFO planted in the repository must not hang the open.
	fd, err := unix.Openat(dfd, parts[len(parts)-1], unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	unix.Close(dfd)
	if err != nil {
		return nil, f.openErr(u, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &StatusError{URL: u, Code: http.StatusForbidden, Status: "403 Forbidden (not a regular file)"}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(f.dir, path)), nil
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
