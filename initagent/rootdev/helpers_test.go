package rootdev

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
)

// needTools skips when a host tool is missing, except under CI=true where
// the Makefile is expected to have installed it.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Skip(t, tool+" not installed (apt-get install -y e2fsprogs dosfstools fdisk util-linux)")
		}
	}
}

func run(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sparse creates an empty file of size bytes.
func sparse(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// copyRange copies size bytes at off of src into a new file dst, as the
// kernel exposes a partition as its own device node.
func copyRange(t *testing.T, src, dst string, off, size int64) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	buf := make([]byte, size)
	if _, err := in.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

// blkid returns blkid's low-level probe of a file as a map (TYPE, UUID, …).
func blkid(t *testing.T, path string) map[string]string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-o", "export", path).Output()
	if err != nil {
		t.Fatalf("blkid %s: %v", path, err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = strings.ReplaceAll(v, `\ `, " ") // export format escapes spaces
		}
	}
	return m
}

// fakeDev describes one block device in a fake sysfs tree.
type fakeDev struct {
	name      string
	parent    string // disk name for partitions
	partition int
	image     string // file to expose as /dev/<name>; "" for an empty device
	size      int64  // sysfs size in sectors; -1 means compute from image
	partName  string // uevent PARTNAME
	holder    string // a holder device name, if any
}

// fakeTree builds sys/ and dev/ under root the way the kernel lays them out:
// class/block/<name> symlinks into devices/…/block/<disk>[/<part>].
func fakeTree(t *testing.T, root string, devs []fakeDev) *Resolver {
	t.Helper()
	sys, dev := filepath.Join(root, "sys"), filepath.Join(root, "dev")
	for _, d := range []string{filepath.Join(sys, "class", "block"), dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range devs {
		rel := filepath.Join("devices", "virtual", "block", d.name)
		if d.parent != "" {
			rel = filepath.Join("devices", "virtual", "block", d.parent, d.name)
		}
		dir := filepath.Join(sys, rel)
		if err := os.MkdirAll(filepath.Join(dir, "holders"), 0o755); err != nil {
			t.Fatal(err)
		}
		size := d.size
		if d.image != "" {
			if err := os.Link(d.image, filepath.Join(dev, d.name)); err != nil {
				t.Fatal(err)
			}
			if size < 0 {
				st, err := os.Stat(d.image)
				if err != nil {
					t.Fatal(err)
				}
				size = st.Size() / 512
			}
		}
		uevent := "MAJOR=254\nMINOR=0\nDEVNAME=" + d.name + "\n"
		files := map[string]string{"size": itoa(size) + "\n"}
		if d.partition > 0 {
			files["partition"] = itoa(int64(d.partition)) + "\n"
			uevent += "DEVTYPE=partition\nPARTN=" + itoa(int64(d.partition)) + "\n"
			if d.partName != "" {
				uevent += "PARTNAME=" + d.partName + "\n"
			}
		} else {
			uevent += "DEVTYPE=disk\n"
		}
		files["uevent"] = uevent
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if d.holder != "" {
			if err := os.Symlink("../../"+d.holder, filepath.Join(dir, "holders", d.holder)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink(filepath.Join("..", "..", rel), filepath.Join(sys, "class", "block", d.name)); err != nil {
			t.Fatal(err)
		}
	}
	return &Resolver{SysRoot: sys, DevRoot: dev}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
