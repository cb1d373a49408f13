package initrd

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

const kver = "6.1.0-test"

var kernel = testtree.File{Path: "lib/modules/" + kver + "/vmlinuz", Data: "kernel image", Mode: 0o644}

// pubKey is a fresh ed25519 public key in PEM.
func pubKey(t *testing.T) string {
	t.Helper()
	_, pub, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return string(pub)
}

// commit makes a store under root holding one tx of files.
func commit(t *testing.T, root string, files []testtree.File) (*txstore.Store, *txstore.Tx) {
	t.Helper()
	dir := t.TempDir()
	files = append([]testtree.File{{Path: "lib/os-release", Data: "ID=test\n", Mode: 0o644}}, files...)
	if err := testtree.Write(dir, files, time.Unix(7, 0)); err != nil {
		t.Fatal(err)
	}
	s, err := txstore.Open(root, txstore.Options{Create: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tx, _, err := s.Commit(dir, txstore.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s, tx
}

// fakeMkinitramfs writes a script that records its arguments in args
// (one a line) and writes the -o file; with fail, it prints and exits 3.
func fakeMkinitramfs(t *testing.T, fail bool) (tool, args string) {
	t.Helper()
	dir := t.TempDir()
	tool, args = filepath.Join(dir, "mkinitramfs"), filepath.Join(dir, "args")
	body := "#!/bin/sh\nprintf '%s\\n' \"$@\" > " + args + "\n"
	if fail {
		body += "echo boom >&2\nexit 3\n"
	} else {
		body += "while [ $# -gt 0 ]; do [ \"$1\" = -o ] && echo img > \"$2\"; shift; done\nexit 0\n"
	}
	if err := os.WriteFile(tool, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return tool, args
}

func TestBuild(t *testing.T) {
	key := pubKey(t)
	tests := []struct {
		name    string
		files   []testtree.File // the tx's /usr
		etc     []testtree.File // under the system root
		fail    bool            // mkinitramfs fails
		noTools bool            // neither flag nor tree nor $PATH has them
		want    func(tree string) []string
		wantErr error  // errors.Is
		errText string // in the error
	}{
		{name: "no kernel: nothing to build", files: nil},
		{name: "kernel: its version, the tx's modules, initagent, the output", files: []testtree.File{kernel},
			want: func(tree string) []string { return nil }},
		{name: "busybox in the tx goes in", files: []testtree.File{kernel, {Path: "bin/busybox", Data: "bb", Mode: 0o755}},
			want: func(tree string) []string {
				return []string{"--add-file", filepath.Join(tree, "bin/busybox") + ":/bin/busybox"}
			}},
		{name: "trusted keys: the tx's own, then the system's",
			files: []testtree.File{kernel, {Path: TreeTrustDir + "/vendor.pem", Data: key, Mode: 0o644}},
			etc:   []testtree.File{{Path: EtcTrustDir + "/site.pem", Data: key, Mode: 0o644}},
			want: func(tree string) []string {
				return []string{"--trust", filepath.Join(tree, TreeTrustDir, "vendor.pem"), "--trust", "ROOT/" + EtcTrustDir + "/site.pem"}
			}},
		{name: "a symlinked system key is refused", files: []testtree.File{kernel},
			etc:     []testtree.File{{Path: EtcTrustDir + "/k.pem", Link: "/etc/passwd"}},
			wantErr: ErrTrustFile, errText: "build initrd for tx 1"},
		{name: "mkinitramfs fails: its output is in the error", files: []testtree.File{kernel}, fail: true,
			errText: "boom"},
		{name: "no tools", files: []testtree.File{kernel}, noTools: true, wantErr: ErrNoTool, errText: "tx 1 has kernel " + kver},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if err := testtree.Write(root, tt.etc, time.Unix(7, 0)); err != nil {
				t.Fatal(err)
			}
			s, tx := commit(t, root, tt.files)
			mk, argsFile := fakeMkinitramfs(t, tt.fail)
			ia := filepath.Join(t.TempDir(), "initagent")
			if err := os.WriteFile(ia, []byte("init"), 0o755); err != nil {
				t.Fatal(err)
			}
			if tt.noTools {
				mk, ia = "", ""
				t.Setenv("PATH", t.TempDir())
			}
			err := Build(s, tx, mk, ia)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) || tt.errText != "" && (err == nil || !strings.Contains(err.Error(), tt.errText)) {
				t.Fatalf("Build = %v, want %v / %q", err, tt.wantErr, tt.errText)
			}
			if tt.fail {
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 3 {
					t.Errorf("Build = %v: the tool's exit status is not wrapped", err)
				}
			}
			if tt.wantErr != nil || tt.errText != "" {
				if _, serr := os.Stat(s.InitrdPath(tx.ID)); serr == nil {
					t.Errorf("an initrd was left at %s after a failure", s.InitrdPath(tx.ID))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, rerr := os.ReadFile(argsFile)
			if tt.want == nil {
				if rerr == nil {
					t.Fatalf("mkinitramfs ran for a tx without a kernel: %q", got)
				}
				return
			}
			tree := s.TreeDir(tx.ID)
			want := []string{"--kver", kver, "--kmoddir", tree, "--init", ia, "-o", s.InitrdPath(tx.ID), "-q"}
			for _, a := range tt.want(tree) {
				want = append(want, strings.Replace(a, "ROOT/", s.Root+"/", 1))
			}
			if args := strings.Split(strings.TrimSuffix(string(got), "\n"), "\n"); !slices.Equal(args, want) {
				t.Errorf("mkinitramfs args\n got %q\nwant %q", args, want)
			}
			if _, err := os.Stat(s.InitrdPath(tx.ID)); err != nil {
				t.Errorf("no initrd: %v", err)
			}
		})
	}
}

func TestFindTool(t *testing.T) {
	dir := t.TempDir()
	inTree, onPath := filepath.Join(dir, "tree/tool"), filepath.Join(dir, "bin/tool")
	for _, p := range []string{inTree, onPath} {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, flag, inTree, path, want string
	}{
		{"the flag wins", "/x/flagged", inTree, filepath.Dir(onPath), "/x/flagged"},
		{"then the tx's own copy", "", inTree, filepath.Dir(onPath), inTree},
		{"then $PATH", "", filepath.Join(dir, "tree/missing"), filepath.Dir(onPath), onPath},
		{"none", "", filepath.Join(dir, "tree/missing"), filepath.Join(dir, "empty"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PATH", tt.path)
			if got := FindTool(tt.flag, "tool", tt.inTree); got != tt.want {
				t.Errorf("FindTool = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTrustFiles(t *testing.T) {
	key := pubKey(t)
	tests := []struct {
		name    string
		files   []testtree.File // under base
		want    []string        // under base/d
		wantErr error
		errText string
	}{
		{name: "missing directory: no keys"},
		{name: "*.pem sorted, other files ignored",
			files: []testtree.File{{Path: "d/b.pem", Data: key, Mode: 0o644}, {Path: "d/a.pem", Data: key, Mode: 0o644}, {Path: "d/README", Data: "x", Mode: 0o644}},
			want:  []string{"a.pem", "b.pem"}},
		{name: "a symlinked directory is not followed",
			files:   []testtree.File{{Path: "real/a.pem", Data: key, Mode: 0o644}, {Path: "d", Link: "real"}},
			wantErr: ErrTrustFile, errText: "not a directory"},
		{name: "a symlinked key is not followed",
			files:   []testtree.File{{Path: "real.pem", Data: key, Mode: 0o644}, {Path: "d/a.pem", Link: "../real.pem"}},
			wantErr: ErrTrustFile, errText: "not a regular file"},
		{name: "a file that is no key names its path",
			files:   []testtree.File{{Path: "d/bad.pem", Data: "not a key", Mode: 0o644}},
			errText: "bad.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			if err := testtree.Write(base, tt.files, time.Unix(7, 0)); err != nil {
				t.Fatal(err)
			}
			got, err := TrustFiles(base, "d")
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) || tt.errText != "" && (err == nil || !strings.Contains(err.Error(), tt.errText)) {
				t.Fatalf("TrustFiles = %v, %v; want %v / %q", got, err, tt.wantErr, tt.errText)
			}
			if tt.wantErr != nil || tt.errText != "" {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, w := range tt.want {
				want = append(want, filepath.Join(base, "d", w))
			}
			if !slices.Equal(got, want) {
				t.Errorf("TrustFiles = %q, want %q", got, want)
			}
		})
	}
}
