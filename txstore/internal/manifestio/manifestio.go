// Package manifestio reads manifest objects from the CAS as the untrusted
// input they are (bounded decoding: Decode, Hash, Text) and finds them
// without the database (Scan, Read, ByDigest).
package manifestio

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// A manifest object is untrusted input: a damaged store, or any root-owned
// read-only file of a committed tree (its object has the same key form),
// can hold a few KB of zstd that decode to GBs. Every manifest read goes
// through stream, which decodes in small chunks and stops at the
// first byte that shows the object is not a manifest within its bounds, so
// memory stays at what a real manifest of that size would take.

const (
	// maxManifestWindow: txstore's encoder writes one frame with a window of at
	// most 8 MiB (SpeedDefault); twice that leaves room for another encoder
	// version while bounding the decoder's history. A larger window is
	// not one of ours.
	maxManifestWindow = 16 << 20
	// manifestChunk is how much is decoded, checked and kept at a time.
	manifestChunk = 64 << 10
	// manifestFirstBuf is the first buffer for a manifest whose frame
	// declares its size when no entry count bounds it (scans): it doubles
	// from there up to that size, so a frame that lies about its size
	// costs no more than twice what it really decoded.
	manifestFirstBuf = 4 << 20
)

var (
	// ErrTooLarge: a manifest object decodes (or declares it
	// decodes) to more bytes or lines than a manifest it could be: more
	// than manifest.MaxSize, manifest.MaxEntries, or what the tx's entry
	// count allows. Also an manifest.ErrBad.
	ErrTooLarge = fmt.Errorf("%w: too large", manifest.ErrBad)
	// ErrNotManifest: an object whose first bytes are no manifest's (not
	// zstd, or text without the header). Scans skip these silently.
	ErrNotManifest = fmt.Errorf("%w: not a manifest", manifest.ErrBad)
)

// manifestHead is what every manifest's text starts with.
const manifestHead = manifest.Header + "\n"

// Limit is the most bytes and lines (entries) the text of a
// manifest with entries entries can have; entries <= 0 means unknown.
func Limit(entries int) (size int64, lines int) {
	if entries <= 0 || entries > manifest.MaxEntries {
		return manifest.MaxSize, manifest.MaxEntries
	}
	size = int64(len(manifestHead)) + int64(entries)*(manifest.MaxLineLen+1)
	return min(size, manifest.MaxSize), entries
}

// CompressedLimit is the most bytes zstd can take for size bytes of text
// (raw blocks of 128 KiB cost 3 bytes each, plus frame header and checksum).
func CompressedLimit(size int64) int64 { return size + size>>10 + 1024 }

// stream decodes a manifest object read from src and writes its
// text to the writer sink returns for the frame's declared content size
// (-1 if none), checking as it goes: a zstd frame (not skippable, no
// dictionary, window at most maxManifestWindow), text starting with the
// manifest header, no line longer than manifest.MaxLineLen, at most lines
// lines and size bytes, and exactly the declared size (so one frame). It
// returns the text's length.
func stream(src io.Reader, size int64, lines int, sink func(declared int64) io.Writer) (n int64, err error) {
	declared := int64(-1)
	br := bufio.NewReaderSize(src, manifestChunk)
	hb, _ := br.Peek(zstd.HeaderMaxSize)
	var h zstd.Header
	if err := h.Decode(hb); err != nil {
		return 0, fmt.Errorf("%w: zstd frame header: %w", ErrNotManifest, err)
	}
	if h.Skippable || h.DictionaryID != 0 {
		return 0, fmt.Errorf("%w: not a plain zstd frame", ErrNotManifest)
	}
	if h.WindowSize > maxManifestWindow {
		return 0, fmt.Errorf("%w: zstd window of %d bytes (at most %d)", ErrNotManifest, h.WindowSize, maxManifestWindow)
	}
	if h.HasFCS {
		declared = int64(min(h.FrameContentSize, 1<<62))
	}
	d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxManifestWindow))
	if err != nil {
		return 0, fmt.Errorf("%w: zstd: %w", manifest.ErrBad, err)
	}
	defer d.Close()

	// The header first: the cheapest way to tell a manifest from any
	// other zstd file, a bomb of zeros included.
	var head [len(manifestHead)]byte
	if k, err := io.ReadFull(d, head[:]); err != nil || !manifest.HasHeader(head[:]) {
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return 0, fmt.Errorf("%w: zstd: %w", ErrNotManifest, err)
		}
		return 0, fmt.Errorf("%w: text starts with %q, not %q", ErrNotManifest, head[:k], manifest.Header)
	}
	if declared > size {
		return 0, fmt.Errorf("%w: its zstd frame declares %d bytes, more than %d", ErrTooLarge, declared, size)
	}
	if declared >= 0 && declared < int64(len(head)) {
		return 0, fmt.Errorf("%w: its zstd frame declares %d bytes, less than its header", manifest.ErrBad, declared)
	}
	w := sink(declared)
	if _, err := w.Write(head[:]); err != nil {
		return 0, err
	}
	n = int64(len(head))
	nl, line := 0, 0 // newlines after the header; length of the line being read
	buf := make([]byte, manifestChunk)
	for {
		k, rerr := d.Read(buf)
		chunk := buf[:k]
		switch {
		case n+int64(k) > size:
			return n, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, size)
		case declared >= 0 && n+int64(k) > declared:
			return n, fmt.Errorf("%w: more than the %d bytes its zstd frame declares", manifest.ErrBad, declared)
		}
		for rest := chunk; len(rest) > 0; {
			i := bytes.IndexByte(rest, '\n')
			if i < 0 {
				line += len(rest)
				break
			}
			if line += i; line > manifest.MaxLineLen {
				break
			}
			if nl++; nl > lines {
				return n, fmt.Errorf("%w: more than %d entries", ErrTooLarge, lines)
			}
			line, rest = 0, rest[i+1:]
		}
		if line > manifest.MaxLineLen {
			return n, fmt.Errorf("%w: line %d longer than %d bytes", manifest.ErrBad, nl+2, manifest.MaxLineLen)
		}
		if _, err := w.Write(chunk); err != nil {
			return n, err
		}
		n += int64(k)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, fmt.Errorf("%w: zstd: %w", manifest.ErrBad, rerr)
		}
	}
	if declared >= 0 && n != declared {
		return n, fmt.Errorf("%w: %d bytes, its zstd frame declares %d", manifest.ErrBad, n, declared)
	}
	return n, nil
}

// growBuf collects a manifest's text: it starts at first bytes and doubles,
// never past limit (stream has checked the size before a Write).
type growBuf struct {
	b            []byte
	first, limit int64
}

func (g *growBuf) Write(p []byte) (int, error) {
	need := int64(len(g.b) + len(p))
	if need > g.limit {
		return 0, fmt.Errorf("%w: more than %d bytes", manifest.ErrBad, g.limit)
	}
	if need > int64(cap(g.b)) {
		c := min(max(2*int64(cap(g.b)), g.first, need), g.limit)
		nb := make([]byte, len(g.b), c)
		copy(nb, g.b)
		g.b = nb
	}
	g.b = append(g.b, p...)
	return len(p), nil
}

// Decode returns the text of the manifest object open() reads,
// bounded by Limit(entries) (entries <= 0: unknown). A frame that
// declares its size (txstore's encoder always does above 255 bytes) is read once,
// into a buffer of that size at once when the entry count bounds it (a
// tx's record: the boot path); one that does not is read twice, first to
// measure its text without keeping it, then into a buffer of that size.
func Decode(open func() io.Reader, entries int) ([]byte, error) {
	size, lines := Limit(entries)
	var g *growBuf
	n, err := stream(open(), size, lines, func(declared int64) io.Writer {
		if declared < 0 {
			return io.Discard
		}
		g = &growBuf{first: manifestFirstBuf, limit: declared}
		if entries > 0 {
			g.first = declared
		}
		return g
	})
	if err != nil {
		return nil, err
	}
	if g != nil {
		return g.b, nil
	}
	g = &growBuf{first: n, limit: n}
	if _, err := stream(open(), n, lines, func(int64) io.Writer { return g }); err != nil {
		return nil, err
	}
	return g.b, nil
}

// Hash is the digest ("sha256:HEX") of the manifest object open()
// reads, bounded as Decode, without keeping its text.
func Hash(open func() io.Reader, entries int) (string, error) {
	size, lines := Limit(entries)
	h := sha256.New()
	if _, err := stream(open(), size, lines, func(int64) io.Writer { return h }); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// Text reads manifest object k (its hash checked first) and
// returns its text, bounded by Limit(entries). Errors name the
// object.
func Text(objs *cas.Store, k cas.Key, entries int) ([]byte, error) {
	size, _ := Limit(entries)
	var st unix.Stat_t
	if err := objs.Stat(k, &st); err == nil && st.Size > CompressedLimit(size) {
		return nil, fmt.Errorf("objects/%s: %w: %d compressed bytes, more than a manifest of at most %d bytes takes", k.RelPath(), ErrTooLarge, st.Size, size)
	}
	z, err := objs.ReadAll(k, CompressedLimit(size))
	if err != nil {
		return nil, err
	}
	raw, err := Decode(func() io.Reader { return bytes.NewReader(z) }, entries)
	if err != nil {
		return nil, fmt.Errorf("objects/%s: %w", k.RelPath(), err)
	}
	return raw, nil
}

// Manifest objects are named by the hash of their zstd bytes (see
// manifestKey), not by the tx digest, and share the key form 0444 root:root
// with ordinary files; so finding one by digest without the database means
// looking at those objects' first bytes for a zstd frame, and decoding only
// the first bytes of those until one starts as a manifest does.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// Found is a manifest object found in the CAS.
type Found struct {
	Key    cas.Key
	M      *manifest.Manifest
	Digest string
}

// Scan calls fn with every manifest object in the CAS (with want,
// only the one with that digest) until fn returns false, and skipped (if
// not nil) with each object that starts as a manifest does but cannot be
// used (too large, damaged). Objects are read on workers
// goroutines, one fan-out directory at a time each.
func Scan(objs *cas.Store, workers int, want string, fn func(f Found) bool, skipped func(error)) error {
	ofd, err := unix.Open(objs.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", objs.Dir, err)
	}
	defer unix.Close(ofd)
	var (
		mu   sync.Mutex
		stop bool
		wg   sync.WaitGroup
		errs []error
	)
	fans := make(chan int)
	worker := func() {
		defer wg.Done()
		for b := range fans {
			name := fmt.Sprintf("%02x", b)
			fd, err := unix.Openat(ofd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err == unix.ENOENT {
				continue
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("open %s/%s: %w", objs.Dir, name, err))
				mu.Unlock()
				continue
			}
			var keys []cas.Key
			err = cas.ReadDir(fd, func(n string, _ uint64, typ uint8) {
				if len(n) != 64+5 || !strings.HasSuffix(n, ".0444") || (typ != unix.DT_REG && typ != unix.DT_UNKNOWN) {
					return
				}
				if k, err := cas.ParseName(n); err == nil {
					keys = append(keys, k)
				}
			})
			unix.Close(fd)
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("list %s/%s: %w", objs.Dir, name, err))
				mu.Unlock()
				continue
			}
			for _, k := range keys {
				mu.Lock()
				done := stop
				mu.Unlock()
				if done {
					break
				}
				f, ok, err := Read(objs, k, want)
				mu.Lock()
				switch {
				case err != nil && skipped != nil && !stop:
					skipped(err)
				case ok && !stop && !fn(f):
					stop = true
				}
				mu.Unlock()
			}
		}
	}
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go worker()
	}
	for b := 0; b < 256; b++ {
		fans <- b
	}
	close(fans)
	wg.Wait()
	return errors.Join(errs...)
}

// Read returns object k as a manifest if it is one (and, with want,
// has that digest). An object that is not zstd or whose text does not start
// with the manifest header is simply not a manifest (ok false, no error);
// one that does but cannot be used — too large for a manifest, not
// canonical, damaged, a hash that does not match its name — is an error
// naming it. Decoding is bounded (Decode): with want, a first pass
// only hashes the text, so no object but the one wanted is ever held in
// memory whole.
func Read(objs *cas.Store, k cas.Key, want string) (Found, bool, error) {
	fd, err := objs.Open(k)
	if err != nil {
		return Found{}, false, nil
	}
	f := os.NewFile(uintptr(fd), objs.Path(k))
	defer f.Close()
	var head [4]byte
	var st unix.Stat_t
	if n, _ := unix.Pread(fd, head[:], 0); n != 4 || !bytes.Equal(head[:], zstdMagic) || unix.Fstat(fd, &st) != nil {
		return Found{}, false, nil
	}
	// Streamed from the file: most zstd objects (compressed modules,
	// firmware) are told apart by their first decoded bytes, so they
	// are never read whole.
	open := func() io.Reader { return io.NewSectionReader(f, 0, st.Size) }
	bad := func(err error) (Found, bool, error) {
		if errors.Is(err, ErrNotManifest) {
			return Found{}, false, nil
		}
		return Found{}, false, fmt.Errorf("%s: %w", objs.Path(k), err)
	}
	if want != "" {
		d, err := Hash(open, 0)
		if err != nil {
			return bad(err)
		}
		if d != want {
			return Found{}, false, nil
		}
	}
	raw, err := Decode(open, 0)
	if err != nil {
		return bad(err)
	}
	d := manifest.Digest(raw)
	if want != "" && d != want { // changed between the two reads
		return Found{}, false, nil
	}
	// The object's own hash, last: only manifests get this far.
	if h, err := cas.HashObject(fd); err != nil || h != k.Hash {
		return bad(fmt.Errorf("%w: content does not match its name", manifest.ErrBad))
	}
	m, err := manifest.DecodeOwned(raw)
	if err != nil {
		return bad(err)
	}
	return Found{Key: k, M: m, Digest: d}, true, nil
}

// ByDigest is every usable manifest object in the CAS by digest,
// and the digests sorted (see Scan for skip).
func ByDigest(objs *cas.Store, workers int, skip func(error)) (map[string]Found, []string, error) {
	byDigest := map[string]Found{}
	if err := Scan(objs, workers, "", func(f Found) bool { byDigest[f.Digest] = f; return true }, skip); err != nil {
		return nil, nil, err
	}
	digests := make([]string, 0, len(byDigest))
	for d := range byDigest {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	return byDigest, digests, nil
}
