package txstore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"golang.org/x/sys/unix"
)

// A manifest object is untrusted input: a damaged store, or any root-owned
// read-only file of a committed tree (its object has the same key form),
// can hold a few KB of zstd that decode to GBs. Every manifest read goes
// through streamManifest, which decodes in small chunks and stops at the
// first byte that shows the object is not a manifest within its bounds, so
// memory stays at what a real manifest of that size would take.

const (
	// maxManifestWindow: encoder() writes one frame with a window of at
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
	// ErrManifestTooLarge: a manifest object decodes (or declares it
	// decodes) to more bytes or lines than a manifest it could be: more
	// than manifest.MaxSize, manifest.MaxEntries, or what the tx's entry
	// count allows. Also an ErrBadManifest.
	ErrManifestTooLarge = fmt.Errorf("%w: too large", ErrBadManifest)
	// errNotManifest: an object whose first bytes are no manifest's (not
	// zstd, or text without the header). Scans skip these silently.
	errNotManifest = fmt.Errorf("%w: not a manifest", ErrBadManifest)
)

// manifestHead is what every manifest's text starts with.
const manifestHead = manifest.Header + "\n"

// manifestLimit is the most bytes and lines (entries) the text of a
// manifest with entries entries can have; entries <= 0 means unknown.
func manifestLimit(entries int) (size int64, lines int) {
	if entries <= 0 || entries > manifest.MaxEntries {
		return manifest.MaxSize, manifest.MaxEntries
	}
	size = int64(len(manifestHead)) + int64(entries)*(manifest.MaxLineLen+1)
	return min(size, manifest.MaxSize), entries
}

// compressedLimit is the most bytes zstd can take for size bytes of text
// (raw blocks of 128 KiB cost 3 bytes each, plus frame header and checksum).
func compressedLimit(size int64) int64 { return size + size>>10 + 1024 }

// streamManifest decodes a manifest object read from src and writes its
// text to the writer sink returns for the frame's declared content size
// (-1 if none), checking as it goes: a zstd frame (not skippable, no
// dictionary, window at most maxManifestWindow), text starting with the
// manifest header, no line longer than manifest.MaxLineLen, at most lines
// lines and size bytes, and exactly the declared size (so one frame). It
// returns the text's length.
func streamManifest(src io.Reader, size int64, lines int, sink func(declared int64) io.Writer) (n int64, err error) {
	declared := int64(-1)
	br := bufio.NewReaderSize(src, manifestChunk)
	hb, _ := br.Peek(zstd.HeaderMaxSize)
	var h zstd.Header
	if err := h.Decode(hb); err != nil {
		return 0, fmt.Errorf("%w: zstd frame header: %w", errNotManifest, err)
	}
	if h.Skippable || h.DictionaryID != 0 {
		return 0, fmt.Errorf("%w: not a plain zstd frame", errNotManifest)
	}
	if h.WindowSize > maxManifestWindow {
		return 0, fmt.Errorf("%w: zstd window of %d bytes (at most %d)", errNotManifest, h.WindowSize, maxManifestWindow)
	}
	if h.HasFCS {
		declared = int64(min(h.FrameContentSize, 1<<62))
	}
	d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxManifestWindow))
	if err != nil {
		return 0, fmt.Errorf("%w: zstd: %w", ErrBadManifest, err)
	}
	defer d.Close()

	// The header first: the cheapest way to tell a manifest from any
	// other zstd file, a bomb of zeros included.
	var head [len(manifestHead)]byte
	if k, err := io.ReadFull(d, head[:]); err != nil || !manifest.HasHeader(head[:]) {
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return 0, fmt.Errorf("%w: zstd: %w", errNotManifest, err)
		}
		return 0, fmt.Errorf("%w: text starts with %q, not %q", errNotManifest, head[:k], manifest.Header)
	}
	if declared > size {
		return 0, fmt.Errorf("%w: its zstd frame declares %d bytes, more than %d", ErrManifestTooLarge, declared, size)
	}
	if declared >= 0 && declared < int64(len(head)) {
		return 0, fmt.Errorf("%w: its zstd frame declares %d bytes, less than its header", ErrBadManifest, declared)
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
			return n, fmt.Errorf("%w: more than %d bytes", ErrManifestTooLarge, size)
		case declared >= 0 && n+int64(k) > declared:
			return n, fmt.Errorf("%w: more than the %d bytes its zstd frame declares", ErrBadManifest, declared)
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
				return n, fmt.Errorf("%w: more than %d entries", ErrManifestTooLarge, lines)
			}
			line, rest = 0, rest[i+1:]
		}
		if line > manifest.MaxLineLen {
			return n, fmt.Errorf("%w: line %d longer than %d bytes", ErrBadManifest, nl+2, manifest.MaxLineLen)
		}
		if _, err := w.Write(chunk); err != nil {
			return n, err
		}
		n += int64(k)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, fmt.Errorf("%w: zstd: %w", ErrBadManifest, rerr)
		}
	}
	if declared >= 0 && n != declared {
		return n, fmt.Errorf("%w: %d bytes, its zstd frame declares %d", ErrBadManifest, n, declared)
	}
	return n, nil
}

// growBuf collects a manifest's text: it starts at first bytes and doubles,
// never past limit (streamManifest has checked the size before a Write).
type growBuf struct {
	b            []byte
	first, limit int64
}

func (g *growBuf) Write(p []byte) (int, error) {
	need := int64(len(g.b) + len(p))
	if need > g.limit {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrBadManifest, g.limit)
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

// decodeManifest returns the text of the manifest object open() reads,
// bounded by manifestLimit(entries) (entries <= 0: unknown). A frame that
// declares its size (encoder() always does above 255 bytes) is read once,
// into a buffer of that size at once when the entry count bounds it (a
// tx's record: the boot path); one that does not is read twice, first to
// measure its text without keeping it, then into a buffer of that size.
func decodeManifest(open func() io.Reader, entries int) ([]byte, error) {
	size, lines := manifestLimit(entries)
	var g *growBuf
	n, err := streamManifest(open(), size, lines, func(declared int64) io.Writer {
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
	if _, err := streamManifest(open(), n, lines, func(int64) io.Writer { return g }); err != nil {
		return nil, err
	}
	return g.b, nil
}

// hashManifest is the digest ("sha256:HEX") of the manifest object open()
// reads, bounded as decodeManifest, without keeping its text.
func hashManifest(open func() io.Reader, entries int) (string, error) {
	size, lines := manifestLimit(entries)
	h := sha256.New()
	if _, err := streamManifest(open(), size, lines, func(int64) io.Writer { return h }); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// manifestText reads manifest object k (its hash checked first) and
// returns its text, bounded by manifestLimit(entries). Errors name the
// object.
func (s *Store) manifestText(k cas.Key, entries int) ([]byte, error) {
	size, _ := manifestLimit(entries)
	var st unix.Stat_t
	if err := s.objects.Stat(k, &st); err == nil && st.Size > compressedLimit(size) {
		return nil, fmt.Errorf("objects/%s: %w: %d compressed bytes, more than a manifest of at most %d bytes takes", k.RelPath(), ErrManifestTooLarge, st.Size, size)
	}
	z, err := s.objects.ReadAll(k, compressedLimit(size))
	if err != nil {
		return nil, err
	}
	raw, err := decodeManifest(func() io.Reader { return bytes.NewReader(z) }, entries)
	if err != nil {
		return nil, fmt.Errorf("objects/%s: %w", k.RelPath(), err)
	}
	return raw, nil
}
