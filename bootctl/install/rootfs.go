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
	m, ok, err := mountAt(mountinfo, root)
	if err != nil || !ok || !m.whole() || !strings.HasPrefix(m.source, "/") {
		return "", err
	}
	dev, err := os.Open(m.source)
	if err != nil {
		return "", fmt.Errorf("%s is mounted from %s, whose UUID cannot be read: %w", root, m.source, err)
	}
	defer dev.Close()
	fsys, err := rootdev.Probe(dev)
	if err != nil {
		return "", fmt.Errorf("%s is mounted from %s, whose UUID cannot be read: %w", root, m.source, err)
	}
	if fsys.UUID == "" {
		return "", nil
	}
	return "UUID=" + fsys.UUID, nil
}

// mount is one line of mountinfo.
type mount struct {
	fsRoot, point, fstype, source string
}

// whole: the filesystem is mounted from its root, not a bind mount of a
// subdirectory.
func (m mount) whole() bool { return m.fsRoot == "/" }

// readMounts parses mountinfo in order (a later mount on the same point is
// on top). A missing file is no mounts.
func readMounts(mountinfo string) ([]mount, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	var out []mount
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
		out = append(out, mount{fsRoot: unescapeMount(fields[3]), point: unescapeMount(fields[4]),
			fstype: fields[sep+1], source: unescapeMount(fields[sep+2])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", mountinfo, err)
	}
	return out, nil
}

// mountAt is the mount on top at exactly dir (symlinks resolved).
func mountAt(mountinfo, dir string) (mount, bool, error) {
	abs, ms, err := resolveAndRead(mountinfo, dir)
	if err != nil {
		return mount{}, false, err
	}
	var m mount
	found := false
	for _, x := range ms {
		if x.point == abs { // the last one is on top
			m, found = x, true
		}
	}
	return m, found, nil
}

func resolveAndRead(mountinfo, p string) (string, []mount, error) {
	abs, err := filepath.Abs(p)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", nil, err
	}
	ms, err := readMounts(mountinfo)
	return abs, ms, err
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
