package manifest_test

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// OnEntry sees every entry (the root too) before OnFile, and what it
// changes is what OnFile and the manifest get; OnOther takes what Scan
// would refuse, leaving it out.
func TestScanHooks(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"a", "a/b"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "a/f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(dir, "a/f"), "user.drop", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(dir, "a/l")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "a/b/p"), 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen, others []string
	var fileX string
	opts := manifest.ScanOptions{
		OnEntry: func(e *manifest.Entry) error {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, e.Path)
			e.Xattrs = ""
			return nil
		},
		OnFile: func(e *manifest.Entry, _ string, _ *unix.Stat_t) error {
			fileX = e.Xattrs
			return nil
		},
		OnOther: func(p string, st *unix.Stat_t) error {
			mu.Lock()
			defer mu.Unlock()
			others = append(others, p)
			if st.Mode&unix.S_IFMT != unix.S_IFIFO {
				t.Errorf("OnOther(%s): mode %o", p, st.Mode)
			}
			return nil
		},
	}
	m, err := manifest.Scan(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(seen)
	if want := []string{".", "a", "a/b", "a/f", "a/l"}; !equal(seen, want) {
		t.Errorf("OnEntry saw %q, want %q", seen, want)
	}
	if !equal(others, []string{"a/b/p"}) {
		t.Errorf("OnOther saw %q", others)
	}
	if fileX != "" {
		t.Errorf("OnFile got xattrs %q, want OnEntry's change", fileX)
	}
	for _, e := range m.Entries {
		if e.Path == "a/b/p" || e.Xattrs != "" {
			t.Errorf("manifest has %+v", e)
		}
	}
	if len(m.Entries) != 5 {
		t.Errorf("%d entries, want 5", len(m.Entries))
	}

	boom := errors.New("boom")
	// The OnEntry cases take the FIFO, else a worker reaching it before
	// a/l ends the scan with ErrUnsupported first.
	keep := func(string, *unix.Stat_t) error { return nil }
	for name, o := range map[string]manifest.ScanOptions{
		"OnEntry": {OnOther: keep, OnEntry: func(e *manifest.Entry) error {
			if e.Path == "a/l" {
				return boom
			}
			return nil
		}},
		"OnEntry root": {OnOther: keep, OnEntry: func(e *manifest.Entry) error {
			if e.Path == "." {
				return boom
			}
			return nil
		}},
		"OnOther": {OnOther: func(string, *unix.Stat_t) error { return boom }},
	} {
		if _, err := manifest.Scan(dir, o); !errors.Is(err, boom) {
			t.Errorf("%s error: scan = %v, want it", name, err)
		}
	}
	if _, err := manifest.Scan(dir, manifest.ScanOptions{}); !errors.Is(err, manifest.ErrUnsupported) {
		t.Errorf("no OnOther: scan = %v, want ErrUnsupported", err)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
