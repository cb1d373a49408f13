package harness

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// Ext4Image is an ext4 filesystem at byte Offset of the image Path (0 for
// a bare filesystem image). Its methods drive debugfs, which opens
// "image?offset=N" directly (e2fsprogs' unix I/O manager option), so a
// partition never has to be cut out and put back. No root needed; don't
// use them while a VM has the image open.
type Ext4Image struct {
	Path   string
	Offset int64
}

// device is the name debugfs/e2fsck open.
func (e Ext4Image) device() string {
	if e.Offset == 0 {
		return e.Path
	}
	return e.Path + "?offset=" + strconv.FormatInt(e.Offset, 10)
}

// debugfs prints its version banner on stderr; anything else there is an
// error message (debugfs exits 0 even when a request fails).
var debugfsBanner = regexp.MustCompile(`(?m)^debugfs [0-9.]+ \([^)]*\)\n?`)

// Debugfs runs one debugfs request (-R) and returns its stdout. write opens
// the filesystem read-write (-w).
func (e Ext4Image) Debugfs(write bool, request string) ([]byte, error) {
	args := []string{"-R", request}
	if write {
		args = append([]string{"-w"}, args...)
	}
	return e.debugfs(nil, append(args, e.device())...)
}

// DebugfsScript runs several requests, one per line, in one debugfs
// session (-f -), which is much cheaper than one process per request.
func (e Ext4Image) DebugfsScript(write bool, script string) ([]byte, error) {
	args := []string{"-f", "-"}
	if write {
		args = append([]string{"-w"}, args...)
	}
	return e.debugfs([]byte(script), append(args, e.device())...)
}

func (e Ext4Image) debugfs(stdin []byte, args ...string) ([]byte, error) {
	out, errOut, err := run(context.Background(), runOpts{stdin: stdin}, "debugfs", args...)
	if err != nil {
		return out, fmt.Errorf("%s: %w", e.Path, err)
	}
	msg := strings.TrimSpace(debugfsBanner.ReplaceAllString(string(errOut), ""))
	if msg != "" {
		err := fmt.Errorf("%s: debugfs %s: %s", e.Path, strings.Join(args, " "), msg)
		if strings.Contains(msg, "not found") {
			err = fmt.Errorf("%w: %w", err, fs.ErrNotExist)
		}
		return out, err
	}
	return out, nil
}

// quote makes a debugfs argument of a path (its parser honours "...").
func quote(p string) string {
	return `"` + path.Clean("/"+p) + `"`
}

// ReadFile returns the content of a file.
func (e Ext4Image) ReadFile(p string) ([]byte, error) {
	return e.Debugfs(false, "cat "+quote(p))
}

// Ext4Stat is what tests usually want from debugfs' stat.
type Ext4Stat struct {
	Inode uint64
	Type  string // "regular", "directory", "symlink", ...
	Mode  uint32 // permission bits, including setuid/setgid/sticky
	UID   uint32
	GID   uint32
	Links uint32
	Size  int64
}

var (
	reStatInode = regexp.MustCompile(`Inode: (\d+)\s+Type: (\S+)\s+Mode:\s+(\d+)`)
	reStatUser  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reStatSize  = regexp.MustCompile(`Size: (\d+)`)
	reStatLinks = regexp.MustCompile(`Links: (\d+)`)
)

// Stat describes one path.
func (e Ext4Image) Stat(p string) (Ext4Stat, error) {
	out, err := e.Debugfs(false, "stat "+quote(p))
	if err != nil {
		return Ext4Stat{}, err
	}
	s := string(out)
	m := reStatInode.FindStringSubmatch(s)
	u := reStatUser.FindStringSubmatch(s)
	z := reStatSize.FindStringSubmatch(s)
	l := reStatLinks.FindStringSubmatch(s)
	if m == nil || u == nil || z == nil || l == nil {
		return Ext4Stat{}, fmt.Errorf("%s: cannot parse debugfs stat %s: %q", e.Path, p, s)
	}
	var st Ext4Stat
	st.Inode, _ = strconv.ParseUint(m[1], 10, 64)
	st.Type = m[2]
	mode, _ := strconv.ParseUint(m[3], 8, 32)
	st.Mode = uint32(mode)
	uid, _ := strconv.ParseUint(u[1], 10, 32)
	gid, _ := strconv.ParseUint(u[2], 10, 32)
	st.UID, st.GID = uint32(uid), uint32(gid)
	links, _ := strconv.ParseUint(l[1], 10, 32)
	st.Links = uint32(links)
	st.Size, _ = strconv.ParseInt(z[1], 10, 64)
	return st, nil
}

// Exists reports whether p exists.
func (e Ext4Image) Exists(p string) (bool, error) {
	_, err := e.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Ext4Entry is one directory entry from List.
type Ext4Entry struct {
	Name  string
	Inode uint64
	Mode  uint32 // full st_mode (type and permission bits)
	Size  int64
}

// List returns the entries of dir, without "." and "..".
func (e Ext4Image) List(dir string) ([]Ext4Entry, error) {
	// ls -p prints /inode/mode/uid/gid/name/size/ per entry.
	out, err := e.Debugfs(false, "ls -p "+quote(dir))
	if err != nil {
		return nil, err
	}
	var ents []Ext4Entry
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Split(l, "/")
		if len(f) < 8 || f[5] == "." || f[5] == ".." {
			continue
		}
		ino, _ := strconv.ParseUint(f[1], 10, 64)
		mode, _ := strconv.ParseUint(f[2], 8, 32)
		size, _ := strconv.ParseInt(f[6], 10, 64)
		// Names may contain "/"-free anything; rejoin for safety.
		name := strings.Join(f[5:len(f)-2], "/")
		ents = append(ents, Ext4Entry{Name: name, Inode: ino, Mode: uint32(mode), Size: size})
	}
	return ents, nil
}

// Remove unlinks a file or removes an empty directory.
func (e Ext4Image) Remove(p string) error {
	st, err := e.Stat(p)
	if err != nil {
		return err
	}
	req := "rm "
	if st.Type == "directory" {
		req = "rmdir "
	}
	_, err = e.Debugfs(true, req+quote(p))
	return err
}

// WriteFile replaces (or creates) p with data, owned by root with the
// given permission bits. This allocates a NEW inode, so a file that was a
// hardlink loses its identity; use OverwriteInPlace to keep the inode.
func (e Ext4Image) WriteFile(p string, data []byte, perm fs.FileMode) error {
	clean := path.Clean("/" + p)
	tmp, err := os.CreateTemp("", "txboot-debugfs-*")
	if err != nil {
		return fmt.Errorf("temp file for %s: %w", p, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if ok, err := e.Exists(clean); err != nil {
		return err
	} else if ok {
		if err := e.Remove(clean); err != nil {
			return err
		}
	}
	// debugfs' write links its argument literally into the current
	// directory, so cd to the parent and write the base name.
	script := fmt.Sprintf("cd %s\nwrite %s \"%s\"\nsif %s mode 0%o\nsif %s uid 0\nsif %s gid 0\n",
		quote(path.Dir(clean)), tmp.Name(), path.Base(clean),
		quote(clean), 0o100000|uint32(perm.Perm()), quote(clean), quote(clean))
	if _, err := e.DebugfsScript(true, script); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// Mkdir creates a directory (its parent must exist).
func (e Ext4Image) Mkdir(p string) error {
	_, err := e.Debugfs(true, "mkdir "+quote(p))
	return err
}

// Symlink creates p pointing at target.
func (e Ext4Image) Symlink(p, target string) error {
	_, err := e.Debugfs(true, fmt.Sprintf("symlink %s \"%s\"", quote(p), target))
	return err
}

var reBlockSize = regexp.MustCompile(`(?m)^Block size:\s+(\d+)`)

// BlockSize returns the filesystem block size in bytes.
func (e Ext4Image) BlockSize() (int64, error) {
	out, err := e.Debugfs(false, "stats -h")
	if err != nil {
		return 0, err
	}
	m := reBlockSize.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("%s: no block size in debugfs stats", e.Path)
	}
	return strconv.ParseInt(string(m[1]), 10, 64)
}

// PhysicalOffset returns the byte offset in the image file (partition
// offset included) that holds byte off of file p.
func (e Ext4Image) PhysicalOffset(p string, off int64) (int64, error) {
	bs, size, err := e.fileGeometry(p)
	if err != nil {
		return 0, err
	}
	return e.physOffset(p, off, bs, size)
}

// fileGeometry returns the block size and the size of regular file p.
func (e Ext4Image) fileGeometry(p string) (bs, size int64, err error) {
	bs, err = e.BlockSize()
	if err != nil {
		return 0, 0, err
	}
	st, err := e.Stat(p)
	if err != nil {
		return 0, 0, err
	}
	if st.Type != "regular" {
		return 0, 0, fmt.Errorf("%s: %s is a %s, not a regular file", e.Path, p, st.Type)
	}
	return bs, st.Size, nil
}

func (e Ext4Image) physOffset(p string, off, bs, size int64) (int64, error) {
	if off < 0 || off >= size {
		return 0, fmt.Errorf("%s: offset %d outside %s (size %d)", e.Path, off, p, size)
	}
	// bmap maps a logical to a physical block and, unlike "blocks", is
	// right for sparse files too.
	out, err := e.Debugfs(false, fmt.Sprintf("bmap %s %d", quote(p), off/bs))
	if err != nil {
		return 0, err
	}
	phys, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: bmap %s: %q: %w", e.Path, p, out, err)
	}
	if phys == 0 {
		return 0, fmt.Errorf("%s: byte %d of %s is in a hole or inline", e.Path, off, p)
	}
	return e.Offset + phys*bs + off%bs, nil
}

// OverwriteInPlace writes data over the content of file p starting at
// byte off, directly into the image's data blocks: the inode, its size,
// timestamps and checksums stay untouched (ext4 has no data checksums).
// That is silent bit rot, which only a full re-hash of the content sees.
// The range must lie within the file's current size.
func (e Ext4Image) OverwriteInPlace(p string, off int64, data []byte) error {
	bs, size, err := e.fileGeometry(p)
	if err != nil {
		return err
	}
	if off+int64(len(data)) > size {
		return fmt.Errorf("%s: range %d+%d outside %s (size %d)", e.Path, off, len(data), p, size)
	}
	f, err := os.OpenFile(e.Path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", e.Path, err)
	}
	defer f.Close()
	// One block at a time: consecutive logical blocks need not be
	// physically contiguous.
	for i := int64(0); i < int64(len(data)); {
		pos, err := e.physOffset(p, off+i, bs, size)
		if err != nil {
			return err
		}
		n := min(int64(len(data))-i, bs-(off+i)%bs)
		if _, err := f.WriteAt(data[i:i+n], pos); err != nil {
			return fmt.Errorf("write %s at %d: %w", e.Path, pos, err)
		}
		i += n
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", e.Path, err)
	}
	return nil
}

// CorruptInPlace flips every bit of byte off of file p in place (see
// OverwriteInPlace) and returns the old and new byte.
func (e Ext4Image) CorruptInPlace(p string, off int64) (old, new byte, err error) {
	pos, err := e.PhysicalOffset(p, off)
	if err != nil {
		return 0, 0, err
	}
	f, err := os.OpenFile(e.Path, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", e.Path, err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, pos); err != nil {
		return 0, 0, fmt.Errorf("read %s at %d: %w", e.Path, pos, err)
	}
	old = b[0]
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, pos); err != nil {
		return 0, 0, fmt.Errorf("write %s at %d: %w", e.Path, pos, err)
	}
	if err := f.Sync(); err != nil {
		return 0, 0, fmt.Errorf("sync %s: %w", e.Path, err)
	}
	return old, b[0], nil
}

// Fsck runs e2fsck -fn (read-only, forced) and returns an error with its
// output when the filesystem is not clean.
func (e Ext4Image) Fsck() error {
	out, errOut, err := run(context.Background(), runOpts{}, "e2fsck", "-f", "-n", e.device())
	if err != nil {
		return fmt.Errorf("%s: fsck: %w\n%s%s", e.Path, err, out, errOut)
	}
	return nil
}

// Debugfs runs one debugfs request against the ext4 filesystem at byte
// offset of img; see Ext4Image.Debugfs.
func Debugfs(img string, offset int64, write bool, request string) ([]byte, error) {
	return Ext4Image{Path: img, Offset: offset}.Debugfs(write, request)
}
