package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoUpwardImports: PID 1 shares contracts with bootctl and mkinitramfs
// only through txstore/... (and initagent's own packages); it must never
// link their code. `go list -deps` sees test-free, transitive imports, so
// a package that imports bootctl/x through any chain fails here.
func TestNoUpwardImports(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to list dependencies: %v", err)
	}
	const mod = "github.com/txboot/txboot/"
	out, err := exec.Command(goTool, "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, mod+"initagent/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], mod) {
			continue
		}
		seen++
		for _, imp := range f[1:] {
			for _, banned := range []string{"bootctl", "mkinitramfs", "qemu-tests"} {
				if imp == mod+banned || strings.HasPrefix(imp, mod+banned+"/") {
					t.Errorf("%s imports %s: initagent must not depend on %s/ (move the shared part under txstore/)", f[0], imp, banned)
				}
			}
		}
	}
	if seen < 3 {
		t.Fatalf("go list saw only %d txboot packages; the check proves nothing:\n%s", seen, out)
	}
}
