package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestTreeToolsNeverRun: a tx is data until it has booted. Whichever verb
// builds its initrd (commit, entries sync, install), the tx's own
// lib/txboot/mkinitramfs and initagent are never executed on the host:
// the flag's, the one beside bootctl or the one on $PATH builds it.
func TestTreeToolsNeverRun(t *testing.T) {
	td := tools(t)
	flags := []string{"--mkinitramfs", filepath.Join(td, "mkinitramfs"), "--initagent", filepath.Join(td, "initagent")}
	cases := []struct {
		name string
		// run does the verbs under root with the tx's tree holding the
		// evil tools; esp is the ESP to use.
		run func(t *testing.T, root, esp string, evil []testtree.File)
	}{
		{name: "commit, tools from PATH", run: func(t *testing.T, root, esp string, evil []testtree.File) {
			mustRun(t, "--root", root, "commit", tree(t, evil...), "--esp", esp, "--root-arg", "PARTUUID=1")
		}},
		{name: "entries sync rebuilds a missing initrd", run: func(t *testing.T, root, esp string, evil []testtree.File) {
			mustRun(t, "--root", root, "commit", tree(t, evil...)) // no ESP: no initrd yet
			mustRun(t, "--root", root, "entries", "sync", "--esp", esp, "--root-arg", "PARTUUID=1")
		}},
		{name: "pull, tools from PATH", run: func(t *testing.T, root, esp string, evil []testtree.File) {
			src, dir := t.TempDir(), filepath.Join(t.TempDir(), "repo")
			mustRun(t, "--root", src, "commit", tree(t, evil...))
			mustRun(t, "--root", src, "publish", "--repo", dir)
			mustRun(t, "--root", root, "pull", "file://"+dir, "--insecure", "--esp", esp, "--root-arg", "PARTUUID=1")
		}},
		{name: "install, tools from the flags", run: func(t *testing.T, root, esp string, evil []testtree.File) {
			os.RemoveAll(root)
			r := osRoot(t, "root=PARTUUID=feed\n")
			for _, f := range evil {
				if f.Path == "lib/txboot/mkinitramfs" || f.Path == "lib/txboot/initagent" {
					writeFile(t, filepath.Join(r, "usr", f.Path), f.Data, 0o755)
				}
			}
			if err := os.Rename(r, root); err != nil {
				t.Fatal(err)
			}
			mustRun(t, append([]string{"--root", root, "install", "--esp", esp}, flags...)...)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("PATH", td) // the host's tools; the evil script needs none
			marker := filepath.Join(t.TempDir(), "pwned")
			evil := "#!/bin/sh\n: > '" + marker + "'\n"
			files := []testtree.File{{Path: "lib/txboot/mkinitramfs", Data: evil, Mode: 0o755},
				{Path: "lib/txboot/initagent", Data: evil, Mode: 0o755}}
			root, esp := filepath.Join(t.TempDir(), "root"), t.TempDir()
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			c.run(t, root, esp, files)
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the tx's own mkinitramfs or initagent ran on the host")
			}
			if _, err := os.Stat(filepath.Join(root, txstore.DirName, "boot/1/initrd.img")); err != nil {
				t.Errorf("no initrd built by the host's tools: %v", err)
			}
		})
	}
}

func writeFile(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}
