package failpoint

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

var (
	fpA = New("test/a")
	fpB = New("test/b")
)

// TestMain lets the test binary be a child that runs both points with
// TXBOOT_FAILPOINTS as the parent set it.
func TestMain(m *testing.M) {
	if os.Getenv("FAILPOINT_CHILD") == "1" {
		os.Stdout.WriteString("before\n")
		if err := fpA.Inject(); err != nil {
			os.Stdout.WriteString("a: " + err.Error() + "\n")
		}
		if err := fpB.Inject(); err != nil {
			os.Stdout.WriteString("b: " + err.Error() + "\n")
		}
		os.Stdout.WriteString("after\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestEnable(t *testing.T) {
	cases := []struct {
		action  string
		wantErr error // of Enable
		injErr  error // of Inject
	}{
		{action: "off"},
		{action: "error", injErr: ErrInjected},
		{action: "sleep(1ms)"},
		{action: "sleep(x)", wantErr: ErrAction},
		{action: "sleep(-1s)", wantErr: ErrAction},
		{action: "explode", wantErr: ErrAction},
	}
	for _, c := range cases {
		t.Run(c.action, func(t *testing.T) {
			restore, err := Enable("test/a", c.action)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("Enable: %v, want %v", err, c.wantErr)
			}
			if err != nil {
				return
			}
			defer restore()
			if err := fpA.Inject(); !errors.Is(err, c.injErr) {
				t.Fatalf("Inject: %v, want %v", err, c.injErr)
			}
			if err := fpB.Inject(); err != nil {
				t.Fatalf("another point fired: %v", err)
			}
		})
	}
	if err := fpA.Inject(); err != nil {
		t.Fatalf("after restore: %v", err)
	}
	if _, err := Enable("test/nope", "error"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown name: %v, want ErrUnknown", err)
	}
}

func TestEnableFuncRestores(t *testing.T) {
	calls := 0
	r1, err := EnableFunc("test/a", func() error { calls++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Enable("test/a", "error")
	if err != nil {
		t.Fatal(err)
	}
	if err := fpA.Inject(); !errors.Is(err, ErrInjected) {
		t.Fatalf("inner action: %v", err)
	}
	r2()
	if err := fpA.Inject(); err != nil || calls != 1 {
		t.Fatalf("outer action after restore: %v, %d calls", err, calls)
	}
	r1()
	if err := fpA.Inject(); err != nil || calls != 1 {
		t.Fatalf("after both restores: %v, %d calls", err, calls)
	}
}

func TestNames(t *testing.T) {
	got := Names()
	for _, want := range []string{"test/a", "test/b"} {
		found := false
		for _, n := range got {
			found = found || n == want
		}
		if !found {
			t.Errorf("Names() = %v lacks %s", got, want)
		}
	}
}

// TestEnv: the environment enables points in a fresh process; crash kills
// it at the point, and a bad entry is reported, not ignored.
func TestEnv(t *testing.T) {
	cases := []struct {
		env      string
		killed   bool
		out      []string
		notOut   []string
		stderrIn string
	}{
		{env: "", out: []string{"before", "after"}},
		{env: "test/b=error", out: []string{"b: failpoint: injected error at test/b", "after"}, notOut: []string{"a:"}},
		{env: "test/a=crash", killed: true, out: []string{"before"}, notOut: []string{"after"}, stderrIn: "failpoint test/a: crash"},
		{env: "test/a=off, test/b=error", out: []string{"b: ", "after"}, notOut: []string{"a:"}},
		{env: "test/zz=crash", out: []string{"after"}, stderrIn: "unknown name"},
		{env: "test/a", out: []string{"after"}, stderrIn: "want name=action"},
	}
	for _, c := range cases {
		t.Run(c.env, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "FAILPOINT_CHILD=1", EnvVar+"="+c.env)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			var ee *exec.ExitError
			killed := errors.As(err, &ee) && ee.Sys().(interface{ Signaled() bool }).Signaled()
			if killed != c.killed {
				t.Fatalf("killed=%v (%v), want %v; out %q", killed, err, c.killed, out)
			}
			if !killed && err != nil {
				t.Fatalf("child: %v", err)
			}
			for _, w := range c.out {
				if !strings.Contains(string(out), w) {
					t.Errorf("stdout %q lacks %q", out, w)
				}
			}
			for _, w := range c.notOut {
				if strings.Contains(string(out), w) {
					t.Errorf("stdout %q has %q", out, w)
				}
			}
			if !strings.Contains(stderr.String(), c.stderrIn) {
				t.Errorf("stderr %q lacks %q", stderr.String(), c.stderrIn)
			}
		})
	}
}
