package install

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/txboot/txboot/initagent/rootdev"
)

// rootArgFromMount returns root=UUID=… for the filesystem mounted at root,
// from mountinfo (/proc/self/mountinfo) and that device's superblock. ""
// when root is not the mount point of a whole filesystem (a plain
// directory, a bind mount of a subdirectory) or the source is no device.
func rootArgFromMount(mountinfo, root string) (string, error) {
	abs, err := filepath.Abs(root)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", err
	}
	f, err := os.Open(mountinfo)
	if err != nil {
		if os.IsNotExist(err) {
			return "", nil
		}
		return "", err
	}
	defer f.Close()
	var fsRoot, source string
	found := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) {
			continue
		}
		if unescapeMount(fields[4]) == abs { // the last one is on top
			found, fsRoot, source = true, unescapeMount(fields[3]), unescapeMount(fields[sep+2])
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", mountinfo, err)
	}
	if !found || fsRoot != "/" || !strings.HasPrefix(source, "/") {
		return "", nil
	}
	dev, err := os.Open(source)
	if err != nil {
		return "", fmt.Errorf("%s is mounted from %s, whose UUID cannot be read: %w", root, source, err)
	}
	defer dev.Close()
	fsys, err := rootdev.Probe(dev)
	if err != nil {
		return "", fmt.Errorf("%s is mounted from %s, whose UUID cannot be read: %w", root, source, err)
	}
	if fsys.UUID == "" {
		return "", nil
	}
	return "UUID=" + fsys.UUID, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
