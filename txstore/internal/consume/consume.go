// Package consume is txstore's commit --consume: the directory given
// becomes the new tx's tree (adopt) instead of being copied, with a
// journal in the store naming it until the tx is recorded, so that a
// failure or a crash always puts it back where the user left it.
package consume

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/walk"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// ErrChanged: the source directory changed after it was scanned (a file
// added, removed or modified). Nothing is recorded and the directory is
// left (or put back) where it was. txstore.ErrChanged is this error.
var ErrChanged = errors.New("source directory changed during the commit")

// Store is what consuming needs of the store: its directory (the journal,
// staging/), its CAS, and how many workers a verify may use.
type Store struct {
	Dir     string
	Objects *cas.Store
	Workers int
}

// New starts the consuming of src, an absolute path with no symlink in it
// (the journal records it), for a commit into st.
func New(st Store, src string) *Job {
	return &Job{st: st, src: src, scanned: map[string]fileID{}}
}

// Failpoints of the adopt step, named as the commit's (see txstore's
// commitJob).
var (
	fpJournaled  = failpoint.New("commit/consume-journaled")
	fpAdopted    = failpoint.New("commit/adopted")
	fpRelinkHalf = failpoint.New("commit/relink-half")
	fpRelinked   = failpoint.New("commit/relinked")
)

// fileID is what a consuming commit remembers of a file at its scan, to
// tell later whether it is still that file with that content.
type fileID struct {
	ino, dev uint64
	size     int64
	mtim     unix.Timespec
	mode     uint32 // with the type bits
	uid, gid uint32
}

func idOf(st *unix.Stat_t) fileID {
	return fileID{st.Ino, st.Dev, st.Size, st.Mtim, st.Mode, st.Uid, st.Gid}
}

// sameContent: the same inode with the same size and mtime, so nobody
// wrote it since.
func (f fileID) sameContent(st *unix.Stat_t) bool {
	return f.ino == st.Ino && f.dev == st.Dev && f.size == st.Size && f.mtim == st.Mtim
}

// linkedObj is a new object that is one of src's own inodes (StageLink).
type linkedObj struct {
	path string
	k    cas.Key
}

type adoptResult int

const (
	adoptNo       adoptResult = iota // src did not move (another filesystem): blit, then remove src
	adoptYes                         // src is the tree at work/tree/usr
	adoptRestored                    // src moved and is back: blit (unless changed), keep src
	adoptStuck                       // src moved and could not be put back: the journal stays
)

// Job is what a consuming commit keeps of src, from the scan until
// src is the new tree (or back where it was).
type Job struct {
	st     Store
	src    string // src's absolute path
	Work   string // the commit's staging directory; set before Take
	id     uint64
	digest string
	m      *manifest.Manifest

	mu      sync.Mutex       // the scan's fields, during the scan
	relink  []manifest.Entry // files that are not (yet) their object's inode
	scanned map[string]fileID
	linked  []linkedObj

	movedTo string // where src is while the store holds it and no tx records it
	stuck   bool   // src moved and could not be put back: the next Open does
	why     error  // src was put back after a failure that is not a change
}

// ScannedFile remembers a scanned file: which inode it was, and whether
// its object is that inode (linked) or it must be relinked in the tree.
func (c *Job) ScannedFile(e *manifest.Entry, fst *unix.Stat_t, linked bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.scanned[e.Path] = idOf(fst)
	if linked {
		c.linked = append(c.linked, linkedObj{e.Path, e.Key()})
	} else {
		c.relink = append(c.relink, *e)
	}
}

// Take tries to make src tx id's tree at root/usr (see adopt); false: the
// caller blits.
func (c *Job) Take(id uint64, digest string, m *manifest.Manifest, root string) (bool, error) {
	c.id, c.digest, c.m = id, digest, m
	res, err := c.adopt()
	switch res {
	case adoptYes:
		c.movedTo = filepath.Join(root, "usr")
	case adoptStuck:
		c.stuck = true
	}
	return res == adoptYes, err
}

// CheckUnchanged: src, copied into the tree, is removed after the record,
// so it must hold nothing the tree lacks (unless it is kept anyway).
func (c *Job) CheckUnchanged(m *manifest.Manifest) error {
	if c.why != nil {
		return nil
	}
	return unchanged(c.src, m, c.scanned)
}

// Placed follows an adopted src to the tree's final directory.
func (c *Job) Placed(final string) {
	if c.movedTo != "" {
		c.movedTo = filepath.Join(final, "usr")
	}
}

// Abandon undoes a consuming commit that recorded nothing: once objects
// were published, those that are src's own inodes leave the CAS (src may
// be handed back and must not alias them); src goes back. True while src
// is still in the store (the next Open's recoverConsumed moves it): keep
// what holds it.
func (c *Job) Abandon(published bool) (stuck bool) {
	for _, l := range c.linked {
		if !published {
			break
		}
		os.Remove(c.st.Objects.Path(l.k))
	}
	if c.movedTo != "" {
		if _, err := c.st.PutBack(c.movedTo, c.src); err != nil {
			return true
		}
	}
	return c.stuck
}

// Finish gives up src once tx id is recorded: adopted, only the journal
// goes; copied, src is removed unless it was kept (c.why). The error says
// what was left.
func (c *Job) Finish(id uint64, adopted bool, remove func(string) error) error {
	switch {
	case adopted:
		if err := c.st.DropJournal(); err != nil { // the next Open drops it
			return fmt.Errorf("tx %d committed: %w", id, err)
		}
	case c.why != nil:
		return fmt.Errorf("tx %d committed by copy; %s was kept: %w", id, c.src, c.why)
	default:
		if err := remove(c.src); err != nil {
			return fmt.Errorf("tx %d committed, but %s was not removed: %w", id, c.src, err)
		}
	}
	return nil
}

// adopt makes src the new tree at work/tree/usr instead of blitting one
// (Consume). Before src moves, the journal names its path and the tx id:
// from then until the record, a failure here or in the caller puts it
// back, and so does the next Open after a crash (recoverConsumed). In the
// tree, each file in relink (deduplicated, copied, or empty) is first
// checked to be the file that was scanned, then replaced by a link to its
// object or by a fresh empty file, never changed in place while another
// link shares its inode (a tree made with cp -al). A fast verify (nothing
// extra or missing, every file its object) and a look at the objects taken
// from src then catch any other change since the scan: ErrChanged, and src
// goes back. Any other failure puts src back too; the caller then blits.
func (c *Job) adopt() (adoptResult, error) {
	s := c.st
	dst := filepath.Join(c.Work, "tree", "usr")
	// A file taken by hardlink that was written since its scan would give
	// its new content to the files about to be linked to its object.
	if err := c.checkLinked(); err != nil {
		return adoptNo, err
	}
	j := Journal{Src: c.src, Work: filepath.Base(c.Work), ID: c.id, Digest: c.digest}
	if err := s.writeJournal(j); err != nil {
		return adoptNo, err
	}
	if err := fpJournaled.Inject(); err != nil {
		return adoptNo, errors.Join(err, s.DropJournal())
	}
	if err := os.Rename(c.src, dst); err != nil {
		return adoptNo, s.DropJournal() // another filesystem, or a mount point: blit
	}
	err := fpAdopted.Inject()
	if err == nil {
		err = c.relinkTree(dst)
	}
	if err == nil {
		err = c.checkAdopted(dst)
	}
	if err == nil {
		err = fpRelinked.Inject()
	}
	if err == nil {
		return adoptYes, nil
	}
	at, perr := s.PutBack(dst, c.src)
	if perr != nil {
		return adoptStuck, fmt.Errorf("%w (and it could not be put back; the store's next open retries: %w)", err, perr)
	}
	if at != c.src {
		err = fmt.Errorf("%w (the directory is now at %s: its path was taken meanwhile)", err, at)
	}
	if errors.Is(err, ErrChanged) {
		return adoptRestored, err
	}
	c.why = err
	return adoptRestored, nil
}

// relinkTree replaces the files of relink in the adopted tree dst (see
// adopt). Temporary names live in work, never in src: a crash leaves
// nothing of ours in the user's directory.
func (c *Job) relinkTree(dst string) error {
	rootfd, err := walk.OpenDirAt(unix.AT_FDCWD, dst)
	if err != nil {
		return fmt.Errorf("open %s: %w", dst, err)
	}
	defer unix.Close(rootfd)
	workfd, err := walk.OpenDirAt(unix.AT_FDCWD, c.Work)
	if err != nil {
		return fmt.Errorf("open %s: %w", c.Work, err)
	}
	defer unix.Close(workfd)
	// In path order, so that files of one directory share its fd.
	relink := c.relink
	slices.SortFunc(relink, func(a, b manifest.Entry) int { return strings.Compare(a.Path, b.Path) })
	dirfd, dirPath := -1, ""
	defer func() {
		if dirfd >= 0 {
			unix.Close(dirfd)
		}
	}()
	for i := range relink {
		if i == len(relink)/2 {
			if err := fpRelinkHalf.Inject(); err != nil {
				return err
			}
		}
		e := &relink[i]
		dir, base := ".", e.Path
		if j := strings.LastIndexByte(e.Path, '/'); j >= 0 {
			dir, base = e.Path[:j], e.Path[j+1:]
		}
		if dir != dirPath || dirfd < 0 {
			if dirfd >= 0 {
				unix.Close(dirfd)
				dirfd = -1
			}
			// src was the caller's until now: nothing in it is followed
			// out of the tree, however it changed since the scan.
			fd, err := openBeneath(rootfd, dir)
			switch err {
			case nil:
			case unix.ENOENT, unix.ENOTDIR, unix.ELOOP, unix.EXDEV:
				return fmt.Errorf("%w: directory %s was removed or replaced", ErrChanged, dir)
			default:
				return fmt.Errorf("open %s: %w", dir, err)
			}
			dirfd, dirPath = fd, dir
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				return fmt.Errorf("%w: %s was removed", ErrChanged, e.Path)
			}
			return fmt.Errorf("lstat %s: %w", e.Path, err)
		}
		if id := c.scanned[e.Path]; !id.sameContent(&st) || st.Mode != id.mode || st.Uid != id.uid || st.Gid != id.gid {
			return fmt.Errorf("%w: %s was modified", ErrChanged, e.Path)
		}
		k := e.Key()
		tmp := ".relink-" + strconv.Itoa(i)
		if e.Size == 0 {
			if err := fixEmpty(dirfd, base, &st, k, workfd, tmp); err != nil {
				return fmt.Errorf("%s: %w", e.Path, err)
			}
			continue
		}
		if err := c.st.Objects.Link(k, workfd, tmp); err != nil {
			return fmt.Errorf("link object %s for %s: %w", k.RelPath(), e.Path, err)
		}
		if err := unix.Renameat(workfd, tmp, dirfd, base); err != nil {
			unix.Unlinkat(workfd, tmp, 0)
			return fmt.Errorf("replace %s: %w", e.Path, err)
		}
	}
	return nil
}

// checkAdopted is the last look at an adopted src before it is published:
// a fast verify (every manifest entry there, nothing else, each file its
// object's inode), and the objects taken from src by hardlink still as
// scanned (a writer could have written through them).
func (c *Job) checkAdopted(dst string) error {
	probs, err := blit.Verify(c.m, c.st.Objects, dst, false, c.st.Workers, nil)
	if err != nil {
		return fmt.Errorf("verify %s: %w", dst, err)
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %s (%d differences)", ErrChanged, probs[0], len(probs))
	}
	return c.checkLinked()
}

// checkLinked checks that the objects taken from src by hardlink are as
// scanned.
func (c *Job) checkLinked() error {
	for _, l := range c.linked {
		var st unix.Stat_t
		if err := c.st.Objects.Stat(l.k, &st); err != nil {
			return fmt.Errorf("object %s of %s: %w", l.k.RelPath(), l.path, err)
		}
		if !c.scanned[l.path].sameContent(&st) {
			return fmt.Errorf("%w: %s was modified", ErrChanged, l.path)
		}
	}
	return nil
}

// fixEmpty gives an empty file in the adopted tree (stat want) its
// manifest mode and owner. An inode only src links is changed in place;
// one with other links (cp -al from a live tree) is left alone and a fresh
// empty file, made as tmp in workfd, takes its name. Only through
// descriptors: a symlink put in its place is never followed.
func fixEmpty(dirfd int, name string, want *unix.Stat_t, k cas.Key, workfd int, tmp string) error {
	if want.Mode&07777 == k.Mode && (!cas.IsRoot() || (want.Uid == k.UID && want.Gid == k.GID)) {
		return nil
	}
	if want.Nlink == 1 {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrChanged, err)
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		if err == nil && (st.Ino != want.Ino || st.Size != 0 || st.Mode&unix.S_IFMT != unix.S_IFREG) {
			err = ErrChanged
		}
		if err == nil && st.Nlink == 1 {
			err = cas.SetAttrs(fd, k.Mode, k.UID, k.GID)
			unix.Close(fd)
			return err
		}
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	fd, err := unix.Openat(workfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	err = cas.SetAttrs(fd, k.Mode, k.UID, k.GID)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(workfd, tmp, dirfd, name)
	}
	if err != nil {
		unix.Unlinkat(workfd, tmp, 0)
	}
	return err
}

// JournalName is the file in the store that names a consumed src
// while the store holds it and no tx records it yet.
const JournalName = "consume.json"

// Journal is what the journal says.
type Journal struct {
	Src    string `json:"src"`    // where src was (absolute)
	Work   string `json:"work"`   // its commit's directory in staging/
	ID     uint64 `json:"id"`     // the tx it is to become
	Digest string `json:"digest"` // that tx's digest
}

// writeJournal writes the consume journal durably (temp, fsync, rename,
// directory fsync) before src moves.
func (s Store) writeJournal(j Journal) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	p := filepath.Join(s.Dir, JournalName)
	tmp := filepath.Join(s.Dir, "staging", JournalName+".new")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("consume journal: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("consume journal %s: %w", p, err)
	}
	return fsx.SyncDir(s.Dir)
}

// DropJournal removes the consume journal durably; a missing one is fine.
func (s Store) DropJournal() error {
	p := filepath.Join(s.Dir, JournalName)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return fsx.SyncDir(s.Dir)
}

// PutBack moves a consumed src from the store back to its path to, or
// next to it (to.txboot-recovered-N) if something took that path
// meanwhile; makes that durable, then drops the journal. It returns where
// src now is.
func (s Store) PutBack(from, to string) (string, error) {
	dest := to
	for n := 1; ; n++ {
		err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, dest, unix.RENAME_NOREPLACE)
		if err == unix.EINVAL || err == unix.ENOSYS { // no RENAME_NOREPLACE here
			err = unix.EEXIST
			if _, lerr := os.Lstat(dest); errors.Is(lerr, os.ErrNotExist) {
				err = unix.Rename(from, dest)
			}
		}
		if err == nil {
			break
		}
		if (err != unix.EEXIST && err != unix.ENOTEMPTY) || n > 100 {
			return "", fmt.Errorf("put %s back at %s: %w", from, dest, err)
		}
		dest = fmt.Sprintf("%s.txboot-recovered-%d", to, n)
	}
	for _, d := range []string{filepath.Dir(dest), filepath.Dir(from)} {
		if err := fsx.SyncDir(d); err != nil {
			return dest, err
		}
	}
	return dest, s.DropJournal()
}

// unchanged checks that src still holds exactly what its scan found (by
// lstat: type, mode, owner, symlink target, and for files the same inode,
// size and mtime), before a consuming commit that copied src removes it.
func unchanged(src string, m *manifest.Manifest, scanned map[string]fileID) error {
	want := make(map[string]*manifest.Entry, len(m.Entries))
	for i := range m.Entries {
		want[m.Entries[i].Path] = &m.Entries[i]
	}
	seen := 0
	err := filepath.WalkDir(src, func(p string, _ fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s was removed", ErrChanged, p)
		}
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		e := want[rel]
		if e == nil {
			return fmt.Errorf("%w: %s was added", ErrChanged, rel)
		}
		seen++
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("%w: lstat %s: %w", ErrChanged, rel, err)
		}
		ok := st.Uid == e.UID && st.Gid == e.GID
		switch e.Type {
		case manifest.Dir:
			ok = ok && st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Mode&07777 == e.Mode
		case manifest.Symlink:
			t, err := os.Readlink(p)
			ok = ok && err == nil && t == e.Target
		default:
			ok = ok && scanned[rel].sameContent(&st)
		}
		if !ok {
			return fmt.Errorf("%w: %s was modified", ErrChanged, rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != len(m.Entries) {
		return fmt.Errorf("%w: %d entries were removed", ErrChanged, len(m.Entries)-seen)
	}
	return nil
}

// openBeneath opens directory rel under rootfd without following any
// symlink or leaving rootfd (openat2; on kernels before 5.6, one component
// at a time with O_NOFOLLOW).
func openBeneath(rootfd int, rel string) (int, error) {
	how := unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	for {
		fd, err := unix.Openat2(rootfd, rel, &how)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != unix.ENOSYS {
			return fd, err
		}
		break
	}
	fd, err := unix.Dup(rootfd)
	if err != nil || rel == "." {
		return fd, err
	}
	for _, c := range strings.Split(rel, "/") {
		next, err := walk.OpenDirAt(fd, c)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}
