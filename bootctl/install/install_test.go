package install

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/bootctl/systemd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/failpoint"
	"golang.org/x/sys/unix"
)

func mkfifo(p string) error { return unix.Mkfifo(p, 0o644) }

const kver = "6.1.0-test"

// osTree is a small Debian-like root: merged /usr, a kernel in /boot and
// its modules directory, os-release, machine-id, /etc/kernel/cmdline.
type osTree struct {
	root, esp, tools string
	hostSDBoot       string
}

func write(t *testing.T, p, data string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func newTree(t *testing.T) *osTree {
	t.Helper()
	o := &osTree{root: t.TempDir(), esp: t.TempDir(), tools: t.TempDir()}
	r := o.root
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc/systemd/system", "boot"} {
		if err := os.MkdirAll(filepath.Join(r, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(r, l)); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(r, "usr/bin/sh"), "#!shell\n", 0o755)
	write(t, filepath.Join(r, "usr/lib/os-release"), "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n", 0o644)
	write(t, filepath.Join(r, "usr/lib/modules", kver, "modules.dep"), "", 0o644)
	write(t, filepath.Join(r, "usr/lib/systemd/boot/efi/systemd-bootx64.efi"), "MZ tree's systemd-boot", 0o644)
	write(t, filepath.Join(r, "boot/vmlinuz-"+kver), "the kernel", 0o644)
	write(t, filepath.Join(r, "etc/machine-id"), "37b973ccc508418e8dd55cabcdedd325\n", 0o444)
	write(t, filepath.Join(r, "etc/kernel/cmdline"), "root=PARTUUID=feed quiet\n", 0o644)
	if err := os.Chmod(filepath.Join(r, "usr"), 0o751); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"bootctl", "initagent", "mkinitramfs"} {
		write(t, filepath.Join(o.tools, n), "binary "+n, 0o755)
	}
	o.hostSDBoot = filepath.Join(o.tools, "host-systemd-bootx64.efi")
	write(t, o.hostSDBoot, "MZ host's systemd-boot", 0o644)
	return o
}

type entriesCall struct {
	tx      uint64 // 0: re-sync
	rootArg string
}

func (o *osTree) options(calls *[]entriesCall) Options {
	return Options{
		Root: o.root, ESP: o.esp,
		Bootctl: filepath.Join(o.tools, "bootctl"), Initagent: filepath.Join(o.tools, "initagent"),
		Mkinitramfs: filepath.Join(o.tools, "mkinitramfs"), HostSystemdBoot: o.hostSDBoot,
		Mountinfo: filepath.Join(o.tools, "no-mountinfo"), Timeout: 5 * time.Second, Log: &bytes.Buffer{},
		Entries: func(s *txstore.Store, tx *txstore.Tx, rootArg string) error {
			c := entriesCall{rootArg: rootArg}
			if tx != nil {
				c.tx = tx.ID
			}
			*calls = append(*calls, c)
			return nil
		},
	}
}

// snapshot lists every path below dir with its type, permission bits,
// content or link target.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			v += " -> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			v += " " + string(b)
		}
		m[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sameSnapshot(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	var diffs []string
	for k, v := range want {
		if got[k] != v {
			diffs = append(diffs, fmt.Sprintf("%s: %q, want %q", k, got[k], v))
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: added (%q)", k, v))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("%s changed:\n  %s", what, strings.Join(diffs, "\n  "))
	}
}

// Every refusal names the path, says why, and changes nothing.
func TestRefusals(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(t *testing.T, o *osTree, opt *Options)
		is     error
		want   []string // in the message; ROOT is replaced by the tree
	}{
		{"bin is a directory", func(t *testing.T, o *osTree, _ *Options) {
			os.Remove(filepath.Join(o.root, "bin"))
			os.Mkdir(filepath.Join(o.root, "bin"), 0o755)
		}, ErrNotMerged, []string{"ROOT/bin", "directory", "usr/bin"}},
		{"sbin missing", func(t *testing.T, o *osTree, _ *Options) {
			os.Remove(filepath.Join(o.root, "sbin"))
		}, ErrNotMerged, []string{"ROOT/sbin"}},
		{"lib points elsewhere", func(t *testing.T, o *osTree, _ *Options) {
			os.Remove(filepath.Join(o.root, "lib"))
			os.Symlink("/opt/lib", filepath.Join(o.root, "lib"))
		}, ErrNotMerged, []string{"ROOT/lib", "/opt/lib"}},
		{"lib64 a real directory", func(t *testing.T, o *osTree, _ *Options) {
			os.Remove(filepath.Join(o.root, "lib64"))
			os.Mkdir(filepath.Join(o.root, "lib64"), 0o755)
		}, ErrNotMerged, []string{"ROOT/lib64"}},
		{"usr a symlink", func(t *testing.T, o *osTree, _ *Options) {
			os.Rename(filepath.Join(o.root, "usr"), filepath.Join(o.root, "realusr"))
			os.Symlink("realusr", filepath.Join(o.root, "usr"))
		}, ErrRefused, []string{"ROOT/usr", "symlink"}},
		{"no kernel", func(t *testing.T, o *osTree, _ *Options) {
			os.Remove(filepath.Join(o.root, "boot/vmlinuz-"+kver))
		}, ErrNoKernel, []string{"ROOT/usr/lib/modules", "ROOT/boot/vmlinuz-"}},
		{"kernel without modules", func(t *testing.T, o *osTree, _ *Options) {
			os.RemoveAll(filepath.Join(o.root, "usr/lib/modules"))
		}, ErrNoKernel, []string{"ROOT/boot/vmlinuz-"}},
		{"no systemd-boot", func(t *testing.T, o *osTree, opt *Options) {
			os.Remove(filepath.Join(o.root, "usr/lib/systemd/boot/efi/systemd-bootx64.efi"))
			opt.HostSystemdBoot = filepath.Join(o.tools, "none.efi")
		}, ErrNoSystemdBoot, []string{"ROOT/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "none.efi"}},
		{"systemd-boot not an EFI binary", func(t *testing.T, o *osTree, opt *Options) {
			write(t, filepath.Join(o.root, "usr/lib/systemd/boot/efi/systemd-bootx64.efi"), "garbage", 0o644)
		}, ErrNoSystemdBoot, []string{"ROOT/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "not an EFI"}},
		{"no root= anywhere", func(t *testing.T, o *osTree, _ *Options) {
			write(t, filepath.Join(o.root, "etc/kernel/cmdline"), "quiet\n", 0o644)
		}, ErrNoRootArg, []string{"--root-arg", "ROOT/etc/kernel/cmdline"}},
		{"reserved keys in kernel/cmdline", func(t *testing.T, o *osTree, _ *Options) {
			write(t, filepath.Join(o.root, "etc/kernel/cmdline"), "root=/dev/vda quiet txboot.tx=3\n", 0o644)
		}, ErrRefused, []string{"ROOT/etc/kernel/cmdline", "txboot.tx=3"}},
		{"device node in usr", func(t *testing.T, o *osTree, _ *Options) {
			if err := mkfifo(filepath.Join(o.root, "usr/lib/fifo")); err != nil {
				t.Fatal(err)
			}
		}, ErrRefused, []string{"ROOT/usr/lib/fifo"}},
		{"ESP inside usr", func(t *testing.T, o *osTree, opt *Options) {
			opt.ESP = filepath.Join(o.root, "usr/lib/esp")
			os.Mkdir(opt.ESP, 0o755)
		}, ErrRefused, []string{"ROOT/usr/lib/esp"}},
		{"ESP missing", func(t *testing.T, o *osTree, opt *Options) {
			opt.ESP = filepath.Join(o.tools, "no-esp")
		}, ErrRefused, []string{"no-esp"}},
		{"tool missing", func(t *testing.T, o *osTree, opt *Options) {
			opt.Initagent = filepath.Join(o.tools, "no-initagent")
		}, ErrRefused, []string{"no-initagent", "--initagent"}},
		{"the tree has its own mkinitramfs, the host none: the tree's never builds the initrd", func(t *testing.T, o *osTree, opt *Options) {
			write(t, filepath.Join(o.root, "usr/lib/txboot/mkinitramfs"), "#!/bin/sh\n", 0o755)
			opt.Mkinitramfs = ""
		}, ErrRefused, []string{"mkinitramfs not found", "--mkinitramfs"}},
		{"foreign file where the unit's link goes", func(t *testing.T, o *osTree, _ *Options) {
			links, err := enableLinks(systemd.HealthUnit, systemd.HealthUnitName)
			if err != nil || len(links) == 0 {
				t.Fatal(links, err)
			}
			os.MkdirAll(filepath.Join(o.root, links[0].dir), 0o755)
			os.Symlink("/dev/null", filepath.Join(o.root, links[0].dir, systemd.HealthUnitName))
		}, ErrRefused, []string{"ROOT/etc/systemd/system/", "/dev/null"}},
		{"root is not a directory", func(t *testing.T, o *osTree, opt *Options) {
			opt.Root = filepath.Join(o.root, "etc/machine-id")
		}, ErrRefused, []string{"ROOT/etc/machine-id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newTree(t)
			var calls []entriesCall
			opt := o.options(&calls)
			tt.break_(t, o, &opt)
			before, espBefore := snapshot(t, o.root), snapshot(t, o.esp)
			_, err := Run(opt)
			if err == nil {
				t.Fatal("install succeeded")
			}
			msg := strings.ReplaceAll(err.Error(), o.root, "ROOT")
			if !errors.Is(err, tt.is) {
				t.Errorf("error %q is not %v", msg, tt.is)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			sameSnapshot(t, "ROOT", snapshot(t, o.root), before)
			sameSnapshot(t, "ESP", snapshot(t, o.esp), espBefore)
			if len(calls) != 0 {
				t.Errorf("entries synced: %v", calls)
			}
		})
	}
}

func TestInstall(t *testing.T) {
	for _, inTreeSDBoot := range []bool{true, false} {
		t.Run(fmt.Sprintf("tree's systemd-boot=%v", inTreeSDBoot), func(t *testing.T) {
			o := newTree(t)
			wantSD := "MZ tree's systemd-boot"
			if !inTreeSDBoot {
				os.RemoveAll(filepath.Join(o.root, "usr/lib/systemd/boot"))
				wantSD = "MZ host's systemd-boot"
			}
			var calls []entriesCall
			opt := o.options(&calls)
			res, err := Run(opt)
			if err != nil {
				t.Fatalf("install: %v\n%s", err, opt.Log)
			}
			if res.Already || res.Tx == nil || res.Tx.ID != 1 {
				t.Fatalf("result %+v", res)
			}
			if len(calls) != 1 || calls[0].tx != 1 || calls[0].rootArg != "" {
				t.Fatalf("entries calls %+v (root= comes from kernel/cmdline: not passed, not saved)", calls)
			}
			// ROOT/usr: an empty mount point with the original mode.
			fi, err := os.Lstat(filepath.Join(o.root, "usr"))
			if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o751 {
				t.Fatalf("ROOT/usr: %v %v", fi, err)
			}
			if des, _ := os.ReadDir(filepath.Join(o.root, "usr")); len(des) != 0 {
				t.Fatalf("ROOT/usr not empty: %v", des)
			}
			s, err := txstore.Open(o.root, txstore.Options{ReadOnly: true, Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			tx, err := s.Get(1)
			if err != nil || len(tx.Kernels) != 1 || tx.Kernels[0] != kver {
				t.Fatalf("tx 1: %+v %v", tx, err)
			}
			if probs, err := s.Verify(1, txstore.VerifyFull); err != nil || len(probs) != 0 {
				t.Fatalf("verify tx 1: %v %v", probs, err)
			}
			usr := s.TreeDir(1)
			for rel, want := range map[string]string{
				"lib/modules/" + kver + "/vmlinuz":             "the kernel",
				"lib/txboot/bootctl":                           "binary bootctl",
				"lib/txboot/initagent":                         "binary initagent",
				"lib/txboot/mkinitramfs":                       "binary mkinitramfs",
				"lib/systemd/system/" + systemd.HealthUnitName: string(systemd.HealthUnit),
				"lib/systemd/system/" + systemd.SealUnitName:   string(systemd.SealUnit),
				"bin/sh": "#!shell\n",
			} {
				if b, err := os.ReadFile(filepath.Join(usr, rel)); err != nil || string(b) != want {
					t.Errorf("tx 1 %s: %q %v", rel, b, err)
				}
			}
			if fi, err := os.Stat(filepath.Join(usr, "lib/txboot/initagent")); err != nil || fi.Mode().Perm()&0o111 == 0 {
				t.Errorf("initagent not executable: %v %v", fi, err)
			}
			// Enabled per each unit's [Install] section, as systemctl would.
			for _, u := range systemd.Units() {
				links, _ := enableLinks(u.Data, u.Name)
				for _, l := range links {
					got, err := os.Readlink(filepath.Join(o.root, l.dir, u.Name))
					if err != nil || got != "/usr/lib/systemd/system/"+u.Name {
						t.Errorf("%s/%s: %q %v", l.dir, u.Name, got, err)
					}
				}
			}
			for _, rel := range []string{"EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI"} {
				if b, err := os.ReadFile(filepath.Join(o.esp, rel)); err != nil || string(b) != wantSD {
					t.Errorf("ESP %s: %q %v", rel, b, err)
				}
			}
			if _, err := os.Stat(filepath.Join(o.esp, "loader/loader.conf")); err != nil {
				t.Errorf("loader.conf: %v", err)
			}
			// /boot and /etc are the user's: the kernel stays in /boot.
			if _, err := os.Stat(filepath.Join(o.root, "boot/vmlinuz-"+kver)); err != nil {
				t.Errorf("boot/vmlinuz: %v", err)
			}
		})
	}
}

// A second run finds the store, commits nothing and re-syncs entries; a
// bootloader file gone from the ESP is put back.
func TestInstallRerun(t *testing.T) {
	o := newTree(t)
	var calls []entriesCall
	opt := o.options(&calls)
	if _, err := Run(opt); err != nil {
		t.Fatal(err)
	}
	before, espBefore := snapshot(t, o.root), snapshot(t, o.esp)
	log := &bytes.Buffer{}
	opt.Log = log
	res, err := Run(opt)
	if err != nil || !res.Already {
		t.Fatalf("rerun: %+v %v", res, err)
	}
	if !strings.Contains(log.String(), "already installed") {
		t.Errorf("rerun says %q", log)
	}
	if len(calls) != 2 || calls[1].tx != 0 {
		t.Errorf("entries calls %+v", calls)
	}
	after := snapshot(t, o.root)
	for k := range after {
		if strings.HasPrefix(k, ".txboot/") { // lock, db pages
			delete(after, k)
			delete(before, k)
		}
	}
	sameSnapshot(t, "ROOT on rerun", after, before)
	sameSnapshot(t, "ESP on rerun", snapshot(t, o.esp), espBefore)

	os.Remove(filepath.Join(o.esp, "EFI/BOOT/BOOTX64.EFI"))
	if _, err := Run(opt); err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, "ESP after restoring BOOTX64.EFI", snapshot(t, o.esp), espBefore)
	s, err := txstore.Open(o.root, txstore.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if txs, _ := s.List(); len(txs) != 1 {
		t.Errorf("%d txs after reruns", len(txs))
	}
}

// A commit that fails (here: /usr changed during the commit) puts ROOT
// back: the consumed /usr returns, everything install added is removed,
// and so is the store it created. Nothing reaches the ESP.
func TestInstallCommitFailureUndone(t *testing.T) {
	o := newTree(t)
	var calls []entriesCall
	opt := o.options(&calls)
	before, espBefore := snapshot(t, o.root), snapshot(t, o.esp)
	restore, err := failpoint.EnableFunc("commit/objects-published", func() error {
		write(t, filepath.Join(o.root, "usr/lib/late"), "late", 0o644)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	_, err = Run(opt)
	if !errors.Is(err, txstore.ErrChanged) {
		t.Fatalf("install: %v, want ErrChanged", err)
	}
	after := snapshot(t, o.root)
	if !strings.HasPrefix(after["usr/lib/late"], "-") {
		t.Fatalf("the change is lost: %v", after["usr/lib/late"])
	}
	delete(after, "usr/lib/late")
	// Files taken by hardlink lose their write bits (txstore's consume).
	for k, v := range after {
		if b, ok := before[k]; ok && v != b && len(v) > 10 && len(b) > 10 && v[10:] == b[10:] {
			after[k] = b
		}
	}
	sameSnapshot(t, "ROOT after a failed commit", after, before)
	sameSnapshot(t, "ESP", snapshot(t, o.esp), espBefore)
	if len(calls) != 0 {
		t.Errorf("entries synced: %v", calls)
	}
}

// A failure after the tx is recorded says what was done and how to finish.
func TestInstallLateFailureSaysWhatWasDone(t *testing.T) {
	o := newTree(t)
	var calls []entriesCall
	opt := o.options(&calls)
	// A child's stderr ends in a newline (issue 18: "…\n; done: …").
	cause := errors.New("mkinitramfs: ESP full\n")
	opt.Entries = func(*txstore.Store, *txstore.Tx, string) error { return cause }
	_, err := Run(opt)
	if err == nil {
		t.Fatal("no error")
	}
	if !errors.Is(err, cause) {
		t.Errorf("error %v does not wrap the cause", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q: the cause's newline is inside the summary line", err)
	}
	msg := strings.ReplaceAll(err.Error(), o.root, "ROOT")
	for _, w := range []string{"ESP full", "tx 1", "ROOT/usr", "again"} {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q lacks %q", msg, w)
		}
	}
	opt.Entries = o.options(&calls).Entries
	if res, err := Run(opt); err != nil || !res.Already || len(calls) != 1 {
		t.Fatalf("finishing run: %+v %v %v", res, err, calls)
	}
}

func TestEnableLinks(t *testing.T) {
	tests := []struct {
		name, install string
		want          []string
		err           bool
	}{
		{"wanted", "WantedBy=multi-user.target\n", []string{"etc/systemd/system/multi-user.target.wants"}, false},
		{"required and wanted", "RequiredBy=boot-complete.target\nWantedBy=a.target b.target\n",
			[]string{"etc/systemd/system/boot-complete.target.requires", "etc/systemd/system/a.target.wants", "etc/systemd/system/b.target.wants"}, false},
		{"upheld", "UpheldBy=x.target\n", []string{"etc/systemd/system/x.target.upholds"}, false},
		{"empty resets", "WantedBy=a.target\nWantedBy=\nWantedBy=b.target\n", []string{"etc/systemd/system/b.target.wants"}, false},
		{"continuation and comments", "# c\n; c\nWantedBy=a.target \\\n  b.target\n", []string{"etc/systemd/system/a.target.wants", "etc/systemd/system/b.target.wants"}, false},
		{"duplicates once", "WantedBy=a.target a.target\n", []string{"etc/systemd/system/a.target.wants"}, false},
		{"nothing to enable", "Also=foo.service\n", nil, true},
		{"path in a name", "WantedBy=../../etc\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unit := "[Unit]\nDescription=x\nWantedBy=ignored.target\n[Install]\n" + tt.install + "[X-Other]\nWantedBy=ignored2.target\n"
			links, err := enableLinks([]byte(unit), "u.service")
			if (err != nil) != tt.err {
				t.Fatalf("err %v", err)
			}
			var got []string
			for _, l := range links {
				got = append(got, l.dir)
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	// The shipped unit is enabled somewhere.
	if links, err := enableLinks(systemd.HealthUnit, systemd.HealthUnitName); err != nil || len(links) == 0 {
		t.Errorf("shipped unit: %v %v", links, err)
	}
}
