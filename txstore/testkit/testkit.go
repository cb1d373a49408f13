// Package testkit holds the rules every package's tests share: when a test
// may skip, and how a random test gets a seed that can be replayed.
//
// It is not internal so that bootctl, initagent, mkinitramfs and qemu-tests
// can import it too; only tests should.
package testkit

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

const (
	// CIEnv names the variable CI sets to "true" (.ci/run, `make test`).
	CIEnv = "CI"
	// SeedEnv overrides the seed of every random test, to replay a failure.
	SeedEnv = "TXBOOT_TEST_SEED"
)

// IsCI reports whether this is a CI run (CI=true). There everything a test
// needs must be installed, so a skip would hide a broken install step.
func IsCI() bool { return os.Getenv(CIEnv) == "true" }

// Skip skips t with reason, or fails it under CI=true. Every skip in the
// tree goes through here so the rule lives in one place.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if IsCI() {
		t.Fatalf("would skip, but %s=true requires it to run: %s", CIEnv, reason)
		return // a fake TB's Fatalf returns
	}
	t.Skip(reason)
}

// Skipf is Skip with a formatted reason.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	Skip(t, fmt.Sprintf(format, args...))
}

// SkipUnless skips (or fails under CI) when cond is false.
func SkipUnless(t testing.TB, cond bool, reason string) {
	t.Helper()
	if !cond {
		Skip(t, reason)
	}
}

// SkipShort skips a long test under -short (`make unit`); under CI=true it
// fails instead, since `make test` never passes -short.
func SkipShort(t testing.TB, reason string) {
	t.Helper()
	if testing.Short() {
		Skip(t, "-short: "+reason)
	}
}

// Seed returns the seed for a random test: $TXBOOT_TEST_SEED if set, else
// a fresh one. It is logged either way, so a failing run names the value
// that replays it.
func Seed(t testing.TB) int64 {
	t.Helper()
	if s := os.Getenv(SeedEnv); s != "" {
		v, err := strconv.ParseInt(s, 0, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", SeedEnv, s, err)
			return 0
		}
		t.Logf("seed %d (from %s)", v, SeedEnv)
		return v
	}
	v := time.Now().UnixNano()
	t.Logf("seed %d (replay with %s=%d)", v, SeedEnv, v)
	return v
}
