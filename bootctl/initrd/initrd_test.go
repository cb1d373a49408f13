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
	"github.com/txboot/txboot/txstore/trust"
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
		body += "printf 'boom\\nsecond line\\n' >&2\nexit 3\n"
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
		trust   []string        // the trust set's files, under the system root
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
		{name: "a symlinked busybox is not added: it would put a host file into the image", files: []testtree.File{kernel, {Path: "bin/busybox", Link: "/etc/passwd"}},
			want: func(tree string) []string { return nil }},
		{name: "trusted keys: the set the caller gives, never the tx's own",
			files: []testtree.File{kernel, {Path: trust.TreeDir + "/vendor.pem", Data: key, Mode: 0o644}},
			trust: []string{"a.pem", "b.pem"},
			want: func(tree string) []string {
				return []string{"--trust", "ROOT/a.pem", "--trust", "ROOT/b.pem"}
			}},
		{name: "no trust set: refused", files: []testtree.File{kernel}, trust: []string{"nil"}, wantErr: ErrNoTrust, errText: "tx 1"},
		{name: "mkinitramfs fails: its output is in the error", files: []testtree.File{kernel}, fail: true,
			errText: "boom"},
		{name: "no tools", files: []testtree.File{kernel}, noTools: true, wantErr: ErrNoTool, errText: "tx 1 has kernel " + kver},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			s, tx := commit(t, root, tt.files)
			ts := &trust.Set{}
			for _, f := range tt.trust {
				ts.Files = append(ts.Files, filepath.Join(root, f))
			}
			if slices.Equal(tt.trust, []string{"nil"}) {
				ts = nil
			}
			mk, argsFile := fakeMkinitramfs(t, tt.fail)
			ia := filepath.Join(t.TempDir(), "initagent")
			if err := os.WriteFile(ia, []byte("init"), 0o755); err != nil {
				t.Fatal(err)
			}
			if tt.noTools {
				mk, ia = "", ""
				t.Setenv("PATH", t.TempDir())
			}
			err := Build(s, tx, mk, ia, ts)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) || tt.errText != "" && (err == nil || !strings.Contains(err.Error(), tt.errText)) {
				t.Fatalf("Build = %v, want %v / %q", err, tt.wantErr, tt.errText)
			}
			if tt.fail {
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 3 {
					t.Errorf("Build = %v: the tool's exit status is not wrapped", err)
				}
				// Callers append to the message ("; done: …"): the tool's
				// last newline must not end up inside their line.
				if msg := err.Error(); msg != strings.TrimSpace(msg) || !strings.Contains(msg, "boom\nsecond line") {
					t.Errorf("Build = %q: want the tool's lines, no trailing newline", msg)
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
	onPath := filepath.Join(dir, "bin/tool")
	os.MkdirAll(filepath.Dir(onPath), 0o755)
	if err := os.WriteFile(onPath, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary's own directory stands for bootctl's.
	beside := filepath.Join(filepath.Dir(self), "tool-beside")
	if err := os.WriteFile(beside, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(beside) })
	if err := os.WriteFile(filepath.Join(dir, "bin/tool-beside"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, flag, tool, path, want string
	}{
		{"the flag wins", "/x/flagged", "tool", filepath.Dir(onPath), "/x/flagged"},
		{"then the one beside the running binary", "", "tool-beside", filepath.Dir(onPath), beside},
		{"then $PATH", "", "tool", filepath.Dir(onPath), onPath},
		{"none", "", "tool", filepath.Join(dir, "empty"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PATH", tt.path)
			if got := FindTool(tt.flag, tt.tool); got != tt.want {
				t.Errorf("FindTool = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestBuildNeverRunsTreeTools: a tx is data until it has booted. Its own
// lib/txboot/mkinitramfs and initagent are never used to build its
// initrd: the host's (found on $PATH here) are.
func TestBuildNeverRunsTreeTools(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "pwned")
	evil := "#!/bin/sh\n: > " + marker + "\n" // a builtin: $PATH holds only the host tools
	root := t.TempDir()
	s, tx := commit(t, root, []testtree.File{kernel,
		{Path: "lib/txboot/mkinitramfs", Data: evil, Mode: 0o755},
		{Path: "lib/txboot/initagent", Data: evil, Mode: 0o755}})
	mk, argsFile := fakeMkinitramfs(t, false)
	hostBin := filepath.Dir(mk)
	if err := os.WriteFile(filepath.Join(hostBin, "initagent"), []byte("init"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", hostBin)
	if err := Build(s, tx, "", "", &trust.Set{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the tx's own mkinitramfs ran on the host")
	}
	got, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatalf("the host's mkinitramfs did not run: %v", err)
	}
	if !strings.Contains(string(got), "--init\n"+filepath.Join(hostBin, "initagent")+"\n") {
		t.Errorf("the initrd's /init is not the host's initagent:\n%s", got)
	}
}
