package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/bootctl/pkgdb"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// stanza is one package of a status file.
func stanza(name, arch, version, state string) string {
	return "Package: " + name + "\nStatus: install ok " + state + "\nArchitecture: " + arch + "\nVersion: " + version +
		"\nDescription: " + name + "\n a test package\n\n"
}

// dpkgTree is a tree whose package database holds stanzas.
func dpkgTree(t *testing.T, stanzas []string, extra ...testtree.File) string {
	return tree(t, append(extra, testtree.File{Path: pkgdb.StatusRel, Data: strings.Join(stanzas, ""), Mode: 0o644})...)
}

// noBootInfo makes status see a system txboot did not boot (its default
// is then the tx it talks about).
func noBootInfo(t *testing.T) {
	oldInfo, oldCmd := bootInfoPath, procCmdline
	t.Cleanup(func() { bootInfoPath, procCmdline = oldInfo, oldCmd })
	dir := t.TempDir()
	bootInfoPath = filepath.Join(dir, "no-boot.json")
	procCmdline = filepath.Join(dir, "cmdline")
	os.WriteFile(procCmdline, []byte("quiet\n"), 0o644)
}

var (
	pkgDpkg    = stanza("dpkg", "amd64", "1.22.22", "installed")
	pkgHello   = stanza("hello", "amd64", "2.10-5", "installed")
	pkgLibFoo  = stanza("libfoo1", "amd64", "1.0-1", "installed")
	pkgLibI386 = stanza("libfoo1", "i386", "1.0-1", "installed")
)

// pkgStore: tx 1 and tx 2 with package databases (tx 2 installs nginx,
// left half-configured, upgrades libfoo1 on both architectures and removes
// hello), tx 3 without one.
func pkgStore(t *testing.T) string {
	root := t.TempDir()
	mustRun(t, "--root", root, "commit", dpkgTree(t, []string{pkgDpkg, pkgHello, pkgLibFoo, pkgLibI386}))
	mustRun(t, "--root", root, "commit", dpkgTree(t, []string{pkgDpkg,
		stanza("libfoo1", "amd64", "1.1-1", "installed"), stanza("libfoo1", "i386", "1.1-1", "installed"),
		stanza("nginx", "amd64", "1.26.3-3", "half-configured")},
		testtree.File{Path: "sbin/nginx", Data: "nginx", Mode: 0o755}))
	mustRun(t, "--root", root, "commit", tree(t))
	return root
}

func TestShowPackages(t *testing.T) {
	root := pkgStore(t)
	out := mustRun(t, "--root", root, "show", "2")
	for _, want := range []string{
		"  packages: 4 (4 changed from tx 1)\n",
		"    removed    hello 2.10-5\n",
		"    upgraded   libfoo1 1.0-1 → 1.1-1\n",
		"    upgraded   libfoo1:i386 1.0-1 → 1.1-1\n",
		"    installed  nginx 1.26.3-3\n",
		"  broken:   1 not installed cleanly: nginx (half-configured)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show 2: no %q in\n%s", want, out)
		}
	}
	if out := mustRun(t, "--root", root, "show", "1"); !strings.Contains(out, "  packages: 4\n") {
		t.Errorf("show 1 (no parent):\n%s", out)
	}
	if out := mustRun(t, "--root", root, "show", "3"); !strings.Contains(out, "  packages: none recorded (no usr/lib/sysimage/dpkg/status in this tx)\n") {
		t.Errorf("show 3 (no database):\n%s", out)
	}

	// --packages: the exact set, apt's form; the broken one left out,
	// with a warning.
	code, out, errs := run(t, "--root", root, "show", "2", "--packages")
	if code != 0 || out != "dpkg=1.22.22\nlibfoo1=1.1-1\nlibfoo1:i386=1.1-1\n" ||
		!strings.Contains(errs, "warning: tx 2: 1 package(s) not installed cleanly are left out: nginx (half-configured)") {
		t.Errorf("show 2 --packages: %d\n%s%s", code, out, errs)
	}
	code, out, errs = run(t, "--root", root, "show", "--packages", "3")
	if code != ExitFail || out != "" || !strings.Contains(errs, "tx 3 carries no package database") {
		t.Errorf("show 3 --packages: %d %q %q", code, out, errs)
	}
	if code, _, errs := run(t, "--root", root, "show", "--packages", "9"); code != ExitNotFound || !strings.Contains(errs, "tx 9") {
		t.Errorf("show 9 --packages: %d %q", code, errs)
	}
	var set struct {
		Native    string          `json:"native"`
		Installed []pkgdb.Package `json:"installed"`
		Broken    []pkgdb.Package `json:"broken"`
		Apt       []string        `json:"apt"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", "show", "--packages", "2")), &set); err != nil ||
		set.Native != "amd64" || len(set.Installed) != 3 || len(set.Broken) != 1 || len(set.Apt) != 3 {
		t.Errorf("show --packages --json: %v %+v", err, set)
	}

	var js struct {
		ID       uint64 `json:"id"`
		Packages *struct {
			Installed []pkgdb.Package `json:"installed"`
			Changes   struct {
				From    uint64 `json:"from"`
				Source  string `json:"source"`
				Changes []struct {
					Name, Arch, Old, New, Kind string
				} `json:"changes"`
			} `json:"changes"`
		} `json:"packages"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", "show", "2")), &js); err != nil || js.ID != 2 || js.Packages == nil ||
		js.Packages.Changes.Source != "computed" || js.Packages.Changes.From != 1 || len(js.Packages.Changes.Changes) != 4 ||
		js.Packages.Changes.Changes[0].Kind != "removed" || js.Packages.Changes.Changes[0].Old != "2.10-5" {
		t.Errorf("show --json: %v %+v", err, js.Packages)
	}
	js.Packages = nil
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", "show", "3")), &js); err != nil || js.Packages != nil {
		t.Errorf("show 3 --json: %v %+v", err, js.Packages)
	}
}

// The changes a run recorded are shown as recorded; without a record and
// with the parent pruned they are unknown, and status says so too.
func TestShowPackagesRecordedAndPruned(t *testing.T) {
	noBootInfo(t)
	root := t.TempDir()
	mustRun(t, "--root", root, "commit", dpkgTree(t, []string{pkgDpkg, pkgHello}))
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	recorded := []txstore.PkgChange{{Name: "hello", Arch: "amd64", Old: "2.10-5", New: "2.10-6"}}
	_, _, err = s.Commit(dpkgTree(t, []string{pkgDpkg, stanza("hello", "amd64", "2.10-6", "installed")}), txstore.CommitOptions{PkgChanges: recorded})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "--root", root, "show", "2")
	if !strings.Contains(out, "  packages: 2 (1 changed from tx 1)\n    upgraded   hello 2.10-5 → 2.10-6\n") {
		t.Errorf("show 2:\n%s", out)
	}
	if out := mustRun(t, "--root", root, "status"); !strings.Contains(out, "Packages: 1 changed from tx 1 (bootctl show 2)\n") {
		t.Errorf("status:\n%s", out)
	}
	mustRun(t, "--root", root, "commit", dpkgTree(t, []string{pkgDpkg, stanza("hello", "amd64", "2.10-7", "unpacked")}))
	mustRun(t, "--root", root, "pin", "1")
	mustRun(t, "--root", root, "prune", "--keep", "1") // removes tx 2, the parent of tx 3
	out = mustRun(t, "--root", root, "show", "3")
	if !strings.Contains(out, "  packages: 2 (changes from tx 2 unknown: parent pruned)\n") {
		t.Errorf("show 3:\n%s", out)
	}
	if out := mustRun(t, "--root", root, "status"); !strings.Contains(out, "Packages: changes from tx 2 unknown: parent pruned; 1 not installed cleanly (bootctl show 3)\n") {
		t.Errorf("status:\n%s", out)
	}
	var st struct {
		Packages *statusPkgs `json:"packages"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", "status")), &st); err != nil || st.Packages == nil ||
		st.Packages.Tx != 3 || st.Packages.Packages != 2 || st.Packages.Broken != 1 || st.Packages.Changes.Note != "parent pruned" {
		t.Errorf("status --json: %v %+v", err, st.Packages)
	}
	// The pruned parent's tree is gone, diff against tx 1 still works.
	if out := mustRun(t, "--root", root, "diff", "1", "3"); !strings.Contains(out, "packages: 1 changed\n  upgraded   hello 2.10-5 → 2.10-7\n") {
		t.Errorf("diff 1 3:\n%s", out)
	}
}

func TestStatusPackagesNone(t *testing.T) {
	noBootInfo(t)
	root := t.TempDir()
	mustRun(t, "--root", root, "commit", tree(t))
	if out := mustRun(t, "--root", root, "status"); strings.Contains(out, "Packages:") {
		t.Errorf("status of a tx without a package database:\n%s", out)
	}
	mustRun(t, "--root", root, "commit", dpkgTree(t, []string{pkgDpkg}))
	if out := mustRun(t, "--root", root, "status"); !strings.Contains(out, "Packages: changes from tx 1 unknown: tx 1 has no package database (bootctl show 2)\n") {
		t.Errorf("status:\n%s", out)
	}
	// A database that cannot be read is said so, status goes on.
	os.WriteFile(filepath.Join(root, txstore.DirName, "trees/2/usr", pkgdb.StatusRel+"-x"), nil, 0o644)
	p := filepath.Join(root, txstore.DirName, "trees/2/usr", pkgdb.StatusRel)
	os.Remove(p)
	os.Symlink("status-x", p)
	if out := mustRun(t, "--root", root, "status"); !strings.Contains(out, "Packages: tx 2's database is unreadable: ") ||
		!strings.Contains(out, "symlink") {
		t.Errorf("status with a damaged database:\n%s", out)
	}
}

func TestDiff(t *testing.T) {
	root := pkgStore(t)
	out := mustRun(t, "--root", root, "diff", "1", "2")
	for _, want := range []string{
		"tx 1 → tx 2\n",
		"packages: 4 changed\n  removed    hello 2.10-5\n  upgraded   libfoo1 1.0-1 → 1.1-1\n",
		"files: 3 changed (2 added, 0 removed, 1 changed)\n",
		"  added    /usr/sbin/nginx\n",
		"  changed  /usr/lib/sysimage/dpkg/status (content)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("diff 1 2: no %q in\n%s", want, out)
		}
	}
	out = mustRun(t, "--root", root, "diff", "2", "1")
	if !strings.Contains(out, "  installed  hello 2.10-5\n  downgraded libfoo1 1.1-1 → 1.0-1\n") || !strings.Contains(out, "  removed  /usr/sbin/nginx\n") {
		t.Errorf("diff 2 1:\n%s", out)
	}
	out = mustRun(t, "--root", root, "diff", "2", "3")
	if !strings.Contains(out, "packages: unknown: tx 3 has no package database\n") || !strings.Contains(out, "  removed  /usr/lib/sysimage/dpkg/status\n") {
		t.Errorf("diff 2 3:\n%s", out)
	}
	if out := mustRun(t, "--root", root, "diff", "1", "1"); out != "tx 1 → tx 1\npackages: 0 changed\nfiles: 0 changed (0 added, 0 removed, 0 changed)\n" {
		t.Errorf("diff 1 1:\n%s", out)
	}

	var d struct {
		From, To uint64
		Packages []struct{ Name, Arch, Old, New, Kind string }
		Files    []struct{ Path, Kind, What string }
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "diff", "1", "2", "--json")), &d); err != nil || d.From != 1 || d.To != 2 ||
		len(d.Packages) != 4 || d.Packages[3].Kind != "installed" || d.Packages[3].New != "1.26.3-3" ||
		len(d.Files) != 3 || d.Files[0].Path != "lib/sysimage/dpkg/status" || d.Files[0].What != "content" || d.Files[2].Kind != "added" {
		t.Errorf("diff --json: %v %+v", err, d)
	}

	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"diff", "1", "9"}, ExitNotFound, "bootctl diff: tx 9: no such transaction"},
		{[]string{"diff", "9", "1"}, ExitNotFound, "tx 9"},
		{[]string{"diff", "1"}, ExitUsage, "diff takes two transaction ids, got 1 arguments"},
		{[]string{"diff", "1", "x"}, ExitUsage, "\"x\" is not a transaction id"},
	} {
		code, _, errs := run(t, append([]string{"--root", root}, c.args...)...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("%v: %d %q, want %d %q", c.args, code, errs, c.code, c.msg)
		}
	}
}
