// Package qemutests boots real Debian kernels in QEMU (TCG) against disk
// images built without root privileges, and asserts on the serial console.
// These tests need qemu-system-x86, the kernels fetched by
// scripts/fetch-kernels.sh, busybox-static and e2fsprogs: `make test`
// installs them. Outside CI a missing piece skips with the reason; in CI
// (CI=true) it fails.
package qemutests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/txboot/txboot/qemu-tests/fixture"
	"github.com/txboot/txboot/qemu-tests/harness"
)

var (
	binsOnce sync.Once
	bins     *fixture.Bins
	binsErr  error
	workDir  string
)

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "txboot-qemu-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// getBins builds the binaries under test once per run.
func getBins(t testing.TB) *fixture.Bins {
	t.Helper()
	binsOnce.Do(func() {
		repo, err := harness.RepoRoot()
		if err != nil {
			binsErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		bins, binsErr = fixture.Build(ctx, repo, filepath.Join(workDir, "bin"))
	})
	if binsErr != nil {
		t.Fatal(binsErr)
	}
	return bins
}

var (
	initrdMu sync.Mutex
	initrds  = map[string]string{}
)

// initrdFor builds (once) an initramfs for k carrying busybox for rescue.
func initrdFor(t testing.TB, k harness.Kernel, extra ...string) string {
	t.Helper()
	b := getBins(t)
	initrdMu.Lock()
	defer initrdMu.Unlock()
	key := k.Name + fmt.Sprint(extra)
	if p, ok := initrds[key]; ok {
		return p
	}
	out := filepath.Join(workDir, fmt.Sprintf("initrd-%s-%d.img", k.Version, len(initrds)))
	args := append([]string{"--add-file", fixture.Busybox + ":/bin/busybox"}, extra...)
	if err := fixture.Initramfs(context.Background(), b, k.Version, k.ModRoot, out, args...); err != nil {
		t.Fatal(err)
	}
	initrds[key] = out
	return out
}
