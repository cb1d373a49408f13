// Package etcstate makes /etc follow its tx. Each tx may carry, beside
// its usr/ tree, an etc/ directory:
//
//	STORE/trees/<id>/etc/base/            the live /etc when the run that made the tx started
//	STORE/trees/<id>/etc/new/             the /etc that run produced
//	STORE/trees/<id>/etc/last/            the /etc the tx last ran with (saved when the machine left it)
//	STORE/trees/<id>/etc/conflicts.json   paths where the switch into it kept the administrator's version
//
// and ROOT/etc/.txboot-etc names the tx whose /etc is live (its owner).
// At boot, Switch gives the chosen tx its /etc: the one it last ran with
// (a rollback), else a 3-way merge of its base, the live /etc and its new
// (a tx made by a run), else a copy of the live one (a committed or pulled
// tx). The new /etc is built beside and swapped in with one
// renameat2(RENAME_EXCHANGE), so /etc is whole at every instant; the old
// one becomes its owner's last/.
//
// Nothing here follows a symlink inside a tree, and every walk is bounded
// (MaxEntries, MaxFileSize, maxDepth). The package imports nothing of
// txstore but its internals, so txstore may import it.
package etcstate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/layout"
	"golang.org/x/sys/unix"
)

// MarkerName is the file in the live /etc naming its owner tx: the
// decimal ID and a newline.
const MarkerName = ".txboot-etc"

// markerTmp is where a new marker is written before its rename; a crash
// can leave it, so walks skip it like the marker.
const markerTmp = MarkerName + ".tmp"

// Bounds of every tree walk: an /etc is a few thousand small files.
const (
	MaxEntries  = 200_000
	MaxFileSize = 256 << 20
	maxDepth    = 256
	maxTarget   = 4095 // a symlink target (PATH_MAX - 1)
	maxMarker   = 32
)

// Names inside STORE/trees/<id>/etc.
const (
	BaseDir       = "base"
	NewDir        = "new"
	LastDir       = "last"
	ConflictsFile = "conflicts.json"
)

// BesideSuffix is added to a path whose package version was not taken
// because the administrator's differs: the package's is written beside.
const BesideSuffix = ".txboot-new"

// Errors, for errors.Is.
var (
	// ErrTooBig: over MaxEntries, MaxFileSize, maxDepth or a symlink
	// target's length.
	ErrTooBig = errors.New("too big for an /etc")
	// ErrBadMarker: ROOT/etc/.txboot-etc is not a decimal tx ID.
	ErrBadMarker = errors.New("unreadable /etc owner marker")
	// ErrNoEtc: ROOT/etc is missing or not a directory.
	ErrNoEtc = errors.New("no /etc directory")
	// ErrCrossDevice: ROOT/etc and the store are on different
	// filesystems, so the new /etc cannot be swapped in atomically.
	ErrCrossDevice = errors.New("/etc and the store are on different filesystems")
	// ErrExists: Copy's or Merge3's destination already exists.
	ErrExists = errors.New("destination exists")
)

// storeDir is ROOT/.txboot.
func storeDir(root string) string { return filepath.Join(root, layout.DirName) }

// txEtc is STORE/trees/<id>/etc.
func txEtc(root string, id uint64) string {
	return filepath.Join(storeDir(root), layout.TreesDir, strconv.FormatUint(id, 10), "etc")
}

// TxEtcDir is STORE/trees/<id>/etc under root, where base/, new/, last/
// and conflicts.json of tx id live.
func TxEtcDir(root string, id uint64) string { return txEtc(root, id) }

func liveEtc(root string) string { return filepath.Join(root, "etc") }

// Owner reads the marker of the live /etc: ok false when there is none.
// A marker that is not a decimal ID is ErrBadMarker.
func Owner(root string) (id uint64, ok bool, err error) {
	return readMarker(liveEtc(root))
}

// readMarker reads dir's marker (not following a symlink; at most
// maxMarker bytes).
func readMarker(dir string) (uint64, bool, error) {
	p := filepath.Join(dir, MarkerName)
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		if _, serr := os.Lstat(dir); serr != nil {
			return 0, false, fmt.Errorf("%w: %s: %w", ErrNoEtc, dir, serr)
		}
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("%w: %s: %w", ErrBadMarker, p, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, false, fmt.Errorf("%w: %s is not a regular file", ErrBadMarker, p)
	}
	buf := make([]byte, maxMarker+1)
	n, err := readFull(fd, buf)
	if err != nil {
		return 0, false, fmt.Errorf("%w: read %s: %w", ErrBadMarker, p, err)
	}
	id, perr := parseMarker(buf[:n])
	if perr != nil {
		return 0, false, fmt.Errorf("%w: %s: %w", ErrBadMarker, p, perr)
	}
	return id, true, nil
}

// parseMarker accepts exactly what writeMarker writes: a canonical
// decimal ID > 0 and one newline.
func parseMarker(b []byte) (uint64, error) {
	if len(b) > maxMarker || len(b) < 2 || b[len(b)-1] != '\n' {
		return 0, fmt.Errorf("%q is not ID and a newline", b)
	}
	s := string(b[:len(b)-1])
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 || strconv.FormatUint(id, 10) != s {
		return 0, fmt.Errorf("%q is not a tx ID", s)
	}
	return id, nil
}

func readFull(fd int, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

// writeMarker makes dir's marker name id, durably: temp file, fsync,
// rename, directory fsync.
func writeMarker(dir string, id uint64) error {
	tmp := filepath.Join(dir, markerTmp)
	p := filepath.Join(dir, MarkerName)
	fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	data := []byte(strconv.FormatUint(id, 10) + "\n")
	err = writeAll(fd, data)
	if err == nil {
		err = unix.Fchmod(fd, 0o644) // whatever the umask
	}
	if err == nil {
		err = unix.Fsync(fd)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Rename(tmp, p)
	}
	if err != nil {
		unix.Unlink(tmp)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return fsx.SyncDir(dir)
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// isDir reports whether p is a directory (not following a final symlink).
func isDir(p string) (bool, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return fi.IsDir(), nil
}

// skipTop reports whether a name at the top of an /etc tree is ours (the
// marker, a marker being written): never copied, compared or merged.
func skipTop(name string) bool { return name == MarkerName || name == markerTmp }
