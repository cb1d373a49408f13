package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// sbinDirs are searched after $PATH because mkfs.*, sfdisk and debugfs live
// in /sbin and a non-root PATH often lacks it.
var sbinDirs = []string{"/usr/sbin", "/sbin"}

// LookTool finds an external program in $PATH or the sbin directories.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in $PATH or %s (run scripts/install-deps.sh)", name, strings.Join(sbinDirs, ", "))
}

// runOpts tweaks one tool invocation.
type runOpts struct {
	stdin []byte
	env   []string // added to os.Environ()
	dir   string
}

// run executes a tool and returns its stdout; the error includes the full
// command line and stderr so a failing test says what went wrong.
func run(ctx context.Context, o runOpts, name string, args ...string) (stdout, stderr []byte, err error) {
	path, err := LookTool(name)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var outb, errb bytes.Buffer
	cmd.Stdout = &outb
	cmd.Stderr = &errb
	cmd.Dir = o.dir
	if o.stdin != nil {
		cmd.Stdin = bytes.NewReader(o.stdin)
	}
	// LC_ALL=C keeps tool messages parseable.
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), o.env...)
	if err := cmd.Run(); err != nil {
		return outb.Bytes(), errb.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return outb.Bytes(), errb.Bytes(), nil
}
