package bootinfo

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestGolden pins the encoding: the fixture decodes to known values and
// re-encodes byte for byte, so a change to a field name or the layout fails
// here rather than leaving bootctl unable to read what initagent wrote.
func TestGolden(t *testing.T) {
	data, err := os.ReadFile("testdata/boot.json")
	if err != nil {
		t.Fatal(err)
	}
	info, err := Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	want := &Info{
		Booted: 2, Requested: 3,
		Failures: []Failure{
			{Tx: 3, Reason: "verification failed: usr/bin/hello: missing"},
			{Tx: 4, Reason: "no trusted key signed sha256:5799", Kind: "unsigned"},
		},
		OnTrial: true, Watchdog: 30,
		PhasesMS:    map[string]int64{"early": 3, "modules": 420, "rootdev": 68, "mount": 62, "store": 17, "verify": 66, "assemble": 4},
		NoDatabase:  "store damaged: /sysroot/.txboot/store.db: invalid page",
		SignedBy:    "0d3f64dd",
		UnsealedWhy: "not sealed yet: fs-verity is not supported on this filesystem or kernel",
	}
	if !reflect.DeepEqual(info, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", info, want)
	}
	out, err := Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, data) {
		t.Errorf("re-encoded differs from testdata/boot.json:\n%s", out)
	}
}

func TestWriteRead(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "run/txboot/boot.json") // Write creates the directories
	in := &Info{Booted: 1, Requested: 1, OnTrial: true, PhasesMS: map[string]int64{"store": 1}, Sealed: true}
	if err := Write(p, in); err != nil {
		t.Fatal(err)
	}
	// Replacing keeps only the new record and leaves no temp file behind.
	in.Booted, in.Failures = 2, []Failure{{Tx: 1, Reason: "r", Kind: "k"}}
	if err := Write(p, in); err != nil {
		t.Fatal(err)
	}
	got, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Errorf("read %+v, want %+v", got, in)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only boot.json", len(ents))
	}
	if fi, _ := os.Stat(p); fi == nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi)
	}
}

// TestWriteSymlink: a symlink at the path is replaced, never followed.
func TestWriteSymlink(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(outside, []byte("keep"), 0o644)
	p := filepath.Join(dir, "boot.json")
	if err := os.Symlink(outside, p); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, &Info{Booted: 1}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "keep" {
		t.Errorf("symlink target changed: %q", b)
	}
	if fi, _ := os.Lstat(p); fi == nil || !fi.Mode().IsRegular() {
		t.Errorf("%s is not a regular file after Write", p)
	}
}

func TestReadBad(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		want       error
		msg        string
	}{
		{"not json", "{booted", ErrBad, "boot.json: bad boot info: invalid character"},
		{"trailing garbage", `{"booted":1} x`, ErrBad, "bad boot info"},
		{"wrong type", `{"booted":"1"}`, ErrBad, "bad boot info"},
		{"no booted tx", `{"requested":1}`, ErrBad, "bad boot info: no booted tx"},
		{"empty", "", ErrBad, "bad boot info"},
		{"too big", `{"booted":1,"no_database":"` + strings.Repeat("x", maxSize) + `"}`, ErrBad, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "boot.json")
			os.WriteFile(p, []byte(tc.data), 0o644)
			_, err := Read(p)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), p) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line naming %s and %q", err, p, tc.msg)
			}
		})
	}
	_, err := Read(filepath.Join(t.TempDir(), "none.json"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
}
