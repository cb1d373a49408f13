package txstore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/sealimg"
	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// sealer turns fs-verity on for a tx's objects and learns their verity
// digests, for a commit's image and for Seal. It shares the cas.Store's
// verity state: after the first verity.ErrUnsupported nothing asks the
// kernel again and digests are computed in Go (reading the content once),
// unless known has them.
type sealer struct {
	objs             *cas.Store
	known            map[cas.Hash]verity.Sum // digests of content the commit's scan read
	workers          int
	enabled, already atomic.Int64
	unsealed         atomic.Int64 // objects left without fs-verity
}

func newSealer(objs *cas.Store, workers int) *sealer {
	return &sealer{objs: objs, workers: max(1, workers)}
}

// fileKeys lists the distinct objects m names (empty files are none).
func fileKeys(m *manifest.Manifest) []cas.Key {
	seen := map[cas.Key]bool{}
	var keys []cas.Key
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Type != manifest.File || e.Size == 0 {
			continue
		}
		if k := e.Key(); !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// digests seals every object of keys where it can and returns each one's
// fs-verity digest, in parallel. With want false it only seals (a Seal
// whose image is current), and does nothing once fs-verity is off.
func (z *sealer) digests(keys []cas.Key, want bool) (map[cas.Key]verity.Sum, error) {
	sums := make([]verity.Sum, len(keys))
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range min(z.workers, max(1, len(keys))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(keys); i = int(next.Add(1) - 1) {
				if !want && z.objs.VerityOff() {
					z.unsealed.Add(1)
					continue
				}
				s, err := z.digest(keys[i], want)
				if err != nil {
					mu.Lock()
					first = cmpErr(first, err)
					mu.Unlock()
					return
				}
				sums[i] = s
			}
		}()
	}
	wg.Wait()
	if first != nil || !want {
		return nil, first
	}
	out := make(map[cas.Key]verity.Sum, len(keys))
	for i, k := range keys {
		out[k] = sums[i]
	}
	return out, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// digest is object's, except that once fs-verity is off a digest the
// scan computed saves reading the object.
func (z *sealer) digest(k cas.Key, want bool) (verity.Sum, error) {
	if s, ok := z.known[k.Hash]; ok && z.objs.VerityOff() {
		z.unsealed.Add(1)
		return s, nil
	}
	return z.object(k, want)
}

// object seals object k (when fs-verity is on) and returns its digest:
// the kernel's when sealed, else computed from its content when want.
func (z *sealer) object(k cas.Key, want bool) (verity.Sum, error) {
	path := z.objs.Path(k)
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return verity.Sum{}, fmt.Errorf("object %s: %w", k.RelPath(), err)
	}
	defer f.Close()
	if !z.objs.VerityOff() {
		if s, ok, err := z.seal(f, k); ok || err != nil {
			return s, err
		}
	}
	z.unsealed.Add(1)
	if s, ok := z.known[k.Hash]; ok || !want {
		return s, nil
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(f)
	s, _, err := verity.Digest(br)
	br.Reset(nil)
	readers.Put(br)
	if err != nil {
		return verity.Sum{}, fmt.Errorf("fs-verity digest of %s: %w", path, err)
	}
	return s, nil
}

// readers are the buffered readers object digests read through: a new
// 256 KiB buffer per object was most of the cost of 100k small ones.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 256<<10) }}

// seal measures f, turning fs-verity on first when it has none. Before
// the kernel vouches for an object's content from then on, the content is
// checked against its name (an object stored unsealed may have rotted: an
// error, never sealed nor put in an image).
func (z *sealer) seal(f *os.File, k cas.Key) (verity.Sum, bool, error) {
	s, err := verity.Measure(f)
	if err == nil {
		z.already.Add(1)
		return s, true, nil
	}
	if errors.Is(err, verity.ErrNotEnabled) {
		h, herr := cas.HashObject(int(f.Fd()))
		if herr == nil && h != k.Hash {
			herr = fmt.Errorf("%w: content hashes to %s (run bootctl verify --full)", ErrVerify, h)
		}
		if herr != nil {
			return s, false, fmt.Errorf("object %s: %w", k.RelPath(), herr)
		}
		if err = verity.Enable(f); err == nil {
			if s, err = verity.Measure(f); err == nil {
				z.enabled.Add(1)
				return s, true, nil
			}
		}
	}
	z.objs.NoteVerity(fmt.Errorf("object %s: %w", k.RelPath(), err))
	if _, err := f.Seek(0, 0); err != nil {
		return s, false, fmt.Errorf("object %s: %w", k.RelPath(), err)
	}
	return s, false, nil
}

// buildImage writes m's image in memory, the objects' digests from sums,
// and returns it with its fs-verity digest (of these bytes: never of a
// re-read).
func buildImage(m *manifest.Manifest, sums map[cas.Key]verity.Sum) ([]byte, verity.Sum, error) {
	var buf bytes.Buffer
	err := sealimg.Build(&buf, m, func(e *manifest.Entry) (sealimg.Object, error) {
		k := e.Key()
		s, ok := sums[k]
		if !ok {
			return sealimg.Object{}, fmt.Errorf("no fs-verity digest for %s (objects/%s)", e.Path, k.RelPath())
		}
		return sealimg.Object{Redirect: "/" + k.RelPath(), Verity: s}, nil
	})
	if err != nil {
		return nil, verity.Sum{}, err
	}
	d, _, err := verity.Digest(bytes.NewReader(buf.Bytes()))
	return buf.Bytes(), d, err
}

// placeImage puts img at dir/image.erofs durably and atomically: a temp
// file in tmpDir (same filesystem), fsync, fs-verity on (where the Store
// can: the kernel's digest must be want), rename, fsync dir. sealed says
// whether the image has fs-verity.
func (z *sealer) placeImage(img []byte, want verity.Sum, tmpDir, dir string) (sealed bool, err error) {
	dst := filepath.Join(dir, sealimg.FileName)
	f, err := os.CreateTemp(tmpDir, ".image-")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", dst, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after the rename
	err = f.Chmod(0o444)
	if err == nil {
		_, err = f.Write(img)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("write %s: %w", dst, err)
	}
	if sealed, err = z.sealImage(tmp, want); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return false, fmt.Errorf("write %s: %w", dst, err)
	}
	return sealed, fsx.SyncDir(dir)
}

// sealImage turns fs-verity on for the image at path (where the Store
// can) and checks the kernel's digest is want.
func (z *sealer) sealImage(path string, want verity.Sum) (bool, error) {
	if z.objs.VerityOff() {
		return false, nil
	}
	s, err := verity.MeasurePath(path)
	if err == nil {
		z.already.Add(1)
	} else if err = verity.EnablePath(path); err == nil {
		if s, err = verity.MeasurePath(path); err == nil {
			z.enabled.Add(1)
		}
	}
	if err != nil {
		z.objs.NoteVerity(fmt.Errorf("image %s: %w", path, err))
		return false, nil
	}
	if s != want {
		return false, fmt.Errorf("image %s: fs-verity digest %s, want %s", path, s, want)
	}
	return true, nil
}

// sealed reports whether every object and the image have fs-verity.
func (z *sealer) sealed(imageSealed bool) bool {
	return imageSealed && !z.objs.VerityOff() && z.unsealed.Load() == 0
}

// note says why a tx is not sealed, for its SealNote.
func (z *sealer) note(storeDir string) string {
	if z.objs.VerityOff() {
		return unsupportedNote(storeDir)
	}
	if n := z.objs.VerityNote(); n != "" {
		return "fs-verity not enabled on every file: " + n + " (bootctl seal tries again)"
	}
	return "fs-verity not enabled on every file (bootctl seal tries again)"
}

// unsupportedNote says that the store's filesystem or kernel cannot seal,
// and what would make it.
func unsupportedNote(dir string) string {
	fs, dev := describeFS(dir)
	kernel := "on a 5.4+ kernel with CONFIG_FS_VERITY"
	switch {
	case fs == "ext4" && dev != "":
		return fmt.Sprintf("fs-verity unsupported on ext4 (%s): run tune2fs -O verity %s (ext4) %s", dev, dev, kernel)
	case fs == "ext4":
		return "fs-verity unsupported on ext4: run tune2fs -O verity DEVICE (ext4) " + kernel
	case fs == "f2fs", fs == "btrfs":
		return fmt.Sprintf("fs-verity unsupported on %s: it needs the verity feature %s", fs, kernel)
	}
	return fmt.Sprintf("fs-verity unsupported on %s: the store needs ext4 with the verity feature (tune2fs -O verity) %s", fs, kernel)
}
