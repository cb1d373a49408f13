package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/sign"
)

// tree makes a kernel root with an empty module directory and an init.
func tree(t *testing.T) (root, init string) {
	t.Helper()
	root = t.TempDir()
	dir := filepath.Join(root, "lib", "modules", "6.0.0-x")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	init = filepath.Join(root, "initagent")
	if err := os.WriteFile(init, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root, init
}

func TestRun(t *testing.T) {
	root, init := tree(t)
	out := filepath.Join(t.TempDir(), "initrd.img")
	base := []string{"--kver", "6.0.0-x", "--kmoddir", root, "-q"}
	_, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(root, "vendor.pem")
	if err := os.WriteFile(pub, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		err  string // "" for success
	}{
		{"ok", append(base, "--init", init, "-o", out, "--add-drivers", "ext4", "--add-file", init+":/bin/sh"), ""},
		{"no output", append(base, "--init", init), "-o OUT"},
		{"extra args", append(base, "--init", init, "-o", out, "stray"), "unexpected"},
		{"bad add-file", append(base, "--init", init, "-o", out, "--add-file", "nodst"), "SRC:DST"},
		{"missing driver", append(base, "--init", init, "-o", out, "--add-drivers", "nosuch"), "nosuch"},
		{"unknown flag", append(base, "--bogus"), "bogus"},
		{"trust", append(base, "--init", init, "-o", out, "--trust", pub, "--trust", pub), ""},
		{"trust a bad key", append(base, "--init", init, "-o", out, "--trust", init), "not an ed25519 key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(tt.args)
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if st, err := os.Stat(out); err != nil || st.Size() == 0 {
					t.Errorf("no output: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("err = %v, want it to mention %q", err, tt.err)
			}
		})
	}
}

// TestDefaultInit: without --init, bin/initagent in the working directory
// is used.
func TestDefaultInit(t *testing.T) {
	root, init := tree(t)
	work := t.TempDir()
	t.Chdir(work)
	out := filepath.Join(work, "initrd.img")
	args := []string{"--kver", "6.0.0-x", "--kmoddir", root, "-q", "-o", out}
	if err := run(args); err == nil || !strings.Contains(err.Error(), "--init") {
		t.Fatalf("no initagent: err = %v", err)
	}
	if err := os.Mkdir("bin", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(init, filepath.Join("bin", "initagent")); err != nil {
		t.Fatal(err)
	}
	if err := run(args); err != nil {
		t.Fatal(err)
	}
}
