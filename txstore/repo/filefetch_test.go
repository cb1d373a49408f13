package repo

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/txboot/txboot/txstore/sign"
	"golang.org/x/sys/unix"
)

func TestNewFetcher(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		url  string
		file bool
		ok   bool
	}{
		{"http://127.0.0.1:1/repo", false, true},
		{"https://example.org/", false, true},
		{"file://" + dir, true, true},
		{"file://localhost" + dir, true, true},
		{"file://host" + dir, true, false},
		{"file:relative/dir", true, false},
		{"file://" + dir + "?q=1", true, false},
		{"file://" + filepath.Join(dir, "missing"), true, false},
		{"ftp://example.org/", false, false},
	}
	for _, c := range cases {
		f, err := NewFetcher(c.url, 2)
		if (err == nil) != c.ok {
			t.Errorf("NewFetcher(%q): %v, want ok=%v", c.url, err, c.ok)
			continue
		}
		if err != nil {
			continue
		}
		if _, isFile := f.(*FileFetcher); isFile != c.file {
			t.Errorf("NewFetcher(%q) = %T", c.url, f)
		}
	}
}

// TestFileFetcher: only regular files beneath the directory are served;
// a symlink anywhere, "..", a directory or a FIFO is refused (403), a
// missing file is a 404, as over HTTP.
func TestFileFetcher(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "objects/ab"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "config"), []byte(ConfigMarker), 0o644))
	must(os.WriteFile(filepath.Join(dir, "objects/ab/file"), []byte("inside"), 0o644))
	must(os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "objects/ab/link")))
	must(os.Symlink(outside, filepath.Join(dir, "objects/cd")))
	must(os.Symlink("file", filepath.Join(dir, "objects/ab/rel-link")))
	must(unix.Mkfifo(filepath.Join(dir, "objects/ab/fifo"), 0o644))
	f, err := NewFetcher("file://"+dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		want string // content; "" = an error
		code int
	}{
		{"config", ConfigMarker, 0},
		{"objects/ab/file", "inside", 0},
		{"objects/ab/missing", "", 404},
		{"objects/zz/missing", "", 404},
		{"objects/ab/file/sub", "", 404},
		{"objects/ab/link", "", 403},
		{"objects/ab/rel-link", "", 403},
		{"objects/cd/secret", "", 403},
		{"objects/ab", "", 403},
		{"objects/ab/fifo", "", 403},
		{"../" + filepath.Base(outside) + "/secret", "", 403},
		{"objects/../config", "", 403},
		{"/etc/passwd", "", 403},
		{"objects//ab/file", "", 403},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			body, err := f.Get(context.Background(), c.path)
			if c.want != "" {
				if err != nil {
					t.Fatal(err)
				}
				defer body.Close()
				got, _ := io.ReadAll(body)
				if string(got) != c.want {
					t.Fatalf("got %q", got)
				}
				return
			}
			if err == nil {
				got, _ := io.ReadAll(body)
				body.Close()
				t.Fatalf("served %q", got)
			}
			var se *StatusError
			if !errors.As(err, &se) || se.Code != c.code || !errors.Is(err, ErrFetch) {
				t.Fatalf("got %v, want HTTP-like %d", err, c.code)
			}
			if (c.code == 404) != isNotFound(err) || !permanent(err) {
				t.Fatalf("%v: isNotFound %v permanent %v", err, isNotFound(err), permanent(err))
			}
		})
	}
}

// TestPullFile: a whole pull from a file:// repository.
func TestPullFile(t *testing.T) {
	key := ptNewKey(t)
	_, dir, txs := ptSource(t, &key, ptTree(t, nil))
	f, err := NewFetcher("file://"+dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	dst := ptStore(t)
	tx, st, err := Pull(context.Background(), dst, f, "file://"+dir, PullOptions{Trusted: []sign.PublicKey{key.pub}, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Digest != txs[0].Digest || st.Fetched != st.Objects || tx.Origin != "file://"+dir {
		t.Fatalf("pulled %+v %+v", tx, st)
	}
	ptVerifyFull(t, dst, tx.ID)
}
