package install

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
	"golang.org/x/sys/unix"
)

// debianRoot finds the Debian 13 root scripts/debian-root.sh caches
// (DIR/root, the .debs in DIR/debs), without building it: a debootstrap
// is `make deps`' job, not a unit test's.
func debianRoot(t *testing.T) (root, debs string) {
	t.Helper()
	cache := os.Getenv("TXBOOT_DEBIAN_CACHE")
	if cache == "" {
		cache = "/var/cache/txboot/debian"
	}
	marks, _ := filepath.Glob(filepath.Join(cache, "trixie-*", ".txboot-complete"))
	var newest string
	var newestTime int64
	for _, m := range marks {
		if fi, err := os.Stat(m); err == nil && fi.ModTime().UnixNano() > newestTime {
			newest, newestTime = filepath.Dir(m), fi.ModTime().UnixNano()
		}
	}
	if newest == "" {
		testkit.Skipf(t, "no cached Debian 13 root in %s: build it with `bash scripts/debian-root.sh trixie` (or `make deps`)", cache)
	}
	return filepath.Join(newest, "root"), filepath.Join(newest, "debs")
}

// statSnapshot lists every path below dir with its type, mode, size,
// inode and change time: any write, metadata included, shows.
func statSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		m[p] = fmt.Sprintf("%o %d %d %d.%d %d.%d", st.Mode, st.Size, st.Ino, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func diffStats(got, want map[string]string) []string {
	var d []string
	for k, v := range want {
		if got[k] != v {
			d = append(d, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			d = append(d, k+" (added)")
		}
	}
	sort.Strings(d)
	return d
}

// chrootRun runs argv chrooted into root with a plain environment; ro
// first binds root/usr read-only over itself in a private mount namespace
// (and no network: nothing here may download). It returns the exit code
// and the combined output.
func chrootRun(t *testing.T, root string, ro bool, argv ...string) (int, string) {
	t.Helper()
	var cmd *exec.Cmd
	if ro {
		usr := filepath.Join(root, "usr")
		script := `mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec chroot "$@"`
		cmd = exec.Command("unshare", append([]string{"--mount", "--net", "--propagation", "private", "sh", "-c", script, "sh", usr, root}, argv...)...)
	} else {
		cmd = exec.Command("chroot", append([]string{root}, argv...)...)
	}
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "HOME=/root"}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	t.Logf("%s (ro=%v): exit %d\n%s", strings.Join(argv, " "), ro, code, out)
	return code, string(out)
}

// On a copy of a real Debian 13 with the database moved into /usr and
// /usr read-only (the running system): dpkg -i and apt-get install refuse
// with the guard's message and write neither the database nor /usr;
// readers work through the link. With /usr writable (a run's working
// copy) dpkg installs through the link into usr/lib/sysimage/dpkg, and
// apt keeps its marks in usr/lib/sysimage/apt.
func TestPkgDBDebian(t *testing.T) {
	testkit.SkipUnless(t, os.Geteuid() == 0, "needs root: chroot, mount namespaces, a copy of a Debian root with its owners")
	for _, tool := range []string{"unshare", "chroot", "mount", "cp", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Skipf(t, "%s not on $PATH (util-linux, coreutils)", tool)
		}
	}
	src, debs := debianRoot(t)
	deb, _ := filepath.Glob(filepath.Join(debs, "hello_*.deb"))
	if len(deb) != 1 {
		testkit.Skipf(t, "no hello .deb in %s: rebuild it with `bash scripts/debian-root.sh trixie`", debs)
	}
	root := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("cp", "-a", "--reflink=auto", src, root).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v %s", src, err, out)
	}
	// Inside the root, where apt's _apt sandbox can read it; no package
	// lists, so apt takes the file and never the network.
	b, err := os.ReadFile(deb[0])
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "var/tmp/hello.deb"), string(b), 0o644)
	lists, _ := filepath.Glob(filepath.Join(root, "var/lib/apt/lists/*_Packages*"))
	for _, l := range lists {
		os.Remove(l)
	}

	if _, _, log, err := applyPkgDB(t, root); err != nil {
		t.Fatalf("pkgdb step: %v\n%s", err, log)
	}
	readlinkIs(t, filepath.Join(root, DpkgVarDir), DpkgDirLink)
	status := filepath.Join(root, DpkgDir, "status")
	statusBefore, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	usrBefore := statSnapshot(t, filepath.Join(root, "usr"))

	for _, argv := range [][]string{
		{"dpkg", "-i", "/var/tmp/hello.deb"},
		{"apt-get", "install", "-y", "/var/tmp/hello.deb"},
		{"dpkg", "--remove", "dpkg"},
	} {
		code, out := chrootRun(t, root, true, argv...)
		if code == 0 || !strings.Contains(out, GuardMessage) || !strings.Contains(out, "bootctl run") {
			t.Errorf("%v on a read-only /usr: exit %d, want a refusal with the guard's message:\n%s", argv, code, out)
		}
	}
	if b, err := os.ReadFile(status); err != nil || !bytes.Equal(b, statusBefore) {
		t.Errorf("the status file changed under a read-only /usr (%v)", err)
	}
	if d := diffStats(statSnapshot(t, filepath.Join(root, "usr")), usrBefore); len(d) > 0 {
		t.Errorf("usr changed: %v", d)
	}
	if code, out := chrootRun(t, root, true, "dpkg", "-l", "dpkg"); code != 0 || !strings.Contains(out, "ii  dpkg") {
		t.Errorf("dpkg -l through the link: exit %d\n%s", code, out)
	}

	// Writable: what a run's working copy is.
	if code, out := chrootRun(t, root, false, "dpkg", "-i", "/var/tmp/hello.deb"); code != 0 {
		t.Fatalf("dpkg -i with /usr writable: exit %d\n%s", code, out)
	}
	b, err = os.ReadFile(status)
	if err != nil || !strings.Contains(string(b), "\nPackage: hello\nStatus: install ok installed\n") {
		t.Errorf("%s lacks hello installed (%v)", status, err)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/bin/hello")); err != nil {
		t.Errorf("hello not unpacked: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(root, DpkgVarDir)); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("%s is no longer the link: %v %v", DpkgVarDir, fi, err)
	}
	if code, out := chrootRun(t, root, false, "apt-mark", "auto", "hello"); code != 0 {
		t.Errorf("apt-mark auto: exit %d\n%s", code, out)
	}
	fileHas(t, filepath.Join(root, AptExtendedStates), "Package: hello\nArchitecture: amd64\nAuto-Installed: 1\n")
	missing(t, filepath.Join(root, AptVarExtendedStates))
}

func fileHas(t *testing.T, p, want string) {
	t.Helper()
	if b, err := os.ReadFile(p); err != nil || !strings.Contains(string(b), want) {
		t.Errorf("%s: %q %v, want it to hold %q", p, b, err, want)
	}
}
