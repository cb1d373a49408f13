package repo

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/failpoint"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
	"golang.org/x/sys/unix"
)

// TestMain lets the test binary act as a publishing child that kills
// itself at a named failpoint (TXBOOT_FAILPOINTS).
func TestMain(m *testing.M) {
	if root := os.Getenv("TXBOOT_PUBLISH_ROOT"); root != "" {
		os.Exit(publishChild(root))
	}
	os.Exit(m.Run())
}

func publishChild(root string) int {
	s, err := txstore.Open(root, txstore.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	key, err := sign.LoadPrivateKey(os.Getenv("TXBOOT_PUBLISH_KEY"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The parent's TXBOOT_FAILPOINTS kills it at a step.
	_, err = Publish(s, os.Getenv("TXBOOT_PUBLISH_REPO"), []uint64{2}, PublishOptions{Key: key, Workers: 2})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// Files whose storage the format decides: compressible and not, below
// and above the streaming threshold, and below the 512-byte minimum.
func extraFiles(seed int64) []testtree.File {
	rng := rand.New(rand.NewSource(seed))
	random := func(n int) string {
		b := make([]byte, n)
		rng.Read(b)
		return string(b)
	}
	return []testtree.File{
		{Path: "share/big-text", Data: strings.Repeat("compressible line of text\n", 60000), Mode: 0o644}, // 1.5 MB, streamed
		{Path: "share/big-random", Data: random(smallObject + 1000), Mode: 0o644},                         // streamed, stays raw
		{Path: "share/small-text", Data: strings.Repeat("abc", 700), Mode: 0o644},                         // EncodeAll, zst
		{Path: "share/small-random", Data: random(3000), Mode: 0o644},                                     // raw
		{Path: "share/tiny-text", Data: strings.Repeat("a", 511), Mode: 0o644},                            // < 512: raw
		{Path: "share/seed", Data: fmt.Sprint(seed), Mode: 0o644},
	}
}

// newStore commits n trees (tx i+1 from seed i; tx 2 shares most of tx 1).
func newStore(t *testing.T, n int, o txstore.CommitOptions) string {
	t.Helper()
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < n; i++ {
		src := t.TempDir()
		files := append(testtree.Sample(), extraFiles(1)...)
		files = append(files, testtree.File{Path: "lib/gen", Data: strings.Repeat(fmt.Sprint(i), 1000), Mode: 0o644})
		if err := testtree.Write(src, files, time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		o.Summary = fmt.Sprintf("release %d", i+1)
		if _, _, err := s.Commit(src, o); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func openStore(t *testing.T, root string, write bool) *txstore.Store {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{ReadOnly: !write})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func publish(t *testing.T, root, repo string, ids []uint64, o PublishOptions) *PublishStats {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{ReadOnly: o.Key == nil})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := Publish(s, repo, ids, o)
	if err != nil {
		t.Fatalf("publish %v: %v", ids, err)
	}
	return st
}

func newKey(t *testing.T, dir, name string) (ed25519.PrivateKey, []sign.PublicKey, string) {
	t.Helper()
	priv, pub, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kp := filepath.Join(dir, name+".key")
	if err := os.WriteFile(kp, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	pp := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(pp, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := sign.LoadPrivateKey(kp)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := sign.LoadPublicKey(pp)
	if err != nil {
		t.Fatal(err)
	}
	return k, []sign.PublicKey{pk}, kp
}

func unzstd(t *testing.T, data []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := d.DecodeAll(data, nil)
	if err != nil {
		t.Fatalf("zstd: %v", err)
	}
	return out
}

// checkRepo reads the repository as a puller would and checks that the
// index describes a complete repository: every manifest, table and object
// it references is there and matches. With keys, index.sig must verify.
// It returns the index (nil when there is none yet).
func checkRepo(t *testing.T, repo string, keys []sign.PublicKey) *Index {
	t.Helper()
	read := func(rel string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(repo, rel))
		if err != nil {
			t.Fatalf("repository incomplete: %v", err)
		}
		return b
	}
	if err := ParseConfig(read(ConfigPath)); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(repo, IndexPath))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	ix, err := ParseIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	if keys != nil {
		sigs, err := ParseSig(read(SigPath))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sign.VerifyIndex(keys, data, sigs); err != nil {
			t.Fatalf("index.sig: %v", err)
		}
	}
	for _, tx := range ix.Txs {
		h, _ := DigestHex(tx.Digest)
		mp, _ := ManifestPath(h)
		raw := unzstd(t, read(mp))
		if manifest.Digest(raw) != tx.Digest {
			t.Fatalf("%s: digest mismatch", mp)
		}
		m, err := manifest.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		tp, _ := TablePath(h)
		table, err := ParseTable(unzstd(t, read(tp)))
		if err != nil {
			t.Fatal(err)
		}
		byHash := map[string]TableEntry{}
		var stored int64
		for _, e := range table {
			byHash[e.Hash] = e
			stored += e.Stored
		}
		if stored != tx.Stored {
			t.Fatalf("tx %s: stored %d, table sums to %d", tx.Digest, tx.Stored, stored)
		}
		used := map[string]bool{}
		var size int64
		for _, e := range m.Entries {
			if e.Type != manifest.File {
				continue
			}
			size += e.Size
			if e.Size == 0 {
				continue
			}
			hx := e.Hash.String()
			used[hx] = true
			te, ok := byHash[hx]
			if !ok || te.Size != e.Size {
				t.Fatalf("tx %s: %s (%s) not in its object table as %d bytes", tx.Digest, e.Path, hx, e.Size)
			}
			p, _ := te.Path()
			body := read(p)
			if int64(len(body)) != te.Stored {
				t.Fatalf("%s: %d bytes, table says %d", p, len(body), te.Stored)
			}
			if te.Compressed {
				body = unzstd(t, body)
			}
			if sha256.Sum256(body) != e.Hash {
				t.Fatalf("%s: content does not match", p)
			}
			other := p + ".zst"
			if te.Compressed {
				other = strings.TrimSuffix(p, ".zst")
			}
			if _, err := os.Lstat(filepath.Join(repo, other)); err == nil {
				t.Fatalf("both %s and %s exist", p, other)
			}
		}
		if len(used) != len(table) || size != tx.Size || len(m.Entries) != tx.Entries {
			t.Fatalf("tx %s: table %d lines for %d contents; size %d/%d; entries %d/%d", tx.Digest, len(table), len(used), size, tx.Size, len(m.Entries), tx.Entries)
		}
	}
	return ix
}

// repoFiles lists every file of the repository with its inode and mtime.
func repoFiles(t *testing.T, repo string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(repo, p)
		out[rel] = fmt.Sprintf("%d %d.%d", st.Ino, st.Mtim.Sec, st.Mtim.Nsec)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func noTemps(t *testing.T, repo string) {
	t.Helper()
	for rel := range repoFiles(t, repo) {
		if strings.HasPrefix(filepath.Base(rel), tmpPrefix) {
			t.Fatalf("temp file left: %s", rel)
		}
	}
}

func objectName(t *testing.T, data string) (raw, zst string) {
	t.Helper()
	sum := sha256.Sum256([]byte(data))
	h := hex.EncodeToString(sum[:])
	a, _ := ObjectPath(h, false)
	b, _ := ObjectPath(h, true)
	return a, b
}

func exists(repo, rel string) bool {
	_, err := os.Lstat(filepath.Join(repo, rel))
	return err == nil
}

func TestPublishSmallStore(t *testing.T) {
	root := newStore(t, 1, txstore.CommitOptions{})
	repo := filepath.Join(t.TempDir(), "repo")
	now := time.Date(2026, 12, 1, 22, 0, 0, 0, time.UTC)
	st := publish(t, root, repo, []uint64{1}, PublishOptions{Now: func() time.Time { return now }})
	ix := checkRepo(t, repo, nil)
	if len(ix.Txs) != 1 || !ix.Updated.Equal(now) {
		t.Fatalf("index %+v", ix)
	}
	s := openStore(t, root, false)
	tx, _ := s.Get(1)
	e := ix.Txs[0]
	if e.Digest != tx.Digest || e.Version != "release 1" || e.Parent != "" || len(e.Kernels) != 1 || e.Kernels[0] != "6.1.0-test" ||
		!e.Created.Equal(tx.Created) || e.Size != tx.Bytes || e.Entries != tx.Entries || e.Signatures != nil {
		t.Fatalf("entry %+v for %+v", e, tx)
	}
	if !st.IndexWritten || st.IndexSigned || st.NewObjects == 0 || st.SkippedObjects != 0 || len(st.Txs) != 1 || !st.Txs[0].New {
		t.Fatalf("stats %+v", st)
	}
	if exists(repo, SigPath) {
		t.Fatal("index.sig written without a key")
	}
	// The format's compression rule, object by object.
	ex := extraFiles(1)
	for _, c := range []struct {
		data string
		zst  bool
	}{{ex[0].Data, true}, {ex[1].Data, false}, {ex[2].Data, true}, {ex[3].Data, false}, {ex[4].Data, false}, {"#!shell\n", false}} {
		raw, zst := objectName(t, c.data)
		if exists(repo, zst) != c.zst || exists(repo, raw) == c.zst {
			t.Errorf("object of %d bytes: zst=%v raw=%v, want zst=%v", len(c.data), exists(repo, zst), exists(repo, raw), c.zst)
		}
	}
	// Empty files are never stored.
	raw, zst := objectName(t, "")
	if exists(repo, raw) || exists(repo, zst) {
		t.Fatal("empty object stored")
	}
	// Repository files are for a web server: readable, not executable, no
	// setuid (bin/su is 4755 in the store).
	for rel := range repoFiles(t, repo) {
		fi, _ := os.Lstat(filepath.Join(repo, rel))
		if fi.Mode() != 0o644 && !(rel == LockName) {
			t.Errorf("%s: mode %v", rel, fi.Mode())
		}
	}
	if b, _ := os.ReadFile(filepath.Join(repo, ConfigPath)); string(b) != ConfigMarker {
		t.Fatalf("config %q", b)
	}
	noTemps(t, repo)
}

func TestPublishIncremental(t *testing.T) {
	root := newStore(t, 2, txstore.CommitOptions{})
	repo := t.TempDir()
	st1 := publish(t, root, repo, []uint64{1}, PublishOptions{})
	before := repoFiles(t, repo)
	time.Sleep(10 * time.Millisecond) // so a rewritten file would show a new mtime, not to wait for anything
	st2 := publish(t, root, repo, []uint64{2}, PublishOptions{})
	after := repoFiles(t, repo)
	for rel, id := range before {
		if rel == IndexPath {
			continue
		}
		if after[rel] != id {
			t.Errorf("%s was rewritten by the second publish (%s -> %s)", rel, id, after[rel])
		}
	}
	newObjs := 0
	for rel := range after {
		if _, ok := before[rel]; !ok && strings.HasPrefix(rel, "objects/") {
			newObjs++
		}
	}
	// tx 2 differs from tx 1 only in lib/gen (tx 1's is not used).
	if st2.NewObjects != 1 || newObjs != 1 || st2.SkippedObjects != st1.NewObjects-1 {
		t.Fatalf("second publish: %d new objects (%d files), %d skipped; first wrote %d", st2.NewObjects, newObjs, st2.SkippedObjects, st1.NewObjects)
	}
	if st2.BytesSkipped == 0 || st2.BytesWritten == 0 {
		t.Fatalf("stats %+v", st2)
	}
	ix := checkRepo(t, repo, nil)
	if len(ix.Txs) != 2 || ix.Txs[1].Parent != ix.Txs[0].Digest {
		t.Fatalf("index %+v", ix.Txs)
	}
	// Publishing again writes only a new index: the next sequence and a
	// new expiry (a cron job keeps a repository fresh this way).
	st3 := publish(t, root, repo, []uint64{1, 2}, PublishOptions{Now: func() time.Time { return ix.Updated.Add(time.Hour) }})
	if !st3.IndexWritten || st3.NewObjects != 0 || st3.Txs[0].New || st3.Txs[1].New {
		t.Fatalf("re-publish: %+v", st3)
	}
	ix3 := checkRepo(t, repo, nil)
	if ix3.Sequence != ix.Sequence+1 || !ix3.Expires.After(ix.Expires) || ix3.Repository != ix.Repository || jsonOf(t, ix3.Txs) != jsonOf(t, ix.Txs) {
		t.Fatalf("re-published index: sequence %d→%d, expires %v→%v, txs %s", ix.Sequence, ix3.Sequence, ix.Expires, ix3.Expires, jsonOf(t, ix3.Txs))
	}
	got := repoFiles(t, repo)
	delete(got, IndexPath)
	delete(after, IndexPath)
	if fmt.Sprint(got) != fmt.Sprint(after) {
		t.Fatal("re-publish touched files other than index.json")
	}
}

func TestPublishSigned(t *testing.T) {
	keyDir := t.TempDir()
	key, keys, _ := newKey(t, keyDir, "vendor")
	root := newStore(t, 2, txstore.CommitOptions{})
	repo := t.TempDir()
	st := publish(t, root, repo, []uint64{1}, PublishOptions{Key: key})
	if !st.IndexSigned || !st.Txs[0].Signed {
		t.Fatalf("stats %+v", st)
	}
	ix := checkRepo(t, repo, keys)
	if _, err := sign.VerifyTx(keys, ix.Txs[0].Digest, ix.Txs[0].Signatures); err != nil {
		t.Fatalf("tx signature: %v", err)
	}
	// The local record has it too.
	s := openStore(t, root, false)
	tx, _ := s.Get(1)
	if _, err := sign.VerifyTx(keys, tx.Digest, tx.Signatures); err != nil {
		t.Fatalf("local record: %v", err)
	}
	s.Close()

	// Without the key, a signed index is not changed.
	s2, err := txstore.Open(root, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := os.ReadFile(filepath.Join(repo, IndexPath))
	if _, err := Publish(s2, repo, []uint64{2}, PublishOptions{}); !errors.Is(err, ErrSigned) {
		t.Fatalf("unsigned publish into a signed repo = %v, want ErrSigned", err)
	}
	s2.Close()
	if idx2, _ := os.ReadFile(filepath.Join(repo, IndexPath)); !bytes.Equal(idx, idx2) {
		t.Fatal("refused publish changed index.json")
	}
	// ... nor is it refreshed: every publish writes a new index, which
	// needs the key.
	s2, _ = txstore.Open(root, txstore.Options{ReadOnly: true})
	if _, err := Publish(s2, repo, []uint64{1}, PublishOptions{}); !errors.Is(err, ErrSigned) {
		t.Fatalf("unsigned re-publish into a signed repo = %v, want ErrSigned", err)
	}
	s2.Close()
	publish(t, root, repo, []uint64{2}, PublishOptions{Key: key})
	ix = checkRepo(t, repo, keys)
	for _, e := range ix.Txs {
		if _, err := sign.VerifyTx(keys, e.Digest, e.Signatures); err != nil {
			t.Fatalf("tx %s: %v", e.Digest, err)
		}
	}
	// A second key adds its signature to an existing entry.
	key2, keys2, _ := newKey(t, keyDir, "second")
	st = publish(t, root, repo, []uint64{1}, PublishOptions{Key: key2})
	if !st.Txs[0].Signed || st.NewObjects != 0 || st.Txs[0].New {
		t.Fatalf("stats %+v", st)
	}
	ix = checkRepo(t, repo, keys2)
	if len(ix.Txs[0].Signatures) != 2 {
		t.Fatalf("signatures %+v", ix.Txs[0].Signatures)
	}
}

// A commit --sign signature in the record is carried into an unsigned
// repository's index.
func TestPublishCarriesRecordSignature(t *testing.T) {
	key, keys, _ := newKey(t, t.TempDir(), "vendor")
	root := newStore(t, 1, txstore.CommitOptions{Sign: func(d string) []sign.Signature { return []sign.Signature{sign.SignTx(key, d)} }})
	repo := t.TempDir()
	publish(t, root, repo, []uint64{1}, PublishOptions{})
	ix := checkRepo(t, repo, nil)
	if _, err := sign.VerifyTx(keys, ix.Txs[0].Digest, ix.Txs[0].Signatures); err != nil {
		t.Fatal(err)
	}
}

func TestPublishRefuses(t *testing.T) {
	root := newStore(t, 1, txstore.CommitOptions{})
	cases := []struct {
		name  string
		setup func(t *testing.T, repo string)
		want  error
	}{
		{"not empty, no config", func(t *testing.T, repo string) {
			os.WriteFile(filepath.Join(repo, "precious"), []byte("x"), 0o644)
		}, ErrNotRepo},
		{"other config", func(t *testing.T, repo string) {
			os.WriteFile(filepath.Join(repo, ConfigPath), []byte("txboot-repo 2\n"), 0o644)
		}, ErrNotRepo},
		{"objects is a symlink", func(t *testing.T, repo string) {
			os.WriteFile(filepath.Join(repo, ConfigPath), []byte(ConfigMarker), 0o644)
			outside := t.TempDir()
			os.Symlink(outside, filepath.Join(repo, "objects"))
		}, ErrDamaged},
		{"fan-out dir is a symlink", func(t *testing.T, repo string) {
			os.WriteFile(filepath.Join(repo, ConfigPath), []byte(ConfigMarker), 0o644)
			os.MkdirAll(filepath.Join(repo, "objects"), 0o755)
			for b := 0; b < 256; b++ {
				os.Symlink(t.TempDir(), filepath.Join(repo, "objects", fmt.Sprintf("%02x", b)))
			}
		}, ErrDamaged},
		{"index is a symlink", func(t *testing.T, repo string) {
			os.WriteFile(filepath.Join(repo, ConfigPath), []byte(ConfigMarker), 0o644)
			os.Symlink("/etc/passwd", filepath.Join(repo, IndexPath))
		}, ErrDamaged},
		{"bad index", func(t *testing.T, repo string) {
			os.WriteFile(filepath.Join(repo, ConfigPath), []byte(ConfigMarker), 0o644)
			os.WriteFile(filepath.Join(repo, IndexPath), []byte(`{"format": 2, "txs": []}`), 0o644)
		}, ErrBadIndex},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repo := t.TempDir()
			c.setup(t, repo)
			before := repoFiles(t, repo)
			s := openStore(t, root, false)
			_, err := Publish(s, repo, []uint64{1}, PublishOptions{})
			if !errors.Is(err, c.want) {
				t.Fatalf("Publish = %v, want %v", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error not one line: %q", err)
			}
			after := repoFiles(t, repo)
			delete(after, LockName)
			for rel := range after {
				if _, ok := before[rel]; !ok {
					t.Errorf("refused publish created %s", rel)
				}
			}
		})
	}
	t.Run("no lock file in a foreign directory", func(t *testing.T) {
		repo := t.TempDir()
		os.WriteFile(filepath.Join(repo, "precious"), []byte("x"), 0o644)
		s := openStore(t, root, false)
		Publish(s, repo, []uint64{1}, PublishOptions{})
		if exists(repo, LockName) {
			t.Fatal("lock file created in a directory that is not a repository")
		}
	})
	t.Run("unknown tx", func(t *testing.T) {
		s := openStore(t, root, false)
		if _, err := Publish(s, t.TempDir(), []uint64{9}, PublishOptions{}); !errors.Is(err, txstore.ErrNotFound) {
			t.Fatalf("Publish(9) = %v", err)
		}
	})
	t.Run("bad version", func(t *testing.T) {
		s := openStore(t, root, false)
		if _, err := Publish(s, t.TempDir(), []uint64{1}, PublishOptions{Version: "a\nb"}); !errors.Is(err, txstore.ErrInvalid) {
			t.Fatalf("Publish = %v", err)
		}
	})
}

// A damaged object in the repository (wrong size) is reported, not reused.
func TestPublishDamagedObject(t *testing.T) {
	root := newStore(t, 2, txstore.CommitOptions{})
	repo := t.TempDir()
	publish(t, root, repo, []uint64{1}, PublishOptions{})
	raw, _ := objectName(t, "#!shell\n")
	if err := os.WriteFile(filepath.Join(repo, raw), []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, root, false)
	if _, err := Publish(s, repo, []uint64{2}, PublishOptions{}); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), raw) {
		t.Fatalf("Publish = %v, want ErrDamaged naming %s", err, raw)
	}
}

func TestPublishRemovesStaleTemps(t *testing.T) {
	root := newStore(t, 1, txstore.CommitOptions{})
	repo := t.TempDir()
	publish(t, root, repo, []uint64{1}, PublishOptions{})
	raw, _ := objectName(t, "#!shell\n")
	stale := []string{".tmp-0011", "manifests/.tmp-x", "txs/.tmp-y", filepath.Join(filepath.Dir(raw), ".tmp-z")}
	for _, p := range stale {
		if err := os.WriteFile(filepath.Join(repo, p), []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A symlink named like a temp file is removed itself, never followed.
	target := filepath.Join(t.TempDir(), "keep")
	os.WriteFile(target, []byte("keep"), 0o644)
	os.Symlink(target, filepath.Join(repo, ".tmp-link"))
	publish(t, root, repo, []uint64{1}, PublishOptions{})
	noTemps(t, repo)
	if b, err := os.ReadFile(target); err != nil || string(b) != "keep" {
		t.Fatalf("symlink target touched: %q %v", b, err)
	}
}

func TestPublishLocked(t *testing.T) {
	root := newStore(t, 1, txstore.CommitOptions{})
	repo := t.TempDir()
	publish(t, root, repo, []uint64{1}, PublishOptions{})
	fd, err := unix.Open(filepath.Join(repo, LockName), unix.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, root, false)
	if _, err := Publish(s, repo, []uint64{1}, PublishOptions{Timeout: 100 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("Publish = %v, want ErrLocked", err)
	}
}

// TestPublishCrash SIGKILLs a signed publish at every named step and checks
// that the repository still verifies and describes complete txs (the old
// index, or the new one), and that publishing again completes it.
func TestPublishCrash(t *testing.T) {
	keyDir := t.TempDir()
	key, keys, keyPath := newKey(t, keyDir, "vendor")
	steps := []string{"objects-half", "objects-written", "objects-synced", "manifests-written", "recorded", "sig-written", "index-written"}
	for _, n := range failpoint.Names() {
		if step, ok := strings.CutPrefix(n, "publish/"); ok && !slices.Contains(steps, step) {
			t.Errorf("failpoint %s is not tested", n)
		}
	}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			root := newStore(t, 2, txstore.CommitOptions{})
			repo := t.TempDir()
			publish(t, root, repo, []uint64{1}, PublishOptions{Key: key})
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "TXBOOT_PUBLISH_ROOT="+root, "TXBOOT_PUBLISH_REPO="+repo,
				"TXBOOT_PUBLISH_KEY="+keyPath, failpoint.EnvVar+"=publish/"+step+"=crash")
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die at %s: %v\n%s", step, err, out)
			}
			ix := checkRepo(t, repo, keys)
			if n := len(ix.Txs); n != 1 && !(n == 2 && step == "index-written") {
				t.Fatalf("after a kill at %s the index has %d txs", step, n)
			}
			st := publish(t, root, repo, []uint64{2}, PublishOptions{Key: key})
			ix = checkRepo(t, repo, keys)
			if len(ix.Txs) != 2 {
				t.Fatalf("re-run: %d txs", len(ix.Txs))
			}
			if step != "index-written" && !st.Txs[0].New {
				t.Fatalf("re-run did not publish tx 2: %+v", st)
			}
			noTemps(t, repo)
		})
	}
}

// A big object goes through the streaming path in bounded pieces and
// comes out whole.
func TestPublishBigObject(t *testing.T) {
	root := t.TempDir()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "big"))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(2))
	chunk := make([]byte, 64<<10)
	for i := 0; i < 200; i++ { // 12.5 MiB, half random, half text
		if i%2 == 0 {
			rng.Read(chunk)
		} else {
			copy(chunk, bytes.Repeat([]byte("text "), len(chunk)/5))
		}
		f.Write(chunk)
	}
	f.Close()
	if _, _, err := s.Commit(src, txstore.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	repo := t.TempDir()
	st := publish(t, root, repo, []uint64{1}, PublishOptions{Workers: 1})
	checkRepo(t, repo, nil)
	if st.NewObjects != 1 {
		t.Fatalf("stats %+v", st)
	}
	var _ = io.EOF
}

// Repository files are for a web server: readable by all whatever the
// publisher's umask.
func TestPublishIgnoresUmask(t *testing.T) {
	root := newStore(t, 1, txstore.CommitOptions{})
	repo := filepath.Join(t.TempDir(), "repo")
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	publish(t, root, repo, []uint64{1}, PublishOptions{})
	err := filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o644)
		if d.IsDir() {
			want = 0o755 | fs.ModeDir
		}
		if rel, _ := filepath.Rel(repo, p); rel != LockName && fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", rel, fi.Mode(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
