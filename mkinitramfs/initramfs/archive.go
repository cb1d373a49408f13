package initramfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
)

// ErrBadPath means an archive path is not a clean absolute path.
var ErrBadPath = errors.New("bad path in image")

// ErrDuplicate means two inputs want the same path in the image.
var ErrDuplicate = errors.New("path given twice")

type kind int

const (
	kindDir kind = iota
	kindFile
	kindCharDev
	kindSymlink
)

type entry struct {
	kind         kind
	perm         uint64
	data         []byte // file contents or symlink target
	rmajor, rmin uint64
}

// Tree is the initramfs content before it is written: paths (relative, no
// leading slash) to entries. Parent directories are added implicitly.
type Tree struct {
	entries map[string]entry
}

// NewTree returns an empty tree.
func NewTree() *Tree { return &Tree{entries: map[string]entry{}} }

// cleanPath turns "/a/b" into "a/b" and refuses anything that is not
// already clean, so a typo cannot silently land elsewhere.
func cleanPath(p string) (string, error) {
	rel := strings.TrimPrefix(p, "/")
	if !strings.HasPrefix(p, "/") || rel == "" || path.Clean(rel) != rel || rel == ".." ||
		strings.HasPrefix(rel, "../") || strings.ContainsRune(rel, 0) {
		return "", fmt.Errorf("%q: %w (want a clean absolute path)", p, ErrBadPath)
	}
	return rel, nil
}

func (t *Tree) add(p string, e entry) error {
	rel, err := cleanPath(p)
	if err != nil {
		return err
	}
	if old, ok := t.entries[rel]; ok {
		if old.kind == kindDir && e.kind == kindDir {
			return nil
		}
		return fmt.Errorf("/%s: %w", rel, ErrDuplicate)
	}
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		if old, ok := t.entries[d]; ok {
			if old.kind != kindDir {
				return fmt.Errorf("/%s: parent /%s is not a directory: %w", rel, d, ErrDuplicate)
			}
			continue
		}
		t.entries[d] = entry{kind: kindDir, perm: 0o755}
	}
	t.entries[rel] = e
	return nil
}

// Dir adds a directory (mode 0755).
func (t *Tree) Dir(p string) error { return t.add(p, entry{kind: kindDir, perm: 0o755}) }

// File adds a regular file with the given permission bits.
func (t *Tree) File(p string, data []byte, perm uint64) error {
	return t.add(p, entry{kind: kindFile, perm: perm & 0o7777, data: data})
}

// Symlink adds a symbolic link.
func (t *Tree) Symlink(p, target string) error {
	return t.add(p, entry{kind: kindSymlink, perm: 0o777, data: []byte(target)})
}

// CharDev adds a character device node.
func (t *Tree) CharDev(p string, perm, major, minor uint64) error {
	return t.add(p, entry{kind: kindCharDev, perm: perm & 0o7777, rmajor: major, rmin: minor})
}

// Paths lists the tree's paths in archive order.
func (t *Tree) Paths() []string {
	ps := make([]string, 0, len(t.entries))
	for p := range t.entries {
		ps = append(ps, p)
	}
	// Byte order puts every directory before its contents.
	sort.Strings(ps)
	return ps
}

// Size is the total size of file contents.
func (t *Tree) Size() int64 {
	var n int64
	for _, e := range t.entries {
		n += int64(len(e.data))
	}
	return n
}

// ZstdLevel is the compression level used for images: zstd's default
// level, which is fast and within a few percent of the best here.
const ZstdLevel = zstd.SpeedDefault

// WriteCpio writes the tree as a newc archive with a trailer. Everything
// host-specific is fixed: owners 0:0, mtimes = mtime, inode numbers in
// path order, so the same tree always gives the same bytes.
func (t *Tree) WriteCpio(w io.Writer, mtime uint64) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	cw := cpio.Newc.Writer(bw)
	for i, p := range t.Paths() {
		e := t.entries[p]
		var rec cpio.Record
		switch e.kind {
		case kindDir:
			rec = cpio.Directory(p, e.perm)
			rec.NLink = 2
		case kindFile:
			rec = cpio.StaticRecord(e.data, cpio.Info{Name: p, Mode: cpio.S_IFREG | e.perm})
			rec.NLink = 1
		case kindSymlink:
			rec = cpio.StaticRecord(e.data, cpio.Info{Name: p, Mode: cpio.S_IFLNK | e.perm})
			rec.NLink = 1
		case kindCharDev:
			rec = cpio.CharDev(p, e.perm, e.rmajor, e.rmin)
			rec.NLink = 1
		}
		rec.Ino = uint64(i + 1)
		rec = cpio.MakeReproducible(rec)
		rec.MTime = mtime
		if err := cw.WriteRecord(rec); err != nil {
			return fmt.Errorf("cpio /%s: %w", p, err)
		}
	}
	if err := cpio.WriteTrailer(cw); err != nil {
		return fmt.Errorf("cpio trailer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("cpio: %w", err)
	}
	return nil
}

// WriteImage writes the tree as a zstd-compressed newc archive, the form
// the kernel unpacks as an initramfs. The encoder is single-threaded with
// fixed options so the output is byte-for-byte reproducible.
func (t *Tree) WriteImage(w io.Writer, mtime uint64) error {
	zw, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(ZstdLevel),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(true),
		// 8 MiB: what the kernel's unzstd and zstd -19 use; a larger window
		// costs the booting kernel memory.
		zstd.WithWindowSize(8<<20),
	)
	if err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	if err := t.WriteCpio(zw, mtime); err != nil {
		zw.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	return nil
}
