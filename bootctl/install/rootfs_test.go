package install

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ext4Image is the start of an ext4 filesystem: enough superblock for
// rootdev.Probe.
func ext4Image(t *testing.T, dir string) string {
	t.Helper()
	img := make([]byte, 4096)
	sb := img[1024:]
	binary.LittleEndian.PutUint16(sb[0x38:], 0xEF53)
	binary.LittleEndian.PutUint32(sb[0x60:], 0x40) // extents: ext4
	copy(sb[0x68:], []byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef})
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRootArgFromMount(t *testing.T) {
	dir := t.TempDir()
	img := ext4Image(t, dir)
	root := filepath.Join(dir, "target root") // a space: escaped as \040
	os.Mkdir(root, 0o755)
	esc := strings.ReplaceAll(root, " ", `\040`)
	line := func(id int, fsroot, mnt, fstype, src string) string {
		return strings.Join([]string{"2" + string(rune('0'+id)), "1", "254:1", fsroot, mnt, "rw,relatime", "shared:1", "-", fstype, src, "rw"}, " ") + "\n"
	}
	tests := []struct {
		name, mountinfo, want string
		err                   bool
	}{
		{"mounted", line(1, "/", "/", "ext4", "/dev/vda") + line(2, "/", esc, "ext4", img), "UUID=12345678-9abc-def0-0123-456789abcdef", false},
		{"not a mount point", line(1, "/", "/", "ext4", "/dev/vda"), "", false},
		{"bind mount of a subdirectory", line(2, "/sub", esc, "ext4", img), "", false},
		{"last mount wins", line(2, "/", esc, "ext4", img) + line(3, "/", esc, "tmpfs", "tmpfs"), "", false},
		{"unreadable device", line(2, "/", esc, "ext4", filepath.Join(dir, "gone")), "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mi := filepath.Join(t.TempDir(), "mountinfo")
			os.WriteFile(mi, []byte(tt.mountinfo), 0o644)
			got, err := rootArgFromMount(mi, root)
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("got %q %v, want %q (error %v)", got, err, tt.want, tt.err)
			}
			if err != nil && !strings.Contains(err.Error(), "gone") {
				t.Errorf("error does not name the device: %v", err)
			}
		})
	}
}
