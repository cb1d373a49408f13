package etcstate

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
	"golang.org/x/sys/unix"
)

// e is one entry of a test tree.
type e struct {
	p    string
	typ  byte   // 'f' file, 'd' directory, 'l' symlink, 'p' FIFO
	data string // content, or the symlink's target
	mode uint32 // 0: 0644 for a file, 0755 for a directory
	uid  int
	gid  int
	x    map[string][]byte
}

func f(p, data string) e   { return e{p: p, typ: 'f', data: data} }
func d(p string) e         { return e{p: p, typ: 'd'} }
func l(p, target string) e { return e{p: p, typ: 'l', data: target} }

func (x e) mod(m uint32) e          { x.mode = m; return x }
func (x e) own(uid, gid int) e      { x.uid, x.gid = uid, gid; return x }
func (x e) xa(name, value string) e { return x.xab(name, []byte(value)) }
func (x e) xab(name string, v []byte) e {
	m := map[string][]byte{}
	for k, v := range x.x {
		m[k] = v
	}
	m[name] = v
	x.x = m
	return x
}

// needRoot: owners, devices, trusted.* and capabilities need root.
func needRoot(t *testing.T) {
	t.Helper()
	testkit.SkipUnless(t, os.Geteuid() == 0, "needs root (owners, capabilities)")
}

// build makes dir (0755) holding es; parents are made as needed.
func build(t *testing.T, dir string, es ...e) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, x := range es {
		p := filepath.Join(dir, x.p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch x.typ {
		case 'f':
			err = os.WriteFile(p, []byte(x.data), 0o600)
			if x.mode == 0 {
				x.mode = 0o644
			}
		case 'd':
			if err = os.Mkdir(p, 0o755); os.IsExist(err) {
				err = nil
			}
			if x.mode == 0 {
				x.mode = 0o755
			}
		case 'l':
			err = os.Symlink(x.data, p)
		case 'p':
			err = unix.Mkfifo(p, 0o644)
			if x.mode == 0 {
				x.mode = 0o644
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Lchown(p, x.uid, x.gid); err != nil {
			t.Fatal(err)
		}
		for n, v := range x.x {
			if err := unix.Lsetxattr(p, n, v, 0); err != nil {
				t.Fatalf("setxattr %s %s: %v", p, n, err)
			}
		}
		if x.typ != 'l' {
			if err := os.Chmod(p, fs.FileMode(x.mode&0o777)|modeBits(x.mode)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func modeBits(m uint32) fs.FileMode {
	var b fs.FileMode
	if m&unix.S_ISUID != 0 {
		b |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		b |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		b |= fs.ModeSticky
	}
	return b
}

// dump lists a tree independently of the code under test: one line per
// entry, sorted, with type, mode, owner, xattrs and content or target
// (the marker included, so tests see it).
func dump(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%s %o %d:%d", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %q", b)
		case unix.S_IFLNK:
			tg, _ := os.Readlink(p)
			line += " -> " + tg
		}
		line += xattrList(t, p)
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func xattrList(t *testing.T, p string) string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	names := strings.Split(strings.TrimSuffix(string(buf[:n]), "\x00"), "\x00")
	slices.Sort(names)
	var out []string
	for _, nm := range names {
		v := make([]byte, 4096)
		m, err := unix.Lgetxattr(p, nm, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, nm, err)
		}
		out = append(out, nm+"="+hex.EncodeToString(v[:m]))
	}
	return " [" + strings.Join(out, ",") + "]"
}

// acl is a system.posix_acl_access value for u::rw-,u:1000:r--,g::r--,m::r--,o::r--.
func acl() []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, x := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, ^uint32(0)}, {0x02, 4, 1000}, {0x04, 4, ^uint32(0)}, {0x10, 4, ^uint32(0)}, {0x20, 4, ^uint32(0)}} {
		b = binary.LittleEndian.AppendUint16(b, x.tag)
		b = binary.LittleEndian.AppendUint16(b, x.perm)
		b = binary.LittleEndian.AppendUint32(b, x.id)
	}
	return b
}

// capNetRaw is a v2 security.capability value: effective, cap_net_raw.
func capNetRaw() []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<13)
	return b
}

func write(t *testing.T, p, data string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
