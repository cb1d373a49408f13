// Package health finds and runs the health checks `bootctl health` runs
// on a boot on trial: their result decides whether the booted tx is
// marked good or bad.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"
)

// Dirs are where checks live, under the system root: the OS's, then the
// admin's, which overrides a check of the same name.
var Dirs = []string{"usr/lib/txboot/health.d", "etc/txboot/health.d"}

// ErrTimeout is a check that ran longer than its time limit.
var ErrTimeout = errors.New("timed out")

// Checks lists the checks under root: in each of Dirs, required/ and
// wanted/ (plain files in health.d itself count as required), each list
// sorted by file name. A same-named file in /etc overrides /usr/lib; one
// that is a symlink to /dev/null masks it, as with systemd units.
func Checks(root string) (required, wanted []string) {
	found := map[string]map[string]string{"required": {}, "wanted": {}}
	for _, base := range Dirs {
		for _, d := range []struct{ sub, kind string }{{"", "required"}, {"required", "required"}, {"wanted", "wanted"}} {
			dir := filepath.Join(root, base, d.sub)
			ents, err := os.ReadDir(dir)
			if err != nil {
				continue // no such directory: no checks there
			}
			for _, ent := range ents {
				if !ent.IsDir() {
					found[d.kind][ent.Name()] = filepath.Join(dir, ent.Name())
				}
			}
		}
	}
	pick := func(m map[string]string) []string {
		var names []string
		for n, p := range m {
			if t, err := os.Readlink(p); err == nil && t == "/dev/null" {
				continue // masked
			}
			names = append(names, n)
		}
		sort.Strings(names)
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = m[n]
		}
		return out
	}
	return pick(found["required"]), pick(found["wanted"])
}

// Result counts the checks that ran.
type Result struct {
	Required, Wanted, WantedFailed int
	// Failed is the first required check that failed, "NAME: error";
	// empty when every required check passed (wanted ones never fail
	// the boot).
	Failed string
}

// Run runs the checks under root one after the other, each limited to
// timeout, their output on stdout and stderr; a line per check on stdout
// says how it ended.
func Run(root string, timeout time.Duration, stdout, stderr io.Writer) Result {
	req, want := Checks(root)
	var r Result
	for _, p := range req {
		r.Required++
		if err := runOne(p, timeout, stdout, stderr); err != nil {
			fmt.Fprintf(stdout, "health: FAIL (required) %s: %v\n", p, err)
			if r.Failed == "" {
				r.Failed = fmt.Sprintf("%s: %v", filepath.Base(p), err)
			}
		} else {
			fmt.Fprintf(stdout, "health: ok   (required) %s\n", p)
		}
	}
	for _, p := range want {
		r.Wanted++
		if err := runOne(p, timeout, stdout, stderr); err != nil {
			r.WantedFailed++
			fmt.Fprintf(stdout, "health: fail (wanted)   %s: %v\n", p, err)
		} else {
			fmt.Fprintf(stdout, "health: ok   (wanted)   %s\n", p)
		}
	}
	return r
}

// runOne runs check p; past timeout it is killed and ErrTimeout returned.
func runOne(p string, timeout time.Duration, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("%w after %s", ErrTimeout, timeout)
	}
	return err
}
