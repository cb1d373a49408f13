package manifest_test

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/verity"
)

// OnVerity gets every regular file's fs-verity digest, the same as
// digesting its content apart: sizes around the block size, an empty file,
// a sparse one (its holes are zeros), with and without OnFile.
func TestScanOnVerity(t *testing.T) {
	dir := t.TempDir()
	sizes := map[string]int{"empty": 0, "one": 1, "b4096": 4096, "b4097": 4097, "d/mib": 1 << 20}
	for name, n := range sizes {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*13 + n)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2<<20 + 7); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("data between holes"), 1<<20+3); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Symlink("one", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[string]verity.Sum{}
	m, err := manifest.Scan(dir, manifest.ScanOptions{Workers: 3, OnVerity: func(e *manifest.Entry, s verity.Sum) {
		mu.Lock()
		defer mu.Unlock()
		if _, dup := got[e.Path]; dup {
			t.Errorf("OnVerity(%s) twice", e.Path)
		}
		got[e.Path] = s
	}})
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, e := range m.Entries {
		if e.Type != manifest.File {
			if _, ok := got[e.Path]; ok {
				t.Errorf("OnVerity for %s (type %v)", e.Path, e.Type)
			}
			continue
		}
		files++
		b, err := os.ReadFile(filepath.Join(dir, e.Path))
		if err != nil {
			t.Fatal(err)
		}
		if want := verity.DigestBytes(b); got[e.Path] != want {
			t.Errorf("%s: OnVerity %s, want %s", e.Path, got[e.Path], want)
		}
	}
	if files != len(sizes)+1 || len(got) != files {
		t.Errorf("%d files, %d digests", files, len(got))
	}
}
