package pkgdb

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const oneStanza = "Package: hello\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.10-5\n"

// usrWith makes a usr directory; files maps paths to contents, a value
// starting with "->" makes a symlink, "/" a directory.
func usrWith(t *testing.T, files map[string]string) string {
	t.Helper()
	usr := filepath.Join(t.TempDir(), "usr")
	if err := os.MkdirAll(usr, 0o755); err != nil {
		t.Fatal(err)
	}
	for p, data := range files {
		full := filepath.Join(usr, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasPrefix(data, "->"):
			err = os.Symlink(data[2:], full)
		case data == "/":
			err = os.Mkdir(full, 0o755)
		default:
			err = os.WriteFile(full, []byte(data), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return usr
}

func TestReadTree(t *testing.T) {
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "status"), []byte(oneStanza), 0o644)
	cases := []struct {
		name  string
		files map[string]string
		have  bool
		n     int
		err   error
		msg   string
	}{
		{name: "none", files: map[string]string{"lib/os-release": "ID=debian\n"}},
		{name: "empty lib/sysimage", files: map[string]string{"lib/sysimage": "/"}},
		{name: "plain", files: map[string]string{StatusRel: oneStanza}, have: true, n: 1},
		{name: "empty status", files: map[string]string{StatusRel: ""}, have: true},
		{name: "journal tmp only", files: map[string]string{StatusRel: oneStanza, UpdatesRel + "/tmp.i": "x"}, have: true, n: 1},
		{name: "journal pending", files: map[string]string{StatusRel: oneStanza, UpdatesRel + "/0000": oneStanza, UpdatesRel + "/0001": oneStanza},
			err: ErrPending, msg: "updates: dpkg's journal has unmerged records: 2 record(s)"},
		{name: "status symlink", files: map[string]string{StatusRel: "->" + filepath.Join(other, "status")}, err: ErrNotRegular, msg: "symlink"},
		{name: "relative status symlink", files: map[string]string{StatusRel: "->status-old", "lib/sysimage/dpkg/status-old": oneStanza}, err: ErrNotRegular},
		{name: "dir symlink", files: map[string]string{"lib/sysimage/dpkg": "->" + other}, err: ErrNotRegular},
		{name: "status dir", files: map[string]string{StatusRel: "/"}, err: ErrNotRegular, msg: StatusRel},
		{name: "malformed", files: map[string]string{StatusRel: "# hi\n"}, err: ErrBad, msg: StatusRel + ": line 1: malformed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			set, have, err := ReadTree(usrWith(t, c.files))
			if c.err != nil {
				if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.msg) {
					t.Fatalf("got %v, want %v with %q", err, c.err, c.msg)
				}
				return
			}
			if err != nil || have != c.have || len(set) != c.n {
				t.Fatalf("got %v %v %v, want %d packages, have %v", set, have, err, c.n, c.have)
			}
		})
	}
	if _, _, err := ReadTree(filepath.Join(other, "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing usr: %v", err)
	}
}
