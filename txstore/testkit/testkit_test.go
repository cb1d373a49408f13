package testkit

import (
	"flag"
	"fmt"
	"strings"
	"testing"
)

// fakeTB records what a helper asked of the test instead of ending it.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
	logs            []string
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Skip(args ...any)               { f.skipped, f.msg = true, fmt.Sprint(args...) }
func (f *fakeTB) Fatalf(format string, a ...any) { f.failed, f.msg = true, fmt.Sprintf(format, a...) }
func (f *fakeTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func TestSkip(t *testing.T) {
	for _, c := range []struct {
		name        string
		ci          string
		call        func(tb testing.TB)
		skip, fatal bool
	}{
		{"outside CI skips", "", func(tb testing.TB) { Skip(tb, "no widget") }, true, false},
		{"CI=false skips", "false", func(tb testing.TB) { Skip(tb, "no widget") }, true, false},
		{"CI=1 is not CI", "1", func(tb testing.TB) { Skip(tb, "no widget") }, true, false},
		{"CI=true fails", "true", func(tb testing.TB) { Skip(tb, "no widget") }, false, true},
		{"Skipf under CI fails", "true", func(tb testing.TB) { Skipf(tb, "no %s", "widget") }, false, true},
		{"Skipf outside CI skips", "", func(tb testing.TB) { Skipf(tb, "no %s", "widget") }, true, false},
		{"SkipUnless true runs", "", func(tb testing.TB) { SkipUnless(tb, true, "no widget") }, false, false},
		{"SkipUnless true runs under CI", "true", func(tb testing.TB) { SkipUnless(tb, true, "no widget") }, false, false},
		{"SkipUnless false skips", "", func(tb testing.TB) { SkipUnless(tb, false, "no widget") }, true, false},
		{"SkipUnless false fails under CI", "true", func(tb testing.TB) { SkipUnless(tb, false, "no widget") }, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(CIEnv, c.ci)
			f := &fakeTB{}
			c.call(f)
			if f.skipped != c.skip || f.failed != c.fatal {
				t.Fatalf("skipped=%v failed=%v (%q), want skipped=%v failed=%v", f.skipped, f.failed, f.msg, c.skip, c.fatal)
			}
			if (c.skip || c.fatal) && !strings.Contains(f.msg, "no widget") {
				t.Errorf("message %q does not carry the reason", f.msg)
			}
			if c.fatal && !strings.Contains(f.msg, "CI=true") {
				t.Errorf("message %q does not say CI=true made it fail", f.msg)
			}
		})
	}
}

func TestSeed(t *testing.T) {
	t.Run("from env", func(t *testing.T) {
		t.Setenv(SeedEnv, "12345")
		f := &fakeTB{}
		if got := Seed(f); got != 12345 || f.failed {
			t.Fatalf("Seed = %d (failed=%v %q), want 12345", got, f.failed, f.msg)
		}
		if len(f.logs) != 1 || !strings.Contains(f.logs[0], "12345") {
			t.Errorf("logs %q do not name the seed", f.logs)
		}
	})
	t.Run("fresh is logged with how to replay it", func(t *testing.T) {
		t.Setenv(SeedEnv, "")
		f := &fakeTB{}
		got := Seed(f)
		want := fmt.Sprintf("%s=%d", SeedEnv, got)
		if len(f.logs) != 1 || !strings.Contains(f.logs[0], want) {
			t.Errorf("logs %q lack %q", f.logs, want)
		}
	})
	t.Run("bad env fails", func(t *testing.T) {
		t.Setenv(SeedEnv, "twelve")
		f := &fakeTB{}
		Seed(f)
		if !f.failed || !strings.Contains(f.msg, SeedEnv) {
			t.Errorf("failed=%v %q, want a failure naming %s", f.failed, f.msg, SeedEnv)
		}
	})
}

func TestSkipShort(t *testing.T) {
	short := flag.Lookup("test.short")
	old := short.Value.String()
	t.Cleanup(func() { _ = short.Value.Set(old) })
	for _, c := range []struct {
		short, ci   string
		skip, fatal bool
	}{
		{"false", "", false, false},
		{"false", "true", false, false},
		{"true", "", true, false},
		{"true", "true", false, true},
	} {
		if err := short.Value.Set(c.short); err != nil {
			t.Fatal(err)
		}
		t.Setenv(CIEnv, c.ci)
		f := &fakeTB{}
		SkipShort(f, "slow")
		if f.skipped != c.skip || f.failed != c.fatal {
			t.Errorf("-short=%s CI=%q: skipped=%v failed=%v (%q), want %v %v", c.short, c.ci, f.skipped, f.failed, f.msg, c.skip, c.fatal)
		}
	}
}
