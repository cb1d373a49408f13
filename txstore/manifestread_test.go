package txstore_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/testtree"
)

// maxBombAlloc bounds the bytes one manifest read may allocate when handed
// a zstd bomb: generous next to the decoder's window (16 MiB), far below
// the GBs a bomb decodes to.
const maxBombAlloc = 128 << 20

// bombSize is what each bomb decodes to: 1 GiB.
const bombSize = 1 << 30

// bomb is a small zstd object that decodes to far more than it is.
type bomb struct {
	name string
	z    []byte
	// manifest: its text starts with the manifest header, so a scan
	// reports it (the others are just not manifests).
	manifest bool
	// large: ErrManifestTooLarge wherever it is read.
	large bool
}

// zstdStream encodes prefix and then unit repeated up to total bytes in all,
// streaming (the total is never in memory); declare writes the total in the
// frame header.
func zstdStream(prefix string, unit string, total int64, declare bool) []byte {
	var out bytes.Buffer
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		panic(err)
	}
	if declare {
		enc.ResetContentSize(&out, total)
	} else {
		enc.Reset(&out)
	}
	enc.Write([]byte(prefix))
	chunk := []byte(strings.Repeat(unit, (1<<20)/len(unit)+1)[:1<<20])
	for left := total - int64(len(prefix)); left > 0; left -= int64(len(chunk)) {
		enc.Write(chunk[:min(left, int64(len(chunk)))])
	}
	if err := enc.Close(); err != nil {
		panic(err)
	}
	return out.Bytes()
}

// bombs are built once per test binary (about a second in all).
var bombs = sync.OnceValue(func() []bomb {
	const head = manifest.Header + "\nd . 0755 0 0\n"
	const line = "d a 0755 0 0\n"
	// One frame that is a plausible start of a manifest, then 1023 more
	// frames of lines, each declaring its own modest size.
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	lines := strings.Repeat(line, (1<<20)/len(line))
	frames := enc.EncodeAll([]byte(head+lines), nil)
	next := enc.EncodeAll([]byte(lines), nil)
	for range 1023 {
		frames = append(frames, next...)
	}
	return []bomb{
		{name: "zeros", z: zstdStream("", "\x00", bombSize, false)},
		{name: "zeros, size declared", z: zstdStream("", "\x00", bombSize, true)},
		{name: "header then zeros", z: zstdStream(head, "\x00", bombSize, false), manifest: true},
		{name: "header then lines", z: zstdStream(head, line, bombSize, false), manifest: true, large: true},
		{name: "header then lines, size declared", z: zstdStream(head, line, bombSize, true), manifest: true, large: true},
		{name: "many frames", z: frames, manifest: true},
	}
})

// putObject places z in the CAS of the store at root as a 0444 root:root
// object, the key form manifests have, and returns its key. The store must
// not be open (its directory cache would miss a new fan-out directory).
func putObject(t *testing.T, root string, z []byte) cas.Key {
	t.Helper()
	k := cas.NewKey(sha256.Sum256(z), 0o444, 0, 0)
	p := filepath.Join(root, txstore.DirName, "objects", k.RelPath())
	must(t, os.MkdirAll(filepath.Dir(p), 0o700))
	must(t, os.WriteFile(p, z, 0o444))
	return k
}

// allocated is the bytes fn allocates (TotalAlloc, which includes
// whatever was freed again: an upper bound on its peak heap).
func allocated(fn func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// checkBombErr: err is ErrBadManifest (ErrManifestTooLarge for a large
// bomb) naming the object, and reading allocated little.
func checkBombErr(t *testing.T, b bomb, k cas.Key, err error, alloc uint64) {
	t.Helper()
	t.Logf("%d compressed bytes: %d bytes allocated: %v", len(b.z), alloc, err)
	if !errors.Is(err, txstore.ErrBadManifest) {
		t.Errorf("got %v, want ErrBadManifest", err)
	}
	if b.large && !errors.Is(err, txstore.ErrManifestTooLarge) {
		t.Errorf("got %v, want ErrManifestTooLarge", err)
	}
	if err != nil && !strings.Contains(err.Error(), k.RelPath()) {
		t.Errorf("%q does not name objects/%s", err, k.RelPath())
	}
	if alloc > maxBombAlloc {
		t.Errorf("allocated %d MiB reading it, want at most %d MiB", alloc>>20, maxBombAlloc>>20)
	}
}

// TestManifestBomb: a manifest object that is a zstd bomb fails Manifest
// (with and without the tx's entry count) and ManifestBytes with
// ErrBadManifest naming it, after allocating little, whatever it holds.
func TestManifestBomb(t *testing.T) {
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	must(t, err)
	s.Close()
	keys := map[string]cas.Key{}
	for _, b := range bombs() {
		keys[b.name] = putObject(t, root, b.z)
	}
	s, err = txstore.Open(root, txstore.Options{ReadOnly: true})
	must(t, err)
	defer s.Close()
	digest := "sha256:" + strings.Repeat("0", 64)
	for _, b := range bombs() {
		k := keys[b.name]
		reads := []struct {
			name string
			read func() error
		}{
			{"Manifest, 3 entries", func() error {
				_, err := s.Manifest(&txstore.Tx{ID: 9, Manifest: k.Hash.String(), Digest: digest, Entries: 3})
				return err
			}},
			{"Manifest, entries unknown", func() error {
				_, err := s.Manifest(&txstore.Tx{ID: 9, Manifest: k.Hash.String(), Digest: digest})
				return err
			}},
			{"ManifestBytes", func() error { _, err := s.ManifestBytes(k.Hash.String(), digest); return err }},
		}
		for _, r := range reads {
			t.Run(b.name+"/"+r.name, func(t *testing.T) {
				var err error
				alloc := allocated(func() { err = r.read() })
				checkBombErr(t, b, k, err, alloc)
			})
		}
	}
}

// TestManifestBombScan: with bombs among the objects and store.db damaged,
// FindManifest still finds a tx's manifest, and fsck --repair's Rebuild
// finishes, recovers every tx and lists each bomb that starts as a
// manifest in Skipped (the others are just not manifests); both allocate
// little.
func TestManifestBombScan(t *testing.T) {
	root, txs := store3(t)
	must(t, testtree.DamageDB(dbPath(root), testtree.DamageGarbage))
	keys := map[string]cas.Key{}
	for _, b := range bombs() {
		keys[b.name] = putObject(t, root, b.z)
	}

	ro, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	must(t, err)
	var m *manifest.Manifest
	alloc := allocated(func() { m, _, err = ro.FindManifest(txs[1].Digest, 0) })
	t.Logf("FindManifest: %d bytes allocated", alloc)
	if err != nil || m.Digest() != txs[1].Digest {
		t.Errorf("FindManifest %s: %v", txs[1].Digest, err)
	}
	if alloc > maxBombAlloc {
		t.Errorf("FindManifest allocated %d MiB, want at most %d MiB", alloc>>20, maxBombAlloc>>20)
	}
	_, _, err = ro.FindManifest("sha256:"+strings.Repeat("0", 64), 0)
	if !errors.Is(err, txstore.ErrNoManifest) || !strings.Contains(err.Error(), "skipped") {
		t.Errorf("FindManifest of an unknown digest: %v, want ErrNoManifest saying what it skipped", err)
	}
	ro.Close()

	s, err := txstore.Open(root, txstore.Options{NoCleanup: true})
	must(t, err)
	defer s.Close()
	var rep *txstore.RebuildReport
	alloc = allocated(func() { rep, err = call2(s.Rebuild) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Rebuild: %d bytes allocated; skipped %q", alloc, rep.Skipped)
	if alloc > maxBombAlloc {
		t.Errorf("Rebuild allocated %d MiB, want at most %d MiB", alloc>>20, maxBombAlloc>>20)
	}
	if len(rep.Txs) != len(txs) {
		t.Fatalf("rebuilt %d txs, want %d", len(rep.Txs), len(txs))
	}
	for i, tx := range rep.Txs {
		if tx.Digest != txs[i].Digest {
			t.Errorf("tx %d rebuilt with %s, want %s", tx.ID, tx.Digest, txs[i].Digest)
		}
	}
	for _, b := range bombs() {
		named := strings.Contains(strings.Join(rep.Skipped, "\n"), keys[b.name].RelPath())
		if named != b.manifest {
			t.Errorf("%s: named in Skipped %v, want %v", b.name, named, b.manifest)
		}
	}
}

// TestManifestReadBounds: real manifests read back exactly (one declaring
// its size, and a tiny one whose frame does not), and the entry count of
// the record bounds what is read.
func TestManifestReadBounds(t *testing.T) {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	tiny := []byte(manifest.Header + "\nd . 0755 0 0\n")
	big := syntheticManifest(2000)
	const unit = "d a 0755 0 0\n"
	cases := []struct {
		name    string
		raw     []byte // the manifest's text
		z       []byte // its object; nil: enc.EncodeAll(raw)
		entries int
		want    error // nil: read back as raw
		msg     string
	}{
		{"tiny, no declared size", tiny, nil, 1, nil, ""},
		{"tiny, entries unknown", tiny, nil, 0, nil, ""},
		{"2000 entries", big, nil, 2000, nil, ""},
		{"2000 entries, entries unknown", big, nil, 0, nil, ""},
		{"2000 entries, record says 1999", big, nil, 1999, txstore.ErrManifestTooLarge, "more than 1999 entries"},
		{"two frames", big, append(enc.EncodeAll(big[:len(big)/2], nil), enc.EncodeAll(big[len(big)/2:], nil)...), 2000, txstore.ErrBadManifest, "its zstd frame declares"},
		{"not zstd", big, big, 2000, zstd.ErrMagicMismatch, "not a manifest"},
		{"a line too long", []byte(manifest.Header + "\nd " + strings.Repeat("a", manifest.MaxLineLen) + " 0755 0 0\n"), nil, 0, txstore.ErrBadManifest, "line 2 longer than"},
		{"too many lines", []byte(manifest.Header + "\n" + strings.Repeat(unit, manifest.MaxEntries+1)), nil, 0, txstore.ErrManifestTooLarge, "more than 2097152 entries"},
	}
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	must(t, err)
	s.Close()
	keys := make([]cas.Key, len(cases))
	for i, c := range cases {
		if c.z == nil {
			cases[i].z = enc.EncodeAll(c.raw, nil)
		}
		keys[i] = putObject(t, root, cases[i].z)
	}
	s, err = txstore.Open(root, txstore.Options{ReadOnly: true})
	must(t, err)
	defer s.Close()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tx := &txstore.Tx{ID: 9, Manifest: keys[i].Hash.String(), Digest: manifest.Digest(c.raw), Entries: c.entries}
			m, err := s.Manifest(tx)
			if c.want == nil {
				if err != nil || !bytes.Equal(m.Encode(), c.raw) {
					t.Fatalf("Manifest: %v", err)
				}
				raw, err := s.ManifestBytes(tx.Manifest, tx.Digest)
				if err != nil || !bytes.Equal(raw, c.raw) {
					t.Fatalf("ManifestBytes: %v", err)
				}
				return
			}
			t.Log(err)
			if !errors.Is(err, c.want) || !errors.Is(err, txstore.ErrBadManifest) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %v saying %q", err, c.want, c.msg)
			}
		})
	}
}

// syntheticManifest is the canonical text of a tree of n entries:
// packages of 100 files with paths and sizes like a /usr's, built in
// canonical order so that its first n entries are a tree.
func syntheticManifest(n int) []byte {
	m := &manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0o755}, {Path: "share", Type: manifest.Dir, Mode: 0o755}}}
	for i := 0; len(m.Entries) < n; i++ {
		dir := fmt.Sprintf("share/package-%05d", i)
		m.Entries = append(m.Entries, manifest.Entry{Path: dir, Type: manifest.Dir, Mode: 0o755},
			manifest.Entry{Path: dir + "/lib", Type: manifest.Dir, Mode: 0o755})
		for j := 0; j < 98; j++ {
			e := manifest.Entry{Path: fmt.Sprintf("%s/lib/file-%04d.so.%d", dir, j, i%7), Type: manifest.File, Mode: 0o644, Size: int64(i*j + 1)}
			e.Hash = sha256.Sum256([]byte(e.Path))
			m.Entries = append(m.Entries, e)
		}
	}
	m.Entries = m.Entries[:n]
	return m.Encode()
}

// BenchmarkManifestRead: Store.Manifest of a 125k-entry manifest (about
// the size of a Debian /usr), bytes allocated per read included.
func BenchmarkManifestRead(b *testing.B) {
	raw := syntheticManifest(125000)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	z := enc.EncodeAll(raw, nil)
	root := b.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	k := cas.NewKey(sha256.Sum256(z), 0o444, 0, 0)
	p := filepath.Join(root, txstore.DirName, "objects", k.RelPath())
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(p, z, 0o444); err != nil {
		b.Fatal(err)
	}
	s, err = txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	tx := &txstore.Tx{ID: 1, Manifest: hex.EncodeToString(k.Hash[:]), Digest: manifest.Digest(raw), Entries: 125000}
	b.Logf("manifest: %d entries, %d bytes, %d compressed", tx.Entries, len(raw), len(z))
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Manifest(tx); err != nil {
			b.Fatal(err)
		}
	}
}
