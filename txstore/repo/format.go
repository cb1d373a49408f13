// Package repo is txboot's static repository (format v1): plain files any
// web server can serve, written by publish and read by pull.
//
//	config                  ConfigMarker
//	index.json              the published txs (Index); written last
//	index.sig               JSON array of sign.Signature over index.json's bytes
//	manifests/<hex>.zst     a tx's canonical manifest, zstd; <hex> = its digest
//	objects/<ab>/<hex>      object content, raw
//	objects/<ab>/<hex>.zst  object content, zstd (only one of the two exists)
//	txs/<hex>.objects.zst   per-tx object table (TableEntry lines), zstd
//	deltas/<hex>-<parent hex>.zst  the manifest as a delta against its
//	                        parent's, with the table lines of the new
//	                        contents (delta.go); optional, a fetch shortcut
//
// Everything a reader takes from the network goes through the strict
// parsers here, and every path is built by the helpers here from validated
// hex only, so nothing untrusted can name a path outside the fixed shapes.
package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/txboot/txboot/txstore/sign"
)

// Sentinel errors, for errors.Is.
var (
	// ErrNotRepo: the config file is not ConfigMarker.
	ErrNotRepo = errors.New("not a txboot repository (format 1)")
	// ErrBadIndex: index.json or index.sig is malformed.
	ErrBadIndex = errors.New("bad repository index")
	// ErrBadTable: an object table is malformed.
	ErrBadTable = errors.New("bad object table")
	// ErrBadHash: not 64 lowercase hex digits (or not "sha256:" + that).
	ErrBadHash = errors.New("bad hash")
)

// Fixed names and limits.
const (
	// ConfigMarker is the whole content of REPO/config.
	ConfigMarker = "txboot-repo 1\n"
	// FormatVersion is Index.Format as publish writes it. Format 2 adds
	// the repository's identity, a sequence number, an expiry and the
	// length and SHA-256 of every metadata file (TUF's rollback, freeze
	// and endless-data defences); pull accepts only format 2, publish
	// reads format 1 and upgrades it.
	FormatVersion = 2
	// FormatV1 is the format before sequence, expiry and pinned metadata.
	FormatV1 = 1

	ConfigPath = "config"
	IndexPath  = "index.json"
	SigPath    = "index.sig"

	// MaxIndexSize bounds index.json and index.sig as read by a puller.
	MaxIndexSize = 32 << 20
	// MaxTableLine bounds one object-table line (a valid one is <= 108
	// bytes with its newline).
	MaxTableLine = 128
	// MaxSize bounds any size field (1 PiB): larger is nonsense, and it
	// keeps sums far from overflow.
	MaxSize = 1 << 50
	// MaxText bounds a version or kernel string.
	MaxText = 1024
	// MaxSignatures bounds the signatures on one tx or on the index.
	MaxSignatures = 64
	// MaxMetaFile bounds the pinned length and size of one metadata file
	// (manifest, object table, delta), compressed or not.
	MaxMetaFile = 1 << 30
)

const digestPrefix = "sha256:"

// IndexTx is one published tx in index.json.
type IndexTx struct {
	Digest     string           `json:"digest"` // "sha256:<64 hex>"
	Version    string           `json:"version"`
	Parent     string           `json:"parent,omitempty"`
	Kernels    []string         `json:"kernels,omitempty"`
	Created    time.Time        `json:"created"` // UTC
	Size       int64            `json:"size"`    // sum of regular file sizes
	Entries    int              `json:"entries"` // manifest entries
	Stored     int64            `json:"stored"`  // bytes of its objects as stored in the repo
	Signatures []sign.Signature `json:"signatures,omitempty"`
	// Image is the fs-verity digest ("sha256:<hex>") of the tx's sealed
	// image as the publishing store built it, and ImageSignatures sign
	// the pair (Digest, Image) (sign.SignImage). Both optional: a puller
	// builds the image itself and refuses the tx when it differs, so the
	// signed tx names exactly one image; without them it records its own
	// image unsigned.
	Image           string           `json:"image,omitempty"`
	ImageSignatures []sign.Signature `json:"image_signatures,omitempty"`
	// The metadata files a pull reads for this tx, pinned (format 2):
	// reads stop at Length, the bytes must hash to SHA256, and
	// decompression stops at Size.
	Manifest *FileRef `json:"manifest,omitempty"` // manifests/<hex>.zst
	Table    *FileRef `json:"table,omitempty"`    // txs/<hex>.objects.zst
	Delta    *FileRef `json:"delta,omitempty"`    // deltas/<hex>-<parent hex>.zst, if published
}

// FileRef pins one metadata file of the repository.
type FileRef struct {
	Length int64  `json:"length"` // bytes as served (zstd)
	SHA256 string `json:"sha256"` // hex SHA-256 of those bytes
	Size   int64  `json:"size"`   // bytes once decompressed
}

// Index is index.json.
type Index struct {
	Format int `json:"format"`
	// Repository is the repository's identity (32 lowercase hex, random
	// at its first format-2 publish): a device keeps its sequence floor
	// under it, whatever mirror URL serves it.
	Repository string `json:"repository,omitempty"`
	// Sequence grows by one with every publish; a device refuses an
	// index older than the newest it accepted (rollback).
	Sequence uint64    `json:"sequence,omitempty"`
	Updated  time.Time `json:"updated"`
	// Expires: a device refuses the index after this instant (freeze).
	Expires time.Time `json:"expires,omitzero"`
	Txs     []IndexTx `json:"txs"`
}

// Find returns the tx with digest d, or nil.
func (ix *Index) Find(d string) *IndexTx {
	for i := range ix.Txs {
		if ix.Txs[i].Digest == d {
			return &ix.Txs[i]
		}
	}
	return nil
}

// ValidHex reports whether s is 64 lowercase hex digits (a SHA-256).
func ValidHex(s string) bool { return len(s) == 64 && lowerHex(s) }

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// DigestHex returns the hex of a tx digest "sha256:<64 lowercase hex>".
func DigestHex(d string) (string, error) {
	h, ok := strings.CutPrefix(d, digestPrefix)
	if !ok || !ValidHex(h) {
		return "", fmt.Errorf("digest %q: %w", clip(d), ErrBadHash)
	}
	return h, nil
}

func checkHex(h string) error {
	if !ValidHex(h) {
		return fmt.Errorf("%q: %w", clip(h), ErrBadHash)
	}
	return nil
}

// ObjectPath is "objects/<ab>/<hex>" or, compressed, "objects/<ab>/<hex>.zst".
func ObjectPath(h string, compressed bool) (string, error) {
	if err := checkHex(h); err != nil {
		return "", err
	}
	p := "objects/" + h[:2] + "/" + h
	if compressed {
		p += ".zst"
	}
	return p, nil
}

// ManifestPath is "manifests/<hex>.zst" for a tx digest's hex.
func ManifestPath(h string) (string, error) {
	if err := checkHex(h); err != nil {
		return "", err
	}
	return "manifests/" + h + ".zst", nil
}

// TablePath is "txs/<hex>.objects.zst" for a tx digest's hex.
func TablePath(h string) (string, error) {
	if err := checkHex(h); err != nil {
		return "", err
	}
	return "txs/" + h + ".objects.zst", nil
}

// ParseConfig checks REPO/config.
func ParseConfig(data []byte) error {
	if string(data) != ConfigMarker {
		return fmt.Errorf("config %q: %w", clip(string(data)), ErrNotRepo)
	}
	return nil
}

// clip shortens untrusted text for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// checkText: one line of printable UTF-8, 1..MaxText bytes.
func checkText(what, s string) error {
	if s == "" || len(s) > MaxText || !utf8.ValidString(s) {
		return fmt.Errorf("%s %q: empty, too long or not UTF-8", what, clip(s))
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("%s %q: control character", what, clip(s))
		}
	}
	return nil
}

// checkKernel: a kernel version names a directory under lib/modules.
func checkKernel(k string) error {
	if err := checkText("kernel", k); err != nil {
		return err
	}
	if k == "." || k == ".." || strings.ContainsAny(k, "/ ") || len(k) > 255 {
		return fmt.Errorf("kernel %q: not a kernel version", clip(k))
	}
	return nil
}

func checkSigs(sigs []sign.Signature) error {
	if len(sigs) > MaxSignatures {
		return fmt.Errorf("%d signatures, at most %d", len(sigs), MaxSignatures)
	}
	for _, s := range sigs {
		if len(s.KeyID) != 32 || !lowerHex(s.KeyID) {
			return fmt.Errorf("signature key_id %q: not 32 lowercase hex", clip(s.KeyID))
		}
		if len(s.Sig) != 64 {
			return fmt.Errorf("signature by %s: %d bytes, want 64", s.KeyID, len(s.Sig))
		}
	}
	return nil
}

func utcOnly(t time.Time) bool {
	_, off := t.Zone()
	return off == 0 && !t.IsZero()
}

func checkTx(t *IndexTx, format int) error {
	if _, err := DigestHex(t.Digest); err != nil {
		return err
	}
	if err := checkText("version", t.Version); err != nil {
		return err
	}
	if t.Parent != "" {
		if _, err := DigestHex(t.Parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
		if t.Parent == t.Digest {
			return errors.New("parent is the tx itself")
		}
	}
	for _, k := range t.Kernels {
		if err := checkKernel(k); err != nil {
			return err
		}
	}
	if !utcOnly(t.Created) {
		return fmt.Errorf("created %s: not a UTC time", t.Created.Format(time.RFC3339Nano))
	}
	if t.Size < 0 || t.Size > MaxSize || t.Stored < 0 || t.Stored > MaxSize {
		return fmt.Errorf("size %d, stored %d: out of range", t.Size, t.Stored)
	}
	if t.Entries < 1 || t.Entries > MaxSize {
		return fmt.Errorf("entries %d: out of range", t.Entries)
	}
	if err := checkSigs(t.Signatures); err != nil {
		return err
	}
	if err := checkImage(t, format); err != nil {
		return err
	}
	return checkRefs(t, format)
}

// checkImage: an image digest is "sha256:<64 hex>" (format 2 only), and
// image signatures come only with an image.
func checkImage(t *IndexTx, format int) error {
	if t.Image == "" {
		if len(t.ImageSignatures) > 0 {
			return errors.New("image signatures without an image")
		}
		return nil
	}
	if format == FormatV1 {
		return errors.New("format 1 has no image")
	}
	if _, err := DigestHex(t.Image); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := checkSigs(t.ImageSignatures); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	return nil
}

// checkRefs: format 2 pins the manifest and the table of every tx, and a
// delta only with a parent; format 1 has no pins.
func checkRefs(t *IndexTx, format int) error {
	if format == FormatV1 {
		if t.Manifest != nil || t.Table != nil || t.Delta != nil {
			return errors.New("format 1 has no pinned metadata")
		}
		return nil
	}
	if t.Manifest == nil || t.Table == nil {
		return errors.New("manifest or table not pinned")
	}
	if t.Delta != nil && t.Parent == "" {
		return errors.New("a delta without a parent")
	}
	for _, r := range []struct {
		name string
		ref  *FileRef
		min  int64 // an empty table is 0 bytes of text
	}{{"manifest", t.Manifest, 1}, {"table", t.Table, 0}, {"delta", t.Delta, 1}} {
		if r.ref == nil {
			continue
		}
		if err := r.ref.check(r.min); err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
	}
	return nil
}

func (r *FileRef) check(minSize int64) error {
	if r.Length < 1 || r.Length > MaxMetaFile || r.Size < minSize || r.Size > MaxMetaFile {
		return fmt.Errorf("length %d, size %d: out of range", r.Length, r.Size)
	}
	return checkHex(r.SHA256)
}

// NewFileRef pins data (a metadata file as served) whose content is size
// bytes once decompressed.
func NewFileRef(data []byte, size int) *FileRef {
	sum := sha256.Sum256(data)
	return &FileRef{Length: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Size: int64(size)}
}

// Matches reports whether data is the pinned file.
func (r *FileRef) Matches(data []byte) bool {
	sum := sha256.Sum256(data)
	return int64(len(data)) == r.Length && hex.EncodeToString(sum[:]) == r.SHA256
}

// txLess is the index order: created, then digest.
func txLess(a, b *IndexTx) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	return a.Digest < b.Digest
}

func checkIndex(ix *Index) error {
	switch ix.Format {
	case FormatV1:
		if ix.Repository != "" || ix.Sequence != 0 || !ix.Expires.IsZero() {
			return fmt.Errorf("%w: format 1 has no repository, sequence or expiry", ErrBadIndex)
		}
	case FormatVersion:
		if len(ix.Repository) != 32 || !lowerHex(ix.Repository) {
			return fmt.Errorf("%w: repository %q: not 32 lowercase hex", ErrBadIndex, clip(ix.Repository))
		}
		if ix.Sequence < 1 || ix.Sequence > MaxSize {
			return fmt.Errorf("%w: sequence %d out of range", ErrBadIndex, ix.Sequence)
		}
		// Bounded, so that a stolen key cannot sign an index that keeps a
		// frozen device quiet for years.
		if !utcOnly(ix.Expires) || !ix.Expires.After(ix.Updated) || ix.Expires.Sub(ix.Updated) > MaxExpires {
			return fmt.Errorf("%w: expires %s: not a UTC time after updated, within %v of it", ErrBadIndex, ix.Expires.Format(time.RFC3339), MaxExpires)
		}
	default:
		return fmt.Errorf("%w: format %d, want %d", ErrBadIndex, ix.Format, FormatVersion)
	}
	if !utcOnly(ix.Updated) {
		return fmt.Errorf("%w: updated: not a UTC time", ErrBadIndex)
	}
	seen := make(map[string]bool, len(ix.Txs))
	for i := range ix.Txs {
		t := &ix.Txs[i]
		if err := checkTx(t, ix.Format); err != nil {
			return fmt.Errorf("%w: tx %d: %w", ErrBadIndex, i, err)
		}
		if seen[t.Digest] {
			return fmt.Errorf("%w: tx %s listed twice", ErrBadIndex, t.Digest)
		}
		seen[t.Digest] = true
		if i > 0 && !txLess(&ix.Txs[i-1], t) {
			return fmt.Errorf("%w: tx %s out of order (created, then digest)", ErrBadIndex, t.Digest)
		}
	}
	return nil
}

// decodeStrict decodes exactly one JSON value with no unknown fields.
func decodeStrict(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if len(bytes.TrimLeft(data[d.InputOffset():], " \t\r\n")) > 0 {
		return errors.New("data after the JSON value")
	}
	return nil
}

// ParseIndex decodes and checks index.json: format 1, no unknown fields,
// valid digests, no duplicates, sorted, sane sizes and texts.
func ParseIndex(data []byte) (*Index, error) {
	if len(data) > MaxIndexSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadIndex, len(data), MaxIndexSize)
	}
	var ix Index
	if err := decodeStrict(data, &ix); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadIndex, err)
	}
	if err := checkIndex(&ix); err != nil {
		return nil, err
	}
	return &ix, nil
}

// EncodeIndex sorts ix.Txs into index order and returns index.json's bytes
// (2-space indent, final newline). It refuses what ParseIndex would.
func EncodeIndex(ix *Index) ([]byte, error) {
	for i := range ix.Txs {
		ix.Txs[i].Created = ix.Txs[i].Created.UTC()
	}
	ix.Updated, ix.Expires = ix.Updated.UTC(), ix.Expires.UTC()
	sort.SliceStable(ix.Txs, func(i, j int) bool { return txLess(&ix.Txs[i], &ix.Txs[j]) })
	if err := checkIndex(ix); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(ix, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadIndex, err)
	}
	return append(b, '\n'), nil
}

// ParseSig decodes index.sig: a JSON array of 1..MaxSignatures signatures.
func ParseSig(data []byte) ([]sign.Signature, error) {
	if len(data) > MaxIndexSize {
		return nil, fmt.Errorf("%w: index.sig: %d bytes", ErrBadIndex, len(data))
	}
	var sigs []sign.Signature
	if err := decodeStrict(data, &sigs); err != nil {
		return nil, fmt.Errorf("%w: index.sig: %w", ErrBadIndex, err)
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("%w: index.sig: no signatures", ErrBadIndex)
	}
	if err := checkSigs(sigs); err != nil {
		return nil, fmt.Errorf("%w: index.sig: %w", ErrBadIndex, err)
	}
	return sigs, nil
}

// EncodeSig returns index.sig's bytes.
func EncodeSig(sigs []sign.Signature) ([]byte, error) {
	if len(sigs) == 0 {
		return nil, fmt.Errorf("%w: index.sig: no signatures", ErrBadIndex)
	}
	if err := checkSigs(sigs); err != nil {
		return nil, fmt.Errorf("%w: index.sig: %w", ErrBadIndex, err)
	}
	b, err := json.MarshalIndent(sigs, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// TableEntry is one line of a tx's object table:
// "<hex> <size> <r|z> <stored-size>\n".
type TableEntry struct {
	Hash       string // 64 hex, SHA-256 of the content
	Size       int64  // content size, >= 1 (empty files are never stored)
	Compressed bool   // z: objects/<ab>/<hex>.zst; r: objects/<ab>/<hex>
	Stored     int64  // bytes of the stored file (== Size when raw)
}

// Path is where the entry's object lives in the repository.
func (e TableEntry) Path() (string, error) { return ObjectPath(e.Hash, e.Compressed) }

func checkEntry(e TableEntry) error {
	if err := checkHex(e.Hash); err != nil {
		return err
	}
	if e.Size < 1 || e.Size > MaxSize {
		return fmt.Errorf("%s: size %d out of range", e.Hash, e.Size)
	}
	if e.Compressed {
		// Publish keeps a .zst only when it is smaller.
		if e.Stored < 1 || e.Stored >= e.Size {
			return fmt.Errorf("%s: compressed size %d for %d bytes", e.Hash, e.Stored, e.Size)
		}
	} else if e.Stored != e.Size {
		return fmt.Errorf("%s: raw stored size %d != size %d", e.Hash, e.Stored, e.Size)
	}
	return nil
}

// EncodeTable returns the table's text (uncompressed): entries sorted by
// hash, each hash once.
func EncodeTable(entries []TableEntry) ([]byte, error) {
	es := append([]TableEntry(nil), entries...)
	sort.Slice(es, func(i, j int) bool { return es[i].Hash < es[j].Hash })
	var b bytes.Buffer
	for i, e := range es {
		if err := checkEntry(e); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadTable, err)
		}
		if i > 0 && es[i-1].Hash == e.Hash {
			return nil, fmt.Errorf("%w: %s listed twice", ErrBadTable, e.Hash)
		}
		k := byte('r')
		if e.Compressed {
			k = 'z'
		}
		fmt.Fprintf(&b, "%s %d %c %d\n", e.Hash, e.Size, k, e.Stored)
	}
	return b.Bytes(), nil
}

// parseSize reads a canonical decimal (no sign, no leading zero).
func parseSize(s string) (int64, bool) {
	if s == "" || len(s) > 16 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// ParseTable decodes a table's text (uncompressed). It accepts only what
// EncodeTable writes: every line complete and canonical, sorted by hash,
// no duplicates.
func ParseTable(data []byte) ([]TableEntry, error) {
	var es []TableEntry
	for n := 1; len(data) > 0; n++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return nil, fmt.Errorf("%w: line %d: no final newline", ErrBadTable, n)
		}
		if i+1 > MaxTableLine {
			return nil, fmt.Errorf("%w: line %d: longer than %d bytes", ErrBadTable, n, MaxTableLine)
		}
		line := string(data[:i])
		data = data[i+1:]
		f := strings.Split(line, " ")
		if len(f) != 4 || (f[2] != "r" && f[2] != "z") {
			return nil, fmt.Errorf("%w: line %d: %q: want \"<hex> <size> <r|z> <stored>\"", ErrBadTable, n, clip(line))
		}
		size, ok1 := parseSize(f[1])
		stored, ok2 := parseSize(f[3])
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: line %d: %q: bad number", ErrBadTable, n, clip(line))
		}
		e := TableEntry{Hash: f[0], Size: size, Compressed: f[2] == "z", Stored: stored}
		if err := checkEntry(e); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrBadTable, n, err)
		}
		if len(es) > 0 && es[len(es)-1].Hash >= e.Hash {
			return nil, fmt.Errorf("%w: line %d: %s out of order or repeated", ErrBadTable, n, e.Hash)
		}
		es = append(es, e)
	}
	return es, nil
}
