package harness

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
)

// BuildStaticGo builds the main package pkg (an import path or a ./path
// relative to the repo root) into out as a static linux/amd64 binary, the
// way an initramfs /init must be.
func BuildStaticGo(ctx context.Context, pkg, out string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	_, _, err = run(ctx, runOpts{
		dir: root,
		env: []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"},
	}, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	if err != nil {
		return fmt.Errorf("build %s: %w", pkg, err)
	}
	return nil
}

// MakeCPIO packs srcDir into out as an uncompressed newc cpio archive (what
// the kernel unpacks as initramfs), with sorted names and every file owned
// by root, so the same tree gives the same archive.
func MakeCPIO(srcDir, out string) error {
	var names []string
	err := filepath.WalkDir(srcDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(srcDir, p)
		if err != nil {
			return err
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk %s: %w", srcDir, err)
	}
	sort.Strings(names)
	absOut, err := filepath.Abs(out)
	if err != nil {
		return fmt.Errorf("abs %s: %w", out, err)
	}
	// cpio writes the archive to stdout; redirect via -F to keep it binary
	// and out of memory.
	list := strings.Join(names, "\n") + "\n"
	_, _, err = run(context.Background(), runOpts{dir: srcDir, stdin: []byte(list)},
		"cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible", "-F", absOut)
	if err != nil {
		return fmt.Errorf("cpio %s: %w", srcDir, err)
	}
	return nil
}
