package bls

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeRel(t *testing.T, root, rel, data string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestOSName(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"debian", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n", "Debian GNU/Linux 12 (bookworm)"},
		{"single quotes", "PRETTY_NAME='Fedora Linux 40'\n", "Fedora Linux 40"},
		{"escapes", `PRETTY_NAME="A \"quoted\" \$name\\"` + "\n", `A "quoted" $name\`},
		{"unquoted", "PRETTY_NAME=Alpine\n", "Alpine"},
		{"name only", "NAME=Arch\n", "Arch"},
		{"comments and blanks", "# c\n\n  PRETTY_NAME=\"X\"\n", "X"},
		{"last wins", "PRETTY_NAME=A\nPRETTY_NAME=B\n", "B"},
		{"control characters dropped", "PRETTY_NAME=\"evil\x1b[2J\"\n", "evil[2J"},
		{"none", "ID=txboot\n", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			usr := t.TempDir()
			writeRel(t, usr, "lib/os-release", tt.data)
			if got := OSName(usr); got != tt.want {
				t.Errorf("OSName = %q, want %q", got, tt.want)
			}
		})
	}
	// A symlink is not followed out of the tree, and a missing file is "".
	usr := t.TempDir()
	outside := filepath.Join(t.TempDir(), "os-release")
	os.WriteFile(outside, []byte("PRETTY_NAME=Outside\n"), 0o644)
	os.MkdirAll(filepath.Join(usr, "lib"), 0o755)
	if err := os.Symlink(outside, filepath.Join(usr, "lib/os-release")); err != nil {
		t.Fatal(err)
	}
	if got := OSName(usr); got != "" {
		t.Errorf("symlinked os-release: %q, want \"\"", got)
	}
	if got := OSName(t.TempDir()); got != "" {
		t.Errorf("missing os-release: %q", got)
	}
}

func TestMachineID(t *testing.T) {
	tests := []struct {
		data, want string
	}{
		{"37b973ccc508418e8dd55cabcdedd325\n", "37b973ccc508418e8dd55cabcdedd325"},
		{"37B973CCC508418E8DD55CABCDEDD325", "37b973ccc508418e8dd55cabcdedd325"},
		{"uninitialized\n", ""},
		{"", ""},
		{"37b973ccc508418e8dd55cabcdedd32", ""},
		{"00000000000000000000000000000000\n", ""},
	}
	for _, tt := range tests {
		root := t.TempDir()
		writeRel(t, root, "etc/machine-id", tt.data)
		if got := MachineID(root); got != tt.want {
			t.Errorf("MachineID(%q) = %q, want %q", tt.data, got, tt.want)
		}
	}
	if got := MachineID(t.TempDir()); got != "" {
		t.Errorf("no file: %q", got)
	}
}

func TestKernelCmdline(t *testing.T) {
	tests := []struct {
		name, etc, usrlib string
		root, options     string
		dropped           []string
	}{
		{name: "none"},
		{name: "root and rest", etc: "root=UUID=1234 ro quiet\n", root: "UUID=1234", options: "ro quiet"},
		{name: "lines joined", etc: "quiet\nconsole=ttyS0  splash\n", options: "quiet console=ttyS0 splash"},
		{name: "last root wins", etc: "root=/dev/a root=/dev/b rw", root: "/dev/b", options: "rw"},
		{name: "usr/lib fallback", usrlib: "root=LABEL=r loglevel=3", root: "LABEL=r", options: "loglevel=3"},
		{name: "etc wins over usr/lib", etc: "quiet", usrlib: "root=LABEL=r", options: "quiet"},
		{name: "reserved dropped", etc: "root=/dev/a txboot.tx=3 initrd=/x quiet", root: "/dev/a", options: "quiet", dropped: []string{"txboot.tx=3", "initrd=/x"}},
		{name: "quoted value kept", etc: `acpi="a b" quiet`, options: `acpi="a b" quiet`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.etc != "" {
				writeRel(t, root, "etc/kernel/cmdline", tt.etc)
			}
			if tt.usrlib != "" {
				writeRel(t, root, "usr/lib/kernel/cmdline", tt.usrlib)
			}
			kc, err := ReadKernelCmdline(root)
			if err != nil {
				t.Fatal(err)
			}
			if kc.Root != tt.root || kc.Options != tt.options || strings.Join(kc.Dropped, "|") != strings.Join(tt.dropped, "|") {
				t.Errorf("got root %q options %q dropped %q; want %q %q %q", kc.Root, kc.Options, kc.Dropped, tt.root, tt.options, tt.dropped)
			}
			if tt.etc != "" && kc.Path != filepath.Join(root, "etc/kernel/cmdline") {
				t.Errorf("Path = %q", kc.Path)
			}
		})
	}
	// A directory in its place is an error naming the path, not "no options".
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/kernel/cmdline"), 0o755)
	if _, err := ReadKernelCmdline(root); err == nil || !strings.Contains(err.Error(), "etc/kernel/cmdline") {
		t.Errorf("directory as cmdline: %v", err)
	}
}

// Entries are titled with the tx's own OS name unless --os-name says
// otherwise, and carry the machine ID.
func TestSyncTitleAndMachineID(t *testing.T) {
	f := newFixture(t)
	f.cfg.OSName = ""
	f.cfg.MachineID = "37b973ccc508418e8dd55cabcdedd325"
	t1 := f.tx(1, "k")
	t1.OSName = "Debian GNU/Linux 12 (bookworm)"
	t2 := f.tx(2, "k")
	f.sync(t1, t2)
	e1 := f.read(EntriesDir + "/txboot-1+3.conf")
	for _, want := range []string{"title Debian GNU/Linux 12 (bookworm) (tx 1)\n", "machine-id 37b973ccc508418e8dd55cabcdedd325\n"} {
		if !strings.Contains(e1, want) {
			t.Errorf("entry 1 lacks %q:\n%s", want, e1)
		}
	}
	if e2 := f.read(EntriesDir + "/txboot-2+3.conf"); !strings.Contains(e2, "title Linux (tx 2)\n") {
		t.Errorf("entry 2 without an OS name:\n%s", e2)
	}
	f.cfg.OSName = "Mine"
	f.sync(t1, t2)
	if e1 := f.read(EntriesDir + "/txboot-1+3.conf"); !strings.Contains(e1, "title Mine (tx 1)\n") {
		t.Errorf("--os-name does not win:\n%s", e1)
	}
	t1.OSName = "two\nlines"
	r, err := Sync(f.cfg, []TxInfo{t1})
	if err == nil || !errors.Is(r.TxErr(1), ErrTx) {
		t.Errorf("multi-line OS name accepted: %v", err)
	}
}

func TestWriteESPFile(t *testing.T) {
	esp := t.TempDir()
	if err := WriteESPFile(esp, "EFI/BOOT/BOOTX64.EFI", []byte("MZ1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteESPFile(esp, "EFI/BOOT/BOOTX64.EFI", []byte("MZ2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(esp, "EFI/BOOT/BOOTX64.EFI")); string(b) != "MZ2" {
		t.Fatalf("content %q", b)
	}
	// A symlinked directory on the ESP is not followed.
	outside := t.TempDir()
	os.Symlink(outside, filepath.Join(esp, "EFI/systemd"))
	err := WriteESPFile(esp, "EFI/systemd/systemd-bootx64.efi", []byte("MZ"), 0o644)
	if !errors.Is(err, ErrNotDir) {
		t.Fatalf("through a symlink: %v", err)
	}
	if des, _ := os.ReadDir(outside); len(des) != 0 {
		t.Fatalf("wrote outside the ESP: %v", des)
	}
	for _, bad := range []string{"", "../x", "EFI/../../x", "/abs"} {
		if err := WriteESPFile(esp, bad, []byte("x"), 0o644); err == nil {
			t.Errorf("WriteESPFile(%q) accepted", bad)
		}
	}
}
