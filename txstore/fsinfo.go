package txstore

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// fsNames names the filesystems a store is likely to live on, by statfs
// magic.
var fsNames = map[int64]string{
	unix.EXT4_SUPER_MAGIC:      "ext4",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.F2FS_SUPER_MAGIC:      "f2fs",
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlayfs",
	unix.NFS_SUPER_MAGIC:       "nfs",
}

// describeFS names dir's filesystem type and its device as the mount
// table says ("" when unknown): for messages that tell what to run.
func describeFS(dir string) (fs, dev string) {
	var sf unix.Statfs_t
	fs = "this filesystem"
	if unix.Statfs(dir, &sf) == nil {
		if n, ok := fsNames[int64(sf.Type)]; ok {
			fs = n
		} else {
			fs = fmt.Sprintf("filesystem 0x%x", sf.Type)
		}
	}
	var st unix.Stat_t
	if unix.Stat(dir, &st) != nil {
		return fs, ""
	}
	return fs, mountSource(fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)))
}

// mountSource is the source of the first mount of device majmin in
// /proc/self/mountinfo, if it is a device path.
func mountSource(majmin string) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != majmin {
			continue
		}
		for i, fl := range fields {
			if fl == "-" && i+2 < len(fields) && strings.HasPrefix(fields[i+2], "/dev/") {
				return fields[i+2]
			}
		}
	}
	return ""
}
