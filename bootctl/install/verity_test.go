package install

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
)

// mountinfoFile writes one mountinfo line a mount: point, fstype, source.
func mountinfoFile(t *testing.T, mounts ...[3]string) string {
	t.Helper()
	var b strings.Builder
	for i, m := range mounts {
		fsRoot := "/"
		if strings.HasSuffix(m[0], "#sub") { // a bind mount of a subdirectory
			m[0], fsRoot = strings.TrimSuffix(m[0], "#sub"), "/sub"
		}
		b.WriteString(strings.Join([]string{"2" + string(rune('0'+i)), "1", "254:1", fsRoot,
			strings.ReplaceAll(m[0], " ", `\040`), "rw", "shared:1", "-", m[1], m[2], "rw"}, " ") + "\n")
	}
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// withVerity is ext4Image with the verity feature set.
func withVerity(t *testing.T, img string) string {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	b[sbOffset+sbROCompatOff+1] |= roCompatVerity >> 8
	p := img + ".verity"
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEnableVerity: install runs tune2fs only on the device of a whole ext4
// filesystem mounted at ROOT that lacks the feature; everything else is a
// log line saying what to run, and a failing tune2fs is one too.
func TestEnableVerity(t *testing.T) {
	dir := t.TempDir()
	off := ext4Image(t, dir)
	on := withVerity(t, off)
	root := filepath.Join(dir, "target root")
	os.Mkdir(root, 0o755)
	tests := []struct {
		name   string
		mounts [][3]string
		fail   bool
		ran    string // the command run, "" none
		log    string
	}{
		{"ext4 without the feature", [][3]string{{"/", "ext4", "/dev/vda"}, {root, "ext4", off}}, false,
			"tune2fs -O verity " + off, "turned on the ext4 verity feature of " + off},
		{"tune2fs fails", [][3]string{{root, "ext4", off}}, true,
			"tune2fs -O verity " + off, "tune2fs -O verity " + off + " failed (tune2fs: Device or resource busy); run it by hand"},
		{"already on", [][3]string{{root, "ext4", on}}, false, "", "the ext4 verity feature is on for " + on},
		{"not a mount point: the host's filesystem is left alone", [][3]string{{"/", "ext4", "/dev/vda"}}, false, "", "is not the mount point of a filesystem"},
		{"bind mount of a subdirectory", [][3]string{{root + "#sub", "ext4", off}}, false, "", "is not the mount point"},
		{"not ext4", [][3]string{{root, "btrfs", off}}, false, "", "is btrfs; txboot seals txs only on ext4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ran []string
			run := func(name string, args ...string) ([]byte, error) {
				ran = append(ran, strings.Join(append([]string{name}, args...), " "))
				if tt.fail {
					return []byte("tune2fs 1.47.0\ntune2fs: Device or resource busy\n"), errors.New("exit status 1")
				}
				return nil, nil
			}
			var log bytes.Buffer
			enableVerity(mountinfoFile(t, tt.mounts...), root, run, &log)
			if got := strings.Join(ran, "; "); got != tt.ran {
				t.Errorf("ran %q, want %q", got, tt.ran)
			}
			if !strings.Contains(log.String(), tt.log) || strings.Count(log.String(), "\n") != 1 {
				t.Errorf("log %q, want one line with %q", log.String(), tt.log)
			}
		})
	}
}

// TestEnableVerityImage: the real tune2fs on an ext4 image file made by
// mkfs.ext4 (never a host device): the feature is off, install turns it
// on, and a second install finds it on.
func TestEnableVerityImage(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "tune2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Skipf(t, "%s not installed (e2fsprogs)", tool)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "root.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-O", "^verity", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if f, err := ext4Verity(img); err != nil || f != featureOff {
		t.Fatalf("fresh image: feature %d %v, want off", f, err)
	}
	root := filepath.Join(dir, "mnt")
	os.Mkdir(root, 0o755)
	mi := mountinfoFile(t, [3]string{root, "ext4", img})
	var log bytes.Buffer
	enableVerity(mi, root, ExecRunner, &log)
	if f, err := ext4Verity(img); err != nil || f != featureOn {
		t.Fatalf("after install: feature %d %v, want on; log %q", f, err, log.String())
	}
	log.Reset()
	enableVerity(mi, root, func(string, ...string) ([]byte, error) { t.Error("tune2fs run again"); return nil, nil }, &log)
	if !strings.Contains(log.String(), "is on for "+img) {
		t.Errorf("second run: %q", log.String())
	}
}
