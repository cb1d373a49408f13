package health

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// file is a check (or a mask) to put under a test root.
type file struct {
	path string // relative to the root
	body string // script; "" with mask
	mask bool   // a symlink to /dev/null
}

func write(t *testing.T, root string, files []file) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if f.mask {
			err = os.Symlink("/dev/null", p)
		} else {
			err = os.WriteFile(p, []byte(f.body), 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

const ok = "#!/bin/sh\nexit 0\n"

func TestChecks(t *testing.T) {
	tests := []struct {
		name             string
		files            []file
		dirs             []string // extra directories (never checks)
		required, wanted []string
	}{
		{name: "none"},
		{name: "plain files in health.d are required, sorted by name",
			files:    []file{{path: "usr/lib/txboot/health.d/20-b", body: ok}, {path: "usr/lib/txboot/health.d/10-a", body: ok}},
			required: []string{"usr/lib/txboot/health.d/10-a", "usr/lib/txboot/health.d/20-b"}},
		{name: "required/ and wanted/",
			files:    []file{{path: "usr/lib/txboot/health.d/required/r", body: ok}, {path: "usr/lib/txboot/health.d/wanted/w", body: ok}},
			required: []string{"usr/lib/txboot/health.d/required/r"}, wanted: []string{"usr/lib/txboot/health.d/wanted/w"}},
		{name: "/etc overrides /usr/lib by name",
			files: []file{{path: "usr/lib/txboot/health.d/required/x", body: ok}, {path: "etc/txboot/health.d/required/x", body: ok},
				{path: "usr/lib/txboot/health.d/required/y", body: ok}},
			required: []string{"etc/txboot/health.d/required/x", "usr/lib/txboot/health.d/required/y"}},
		{name: "a symlink to /dev/null masks",
			files: []file{{path: "usr/lib/txboot/health.d/wanted/w", body: ok}, {path: "etc/txboot/health.d/wanted/w", mask: true}}},
		{name: "directories are not checks",
			dirs:     []string{"etc/txboot/health.d/sub"},
			files:    []file{{path: "etc/txboot/health.d/sub/inner", body: ok}, {path: "etc/txboot/health.d/c", body: ok}},
			required: []string{"etc/txboot/health.d/c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range tt.dirs {
				os.MkdirAll(filepath.Join(root, d), 0o755)
			}
			write(t, root, tt.files)
			req, want := Checks(root)
			abs := func(rel []string) []string {
				var out []string
				for _, r := range rel {
					out = append(out, filepath.Join(root, r))
				}
				return out
			}
			if !slices.Equal(req, abs(tt.required)) || !slices.Equal(want, abs(tt.wanted)) {
				t.Errorf("Checks = %v, %v; want %v, %v", req, want, abs(tt.required), abs(tt.wanted))
			}
		})
	}
}

func TestRun(t *testing.T) {
	const d = "etc/txboot/health.d/"
	tests := []struct {
		name    string
		files   []file
		want    Result
		timeout bool // Failed names ErrTimeout's text
		out     []string
	}{
		{name: "no checks: nothing failed"},
		{name: "all pass",
			files: []file{{path: d + "a", body: ok}, {path: d + "wanted/b", body: ok}},
			want:  Result{Required: 1, Wanted: 1}, out: []string{"health: ok   (required)", "health: ok   (wanted)"}},
		{name: "the first required failure is the result; later checks still run",
			files: []file{{path: d + "10-x", body: "#!/bin/sh\necho nope >&2\nexit 7\n"}, {path: d + "20-y", body: "#!/bin/sh\nexit 1\n"},
				{path: d + "30-z", body: "#!/bin/sh\necho fine\n"}},
			want: Result{Required: 3, Failed: "10-x: exit status 7"}, out: []string{"FAIL (required)", "fine", "health: ok   (required)"}},
		{name: "a wanted failure is counted, not fatal",
			files: []file{{path: d + "wanted/w", body: "#!/bin/sh\nexit 3\n"}},
			want:  Result{Wanted: 1, WantedFailed: 1}, out: []string{"health: fail (wanted)"}},
		{name: "a check that cannot run fails",
			files: []file{{path: d + "broken", body: "not a script"}},
			want:  Result{Required: 1, Failed: "broken: fork/exec"}},
		{name: "a check past its time limit is killed and fails",
			files: []file{{path: d + "slow", body: "#!/bin/sh\nexec sleep 600\n"}},
			want:  Result{Required: 1, Failed: "slow: timed out after 50ms"}, timeout: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			write(t, root, tt.files)
			var out, errb bytes.Buffer
			// Checks that should pass get a limit a loaded CI machine
			// cannot hit; only the slow one is meant to time out.
			limit := 30 * time.Second
			if tt.timeout {
				limit = 50 * time.Millisecond
			}
			got := Run(root, limit, &out, &errb)
			failed := got.Failed
			if tt.want.Failed != "" && strings.HasPrefix(failed, tt.want.Failed) {
				got.Failed = tt.want.Failed // the rest is the OS's wording
			}
			if got != tt.want {
				t.Errorf("Run = %+v, want %+v\n%s%s", got, tt.want, out.String(), errb.String())
			}
			for _, w := range tt.out {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if tt.timeout && !strings.Contains(failed, ErrTimeout.Error()) {
				t.Errorf("Failed %q does not say %q", failed, ErrTimeout)
			}
		})
	}
}

func TestRunOneTimeoutIsErrTimeout(t *testing.T) {
	root := t.TempDir()
	write(t, root, []file{{path: "slow", body: "#!/bin/sh\nexec sleep 600\n"}})
	if err := runOne(filepath.Join(root, "slow"), 10*time.Millisecond, &bytes.Buffer{}, &bytes.Buffer{}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("runOne = %v, want ErrTimeout", err)
	}
}
