package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/sign"
)

// Pull errors, for errors.Is.
var (
	// ErrUntrusted: no trusted key to check the index with (and not
	// Insecure), or index.sig is missing.
	ErrUntrusted = errors.New("repository index is not verified")
	// ErrInsecure: Insecure together with trusted keys (which would let
	// an unsigned repository through where a signed one is expected).
	ErrInsecure = errors.New("--insecure refused")
	// ErrNoTx: the index has no tx matching the request.
	ErrNoTx = errors.New("no such tx in the repository")
	// ErrContent: fetched bytes are not what the signed manifest says
	// (wrong hash, wrong size, a manifest not matching its digest).
	ErrContent = errors.New("fetched content does not match")
)

// Defaults of PullOptions.
const (
	DefaultWorkers    = 12
	DefaultTries      = 4
	DefaultBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff = 2 * time.Second
	DefaultFlush      = 2 * time.Second
)

// maxWindow bounds a zstd decoder's window (publish writes single frames
// at SpeedDefault, whose window is at most 8 MiB): memory stays bounded
// whatever a server sends.
const maxWindow = 64 << 20

// objectWindow bounds the window of an object's zstd frame: publish's
// encoder (SpeedDefault) never uses more than 8 MiB.
const objectWindow = 8 << 20

// PullOptions tune Pull. Zero values take the defaults.
type PullOptions struct {
	// Tx selects the tx: "" or "latest" (the newest in the index),
	// "sha256:<hex>" (a digest), else a version (the newest with it).
	Tx string
	// Trusted keys check index.sig; without any, Pull refuses unless
	// Insecure.
	Trusted  []sign.PublicKey
	Insecure bool
	Workers  int
	// Tries per file, with backoff doubling from Backoff to MaxBackoff.
	Tries               int
	Backoff, MaxBackoff time.Duration
	// Timeout bounds the network part as a whole (index, manifest,
	// objects, retries), besides a fetcher's idle timeout per read: past
	// it the pull fails with a *DeadlineError (ErrDeadline). <= 0: none
	// besides ctx's.
	Timeout time.Duration
	// FlushInterval: how often fetched objects are published into the
	// CAS while the pull runs (so an interrupted pull keeps them); < 0
	// publishes only at the end (and at Import's size thresholds).
	FlushInterval time.Duration
	// Commit is passed to the commit (Summary, Tries, NoDefault); Pull
	// sets Version, Origin, Signatures, Image and ImageSignatures.
	Commit txstore.CommitOptions
	// Progress, if set, is called about every 200 ms while objects are
	// fetched, and once at the end.
	Progress func(Progress)
	// Warn, if set, is told once when a manifest delta could not be used
	// and the whole manifest is fetched instead.
	Warn func(string)
	// AllowDowngrade lets a pull make a tx older than the current default
	// (earlier in the index) the new default.
	AllowDowngrade bool
	// Now is the clock the index's expiry is judged by (nil: time.Now).
	Now func() time.Time
	// TrustDir is the store's key-statement state (STORE/trust): with
	// it, a repository's keys.json can rotate and revoke keys.
	TrustDir string
	// MemoryLimit sets the Go runtime's soft memory limit to
	// MemoryBudget of the tx for the rest of the pull (a process-wide
	// setting: for a command that does one pull), so that garbage does
	// not double what a pull holds.
	MemoryLimit bool
}

// Progress is a snapshot of a running pull.
type Progress struct {
	Objects, ObjectsDone int   // to fetch, fetched
	Bytes, BytesDone     int64 // on the wire (table's stored sizes), received
	Elapsed              time.Duration
}

// PullStats describe one pull.
type PullStats struct {
	Digest  string `json:"digest"`
	Version string `json:"version"`
	// Verified names the key that signed the index ("" with Insecure).
	Verified string `json:"verified_by,omitempty"`
	// Objects: distinct contents the tx uses (empty files excluded).
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`
	// Fetched over the network: objects, content bytes, bytes on the wire.
	Fetched      int   `json:"fetched_objects"`
	FetchedBytes int64 `json:"fetched_bytes"`
	WireBytes    int64 `json:"wire_bytes"`
	// Present: already in the store (Copied of them under another mode or
	// owner, and copied locally).
	Present      int   `json:"present_objects"`
	PresentBytes int64 `json:"present_bytes"`
	Copied       int   `json:"copied_objects"`
	// MetaBytes: manifest, delta and object table bytes on the wire.
	MetaBytes int64 `json:"meta_bytes"`
	// Delta: "used" (the manifest came as a delta against a local parent),
	// "none" (the repository has no delta against it: 404), "fallback" (a
	// delta was served and could not be used; Warn said why), "" (no local
	// parent).
	Delta string `json:"delta,omitempty"`
	// Existing: the store already had a tx with this digest (its id);
	// nothing was fetched or committed.
	Existing uint64        `json:"existing_tx,omitempty"`
	Elapsed  time.Duration `json:"elapsed_ns"`
}

// Pull fetches one tx from the repository f serves into s and commits it
// as a new local tx with the remote digest, version and tx signatures
// (origin is recorded as the tx's Origin). Order: config, index.json and
// index.sig (checked against the trusted keys before anything in the index
// is believed), the manifest (its digest checked before it is parsed), the
// object table (a hint for URLs and sizes), then only the objects the
// store lacks, each checked against the manifest's size and SHA-256 before
// it enters the CAS. o.Timeout bounds all of that. s is open for writing,
// or for fetching (txstore.OpenFetch): then the network is used without
// the writer lock, and Pull takes it (Store.LockWriter) only for the
// commit, leaving it held for the caller's local steps until s.Close. On
// any error nothing is recorded and no tree is placed; objects that were
// checked and published stay (GC removes them if no tx comes to use them)
// and a re-run fetches only the rest.
func Pull(ctx context.Context, s *txstore.Store, f Fetcher, origin string, o PullOptions) (*txstore.Tx, *PullStats, error) {
	if o.MemoryLimit {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	}
	dctx, cancel := o.withDeadline(ctx)
	defer cancel()
	ft, err := fetchTx(dctx, s, f, origin, o, false)
	if err != nil {
		return nil, nil, o.deadlineErr(dctx, err)
	}
	if ft.existing != nil {
		return ft.existing, ft.st, nil
	}
	defer ft.im.Close()
	if t, err := lockCommit(s, ft.im, ft.it.Digest); err != nil {
		return nil, nil, fmt.Errorf("pull %s: %w", ft.it.Digest, err)
	} else if t != nil {
		ft.st.Existing, ft.st.Elapsed = t.ID, time.Since(ft.start)
		return t, ft.st, nil
	}
	// Again under the lock: the default may have moved while fetching.
	if !o.Commit.NoDefault && !o.AllowDowngrade {
		if err := checkDowngrade(s, ft.ix, ft.it); err != nil {
			return nil, nil, err
		}
	}
	co := o.Commit
	co.Version, co.Origin, co.Signatures = ft.it.Version, origin, ft.it.Signatures
	// The index pins the image the signed tx names: the commit builds its
	// own and refuses a different one (txstore.ErrImageMismatch).
	co.Image, co.ImageSignatures = ft.it.Image, ft.it.ImageSignatures
	tx, err := ft.im.Commit(ft.m, ft.raw, co)
	if err != nil {
		return nil, nil, fmt.Errorf("pull %s: %w", ft.it.Digest, err)
	}
	if tx.Digest != ft.it.Digest { // same by construction; say so if not
		return tx, nil, fmt.Errorf("pull: %w: committed tx %d has digest %s, want %s", ErrContent, tx.ID, tx.Digest, ft.it.Digest)
	}
	// A download of this tx is now committed: its record goes.
	if err := dropDownload(s, tx.Digest); err != nil {
		return tx, nil, fmt.Errorf("pull: committed tx %d: %w", tx.ID, err)
	}
	ft.st.Elapsed = time.Since(ft.start)
	return tx, ft.st, nil
}

// Download is Pull up to and including storing the tx's objects and its
// manifest object in the CAS, durable, and a download record
// (txstore.Store.StoreDownload) naming digest, version, origin, parent,
// signatures, and the image the index pins with its image signatures
// (trusted keys' only, as for Pull): no tree, no tx record, no default
// change. Store.ApplyDownload commits it later without the network,
// refusing another image as Pull does; GC keeps its objects meanwhile.
// A store that already has a tx with the digest gets nothing (nil
// download, stats.Existing set). The store and the time limit are as for
// Pull: with s from txstore.OpenFetch, the writer lock is taken only for
// the record, and left held until s.Close.
func Download(ctx context.Context, s *txstore.Store, f Fetcher, origin string, o PullOptions) (*txstore.Download, *PullStats, error) {
	if o.MemoryLimit {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	}
	dctx, cancel := o.withDeadline(ctx)
	defer cancel()
	ft, err := fetchTx(dctx, s, f, origin, o, true)
	if err != nil {
		return nil, nil, o.deadlineErr(dctx, err)
	}
	if ft.existing != nil {
		return nil, ft.st, nil
	}
	defer ft.im.Close()
	// The manifest object goes with the last batch of objects: one syncfs
	// for both, and StoreDownload finds it in place.
	mobj, err := stageManifest(ft.im, <-ft.mobj)
	if err != nil {
		return nil, nil, fmt.Errorf("download %s: %w", ft.it.Digest, err)
	}
	if t, err := lockCommit(s, ft.im, ft.it.Digest); err != nil {
		return nil, nil, fmt.Errorf("download %s: %w", ft.it.Digest, err)
	} else if t != nil {
		ft.st.Existing, ft.st.Elapsed = t.ID, time.Since(ft.start)
		return nil, ft.st, nil
	}
	d, err := s.StoreDownload(ft.m, ft.raw, txstore.Download{Version: ft.it.Version, Origin: origin,
		Parent: ft.it.Parent, Signatures: ft.it.Signatures, Manifest: mobj,
		Image: ft.it.Image, ImageSignatures: ft.it.ImageSignatures})
	if err != nil {
		return nil, nil, err
	}
	ft.st.Elapsed = time.Since(ft.start)
	return d, ft.st, nil
}

// MemoryBudget is the memory a pull of it is meant to stay within: 64 MiB
// (decoders, O_DIRECT buffers, the runtime) plus 6 bytes per byte of its
// manifest (the text and the parsed entries, about 2.6 bytes per byte,
// the object list, and room for the collector: at 4 the big tree's pull
// took 20-40 % longer, in a noisy measurement).
func MemoryBudget(it *IndexTx) int64 {
	var m int64
	if it.Manifest != nil {
		m = it.Manifest.Size
	}
	return 64<<20 + 6*m
}

// fetched is a tx whose objects are all in the Import (staged or
// published), with its checked manifest.
type fetched struct {
	start    time.Time
	it       *IndexTx
	ix       *Index
	st       *PullStats
	m        *manifest.Manifest
	raw      []byte
	im       *txstore.Import  // the caller closes it
	mobj     chan manifestObj // with manifestObject: raw's CAS object, encoded meanwhile
	existing *txstore.Tx      // the store already has the digest: nothing else is set
}

// fetchTx is what Pull and Download share: config, index.json and
// index.sig (checked against the trusted keys before anything in the index
// is believed), the manifest (from a delta against a local parent when the
// repository has one, else whole; its digest checked before it is parsed),
// the object table (a hint for URLs and sizes), then only the objects the
// store lacks, each checked against the manifest's size and SHA-256
// before it enters the CAS.
//
// With manifestObject, the manifest's CAS object (zstd) is encoded on a
// goroutine while the objects are fetched, for Download to stage.
func fetchTx(ctx context.Context, s *txstore.Store, f Fetcher, origin string, o PullOptions, manifestObject bool) (*fetched, error) {
	ft := &fetched{start: time.Now()}
	o = o.withDefaults()
	p := &puller{f: f, o: o}
	ix, it, verified, err := p.chooseTx(ctx, s, origin, !manifestObject)
	if err != nil {
		return nil, err
	}
	ft.it, ft.ix = it, ix
	st := &PullStats{Digest: it.Digest, Version: it.Version, Verified: verified}
	ft.st = st
	// A tx with this digest is this content: committing it again would
	// only make a twin.
	txs, err := s.List()
	if err != nil {
		return nil, err
	}
	for _, t := range txs {
		if t.Digest == it.Digest {
			st.Existing = t.ID
			st.Elapsed = time.Since(ft.start)
			ft.existing = t
			return ft, nil
		}
	}
	downloads, err := s.Downloads()
	if err != nil {
		return nil, err
	}
	dhex, err := DigestHex(it.Digest)
	if err != nil {
		return nil, err
	}
	// With the parent in the store, a delta names the few entries that
	// changed and the table lines of their new contents.
	var table hints
	var inserted []int
	if base := localParent(s, it.Parent, txs, downloads); base != nil && it.Delta == nil {
		// Not published (the parent was not published there, or its
		// manifest could not be loaded): nothing wrong, nothing to say.
		st.Delta = "none"
	} else if base != nil {
		ft.m, ft.raw, inserted, table, err = p.delta(ctx, dhex, it, base, st)
		switch {
		case err == nil:
			st.Delta = "used"
		case ctx.Err() != nil || errors.As(err, new(permanentErr)) && !errors.Is(err, ErrContent):
			return nil, err
		case isNotFound(err):
			// Pinned but missing: a mirror that lags behind.
			st.Delta = "none"
			ft.m, ft.raw, inserted, table = nil, nil, nil, nil
		default:
			st.Delta = "fallback"
			if o.Warn != nil {
				o.Warn(fmt.Sprintf("manifest delta not usable (%v); fetching the whole manifest", err))
			}
			ft.m, ft.raw, inserted, table = nil, nil, nil, nil
		}
	}
	if ft.m == nil {
		if ft.m, ft.raw, err = p.manifest(ctx, dhex, it.Digest, it.Manifest, st); err != nil {
			return nil, err
		}
	}
	if manifestObject {
		ft.mobj = make(chan manifestObj, 1)
		go func(raw []byte) {
			z, k := txstore.ManifestObject(raw)
			ft.mobj <- manifestObj{z, k}
		}(ft.raw)
	}
	needs := needed(ft.m, nil)
	st.Objects = len(needs)
	for _, n := range needs {
		st.Bytes += n.size
	}
	candidates := needs
	if st.Delta == "used" {
		// Objects of lines copied from the parent are in the store by the
		// store's invariant; the commit checks each one anyway.
		candidates = needed(ft.m, inserted)
		inCand := map[cas.Hash]bool{}
		for _, n := range candidates {
			inCand[n.hash] = true
		}
		for _, n := range needs {
			if !inCand[n.hash] {
				st.Present++
				st.PresentBytes += n.size
			}
		}
	} else if table, err = p.table(ctx, dhex, it.Table, st); err != nil {
		return nil, err
	}

	im, err := s.NewImport()
	if err != nil {
		return nil, err
	}
	fetch, err := p.plan(im, candidates, st)
	if err == nil {
		err = p.fetchAll(ctx, im, fetch, table, st, ft.start)
	}
	if err != nil {
		im.Close()
		return nil, err
	}
	ft.im = im
	return ft, nil
}

// chooseTx is what a pull believes before it fetches anything the index
// names: config, key statement (a rotation or revocation decides which
// keys the index must be signed with), index.json and index.sig, the
// floor (moved, durably, before any fetch), the tx asked for with only
// the signatures this device verifies, and, when it is to become the
// default, the downgrade rule. It returns the index, the tx and the key
// that signed the index.
func (p *puller) chooseTx(ctx context.Context, s *txstore.Store, origin string, makesDefault bool) (*Index, *IndexTx, string, error) {
	o := p.o
	if err := p.config(ctx); err != nil {
		return nil, nil, "", err
	}
	if o.TrustDir != "" && !o.Insecure && len(o.Trusted) > 0 {
		keys, err := p.keyStatement(ctx, o.TrustDir)
		if err != nil {
			return nil, nil, "", err
		}
		p.o.Trusted = keys
	}
	ix, data, verified, err := p.index(ctx)
	if err != nil {
		return nil, nil, "", err
	}
	if err := acceptIndex(s.Dir, ix, data, origin, verified, o.Now(), p.f.URL(IndexPath)); err != nil {
		return nil, nil, "", err
	}
	it, err := selectTx(ix, o.Tx)
	if err != nil {
		return nil, nil, "", err
	}
	if it, err = p.txSignatures(it); err != nil {
		return nil, nil, "", err
	}
	if o.MemoryLimit && it.Manifest != nil {
		debug.SetMemoryLimit(MemoryBudget(it))
	}
	if makesDefault && !o.Commit.NoDefault && !o.AllowDowngrade {
		if err := checkDowngrade(s, ix, it); err != nil {
			return nil, nil, "", err
		}
	}
	return ix, it, verified, nil
}

// localParent returns the canonical manifest bytes and digest of the tx
// (or pending download) with digest parent, or nil.
func localParent(s *txstore.Store, parent string, txs []*txstore.Tx, downloads []*txstore.Download) *parentManifest {
	if parent == "" {
		return nil
	}
	for _, t := range txs {
		if t.Digest == parent {
			if raw, err := s.ManifestBytes(t.Manifest, t.Digest); err == nil {
				return &parentManifest{digest: parent, raw: raw}
			}
		}
	}
	for _, d := range downloads {
		if d.Digest == parent {
			if raw, err := s.ManifestBytes(d.Manifest, d.Digest); err == nil {
				return &parentManifest{digest: parent, raw: raw}
			}
		}
	}
	return nil
}

type parentManifest struct {
	digest string
	raw    []byte
}

// delta fetches deltas/<hex>-<parent hex>.zst and applies it to the local
// parent's manifest; the result's digest is checked before it is parsed.
func (p *puller) delta(ctx context.Context, dhex string, it *IndexTx, base *parentManifest, st *PullStats) (*manifest.Manifest, []byte, []int, hints, error) {
	phex, err := DigestHex(base.digest)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	path, err := DeltaPath(dhex, phex)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	text, err := p.getPinned(ctx, path, it.Delta, st)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%w: %w", ErrBadDelta, err)
	}
	raw, inserted, tab, err := ApplyDelta(base.raw, text, base.digest, it.Digest)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%s: %w", p.f.URL(path), err)
	}
	m, err := manifest.Decode(raw)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%s: %w", p.f.URL(path), err)
	}
	return m, raw, inserted, newHints(tab), nil
}

func (o PullOptions) withDefaults() PullOptions {
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.Tries <= 0 {
		o.Tries = DefaultTries
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlush
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

type puller struct {
	f Fetcher
	o PullOptions
	// bigDecs holds the decoders for large objects (nil until first
	// used); fetchAll fills and drains it.
	bigDecs chan *zstd.Decoder
}

// get fetches a whole small file (config, index, signature, manifest,
// table) into memory, at most limit bytes, with retries.
func (p *puller) get(ctx context.Context, path string, limit int64) ([]byte, error) {
	var data []byte
	err := retry(ctx, p.o.Tries, p.o.Backoff, p.o.MaxBackoff, func() error {
		body, err := p.f.Get(ctx, path)
		if err != nil {
			return err
		}
		defer body.Close()
		data, err = io.ReadAll(io.LimitReader(body, limit+1))
		if err != nil {
			return bodyErr(p.f.URL(path), err)
		}
		if int64(len(data)) > limit {
			// Content errors are not retried: a server that sends too
			// much once will again (endless data).
			return permanentErr{fmt.Errorf("GET %s: %w: larger than %d bytes", p.f.URL(path), ErrContent, limit)}
		}
		return nil
	})
	return data, err
}

func (p *puller) config(ctx context.Context) error {
	data, err := p.get(ctx, ConfigPath, int64(len(ConfigMarker)))
	if err != nil {
		if errors.Is(err, ErrContent) {
			return fmt.Errorf("%s: %w", p.f.URL(ConfigPath), ErrNotRepo)
		}
		return err
	}
	if err := ParseConfig(data); err != nil {
		return fmt.Errorf("%s: %w", p.f.URL(ConfigPath), err)
	}
	return nil
}

// index fetches, verifies and parses index.json and returns it with its
// bytes and the key that signed it. A signature that does not verify is
// fetched again once with the index (publish writes index.sig just before
// index.json: a reader can catch the new index with the old signature).
// Insecure (no trusted key at all) skips index.sig; with any trusted key
// an index must verify.
func (p *puller) index(ctx context.Context) (*Index, []byte, string, error) {
	if p.o.Insecure && len(p.o.Trusted) > 0 {
		return nil, nil, "", fmt.Errorf("%w: --insecure with %d trusted keys: a repository that is not signed by one of them is refused (drop --insecure)", ErrInsecure, len(p.o.Trusted))
	}
	var data []byte
	var verified string
	for attempt := 1; ; attempt++ {
		var err error
		if data, err = p.get(ctx, IndexPath, MaxIndexSize); err != nil {
			return nil, nil, "", err
		}
		if p.o.Insecure {
			break
		}
		if len(p.o.Trusted) == 0 {
			return nil, nil, "", fmt.Errorf("%s: %w: no trusted key (give --trust KEY.pem, put keys in /etc/txboot/trusted.d, or --insecure)", p.f.URL(IndexPath), ErrUntrusted)
		}
		if verified, err = p.verifyIndex(ctx, data); err == nil {
			break
		}
		if errors.Is(err, ErrFetch) && !isNotFound(err) || attempt >= 2 {
			return nil, nil, "", err
		}
	}
	ix, err := ParseIndex(data)
	if err != nil {
		return nil, nil, "", fmt.Errorf("%s: %w", p.f.URL(IndexPath), err)
	}
	return ix, data, verified, nil
}

// verifyIndex checks index.sig over data with the trusted keys and names
// the key that signed it.
func (p *puller) verifyIndex(ctx context.Context, data []byte) (string, error) {
	raw, err := p.get(ctx, SigPath, MaxIndexSize)
	if isNotFound(err) {
		return "", fmt.Errorf("%s: %w: the repository is not signed", p.f.URL(SigPath), ErrUntrusted)
	}
	if err != nil {
		return "", err
	}
	sigs, err := ParseSig(raw)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p.f.URL(SigPath), err)
	}
	k, err := sign.VerifyIndex(p.o.Trusted, data, sigs)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p.f.URL(SigPath), err)
	}
	return k.ID + " (" + k.Source + ")", nil
}

// selectTx picks the requested tx from the index.
func selectTx(ix *Index, want string) (*IndexTx, error) {
	if len(ix.Txs) == 0 {
		return nil, fmt.Errorf("%w: the index lists no txs", ErrNoTx)
	}
	switch {
	case want == "" || want == "latest":
		return &ix.Txs[len(ix.Txs)-1], nil
	case strings.HasPrefix(want, digestPrefix):
		if _, err := DigestHex(want); err != nil {
			return nil, fmt.Errorf("%w: --tx %w", txstore.ErrInvalid, err)
		}
		if t := ix.Find(want); t != nil {
			return t, nil
		}
	default:
		for i := len(ix.Txs) - 1; i >= 0; i-- { // newest with that version
			if ix.Txs[i].Version == want {
				return &ix.Txs[i], nil
			}
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrNoTx, want)
}

// manifest fetches manifests/<hex>.zst and returns it decoded, with its
// canonical bytes: decompressed with a size bound, hashed, compared with
// the digest, and only then parsed.
func (p *puller) manifest(ctx context.Context, dhex, digest string, ref *FileRef, st *PullStats) (*manifest.Manifest, []byte, error) {
	path, err := ManifestPath(dhex)
	if err != nil {
		return nil, nil, err
	}
	raw, err := p.getPinned(ctx, path, ref, st)
	if err != nil {
		return nil, nil, err
	}
	if d := manifest.Digest(raw); d != digest {
		return nil, nil, fmt.Errorf("%s: %w: manifest digest %s, want %s", p.f.URL(path), ErrContent, d, digest)
	}
	m, err := manifest.Decode(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p.f.URL(path), err)
	}
	return m, raw, nil
}

// table fetches txs/<hex>.objects.zst, pinned by the index. It only
// says which URL (raw or zstd) each object has, but a table that is not
// the pinned one is a hostile server, and fails the pull.
func (p *puller) table(ctx context.Context, dhex string, ref *FileRef, st *PullStats) (hints, error) {
	path, err := TablePath(dhex)
	if err != nil {
		return nil, err
	}
	text, err := p.getPinned(ctx, path, ref, st)
	if err != nil {
		return nil, err
	}
	es, err := ParseTable(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.f.URL(path), err)
	}
	return newHints(es), nil
}

// hint is what an object table says of one content: its size and how it
// is stored. Kept compact (no hex strings): a big tree has 100k+.
type hint struct {
	size, stored int64
	compressed   bool
}

// hints are the table's entries by content hash.
type hints map[cas.Hash]hint

func newHints(es []TableEntry) hints {
	out := make(hints, len(es))
	for _, e := range es {
		if h, err := cas.ParseHash(e.Hash); err == nil {
			out[h] = hint{size: e.Size, stored: e.Stored, compressed: e.Compressed}
		}
	}
	return out
}

// getPinned fetches a metadata file the index pins: at most ref.Length
// bytes are read, they must hash to ref.SHA256 (checked before anything
// decodes them), and they must decompress to exactly ref.Size bytes. A
// mismatch is ErrContent and not retried.
func (p *puller) getPinned(ctx context.Context, path string, ref *FileRef, st *PullStats) ([]byte, error) {
	if ref == nil {
		return nil, fmt.Errorf("%s: %w: not pinned by the index", p.f.URL(path), ErrBadIndex)
	}
	z, err := p.get(ctx, path, ref.Length)
	if err != nil {
		return nil, err
	}
	st.MetaBytes += int64(len(z))
	if !ref.Matches(z) {
		return nil, fmt.Errorf("%s: %w: %d bytes that are not the %d bytes (sha256 %s) the signed index pins", p.f.URL(path), ErrContent, len(z), ref.Length, ref.SHA256)
	}
	text, err := decompressExact(z, ref.Size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", p.f.URL(path), ErrContent, err)
	}
	return text, nil
}

// decompressExact decodes one zstd stream of exactly size bytes into one
// buffer of that size: memory is the pinned size, whatever the stream
// claims.
func decompressExact(z []byte, size int64) ([]byte, error) {
	// The decoder's window may exceed a small file's size (a frame
	// header's choice); it stays within 8 MiB or the pinned size.
	mem := max(uint64(size)+1, 8<<20)
	d, err := zstd.NewReader(bytes.NewReader(z), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(min(maxWindow, mem)), zstd.WithDecoderMaxMemory(mem))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	out := make([]byte, size)
	if _, err := io.ReadFull(d, out); err != nil {
		return nil, fmt.Errorf("decompresses to less than the pinned %d bytes: %w", size, err)
	}
	var one [1]byte
	if n, _ := d.Read(one[:]); n > 0 {
		return nil, fmt.Errorf("decompresses to more than the pinned %d bytes", size)
	}
	return out, nil
}

// decompress decodes one zstd stream into at most limit bytes.
func decompress(z []byte, limit int64) ([]byte, error) {
	d, err := zstd.NewReader(bytes.NewReader(z), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderMaxMemory(uint64(limit)+1))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	out, err := io.ReadAll(io.LimitReader(d, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("decompresses to more than %d bytes", limit)
	}
	return out, nil
}

// need is one content the tx uses: its size and every key (mode, owner)
// it is linked under.
type need struct {
	hash cas.Hash
	size int64
	keys []cas.Key
}

// needed lists the contents m uses; with only set, those of the entries
// with these indexes.
func needed(m *manifest.Manifest, only []int) []*need {
	byHash := map[cas.Hash]*need{}
	var out []*need
	n := len(m.Entries)
	if only != nil {
		n = len(only)
	}
	for x := 0; x < n; x++ {
		i := x
		if only != nil {
			i = only[x]
		}
		e := &m.Entries[i]
		if e.Type != manifest.File || e.Size == 0 {
			continue
		}
		n := byHash[e.Hash]
		if n == nil {
			n = &need{hash: e.Hash, size: e.Size}
			byHash[e.Hash] = n
			out = append(out, n)
		}
		if n.size != e.Size {
			// Decode accepted it, but one content has one size.
			n.size = -1
		}
		k := e.Key()
		dup := false
		for _, x := range n.keys {
			dup = dup || x == k
		}
		if !dup {
			n.keys = append(n.keys, k)
		}
	}
	return out
}

// plan drops what the store has and copies locally what it has under
// another mode or owner; it returns what must be fetched, each with only
// its missing keys.
func (p *puller) plan(im *txstore.Import, needs []*need, st *PullStats) ([]*need, error) {
	hs := make([]cas.Hash, len(needs))
	for i, n := range needs {
		hs[i] = n.hash
	}
	found, err := im.Find(hs)
	if err != nil {
		return nil, err
	}
	var fetch []*need
	for _, n := range needs {
		if n.size < 0 {
			return nil, fmt.Errorf("%w: content %s listed with two sizes", manifest.ErrBad, n.hash)
		}
		present := found[n.hash]
		var missing []cas.Key
		for _, k := range n.keys {
			has := false
			if slicesContains(present, k) {
				has, err = im.Check(k)
				if errors.Is(err, cas.ErrDamaged) {
					return nil, fmt.Errorf("pull: %w", err) // as commit: a damaged object is the user's to remove
				}
				if err != nil {
					return nil, err
				}
			}
			if !has {
				missing = append(missing, k)
			}
		}
		if len(missing) == 0 {
			st.Present++
			st.PresentBytes += n.size
			continue
		}
		copied := false
		for _, src := range present {
			if slicesContains(missing, src) {
				continue
			}
			if err := im.CopyLocal(src, n.size, missing); err == nil {
				copied = true
				break
			} else if !errors.Is(err, cas.ErrDamaged) {
				return nil, err
			}
		}
		if copied {
			st.Present++
			st.PresentBytes += n.size
			st.Copied++
			continue
		}
		fetch = append(fetch, &need{hash: n.hash, size: n.size, keys: missing})
	}
	return fetch, nil
}

func slicesContains(ks []cas.Key, k cas.Key) bool {
	for _, x := range ks {
		if x.Ident() == k.Ident() { // Find's keys know xattrs only by digest
			return true
		}
	}
	return false
}

// fetchAll fetches the objects of fetch with o.Workers workers; the first
// error that survives its retries cancels the rest.
func (p *puller) fetchAll(ctx context.Context, im *txstore.Import, fetch []*need, table hints, st *PullStats, start time.Time) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var prog struct {
		done      atomic.Int64
		bytesDone atomic.Int64
		wire      atomic.Int64
		content   atomic.Int64
	}
	var total int64
	for _, n := range fetch {
		if e, ok := table[n.hash]; ok && e.size == n.size {
			total += e.stored
		} else {
			total += n.size
		}
	}
	snapshot := func() Progress {
		return Progress{Objects: len(fetch), ObjectsDone: int(prog.done.Load()), Bytes: total,
			BytesDone: prog.bytesDone.Load(), Elapsed: time.Since(start)}
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	var flushErr atomic.Pointer[error]
	bg.Add(1)
	go func() {
		defer bg.Done()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		lastFlush := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if p.o.Progress != nil {
					p.o.Progress(snapshot())
				}
				if p.o.FlushInterval > 0 && time.Since(lastFlush) >= p.o.FlushInterval {
					lastFlush = time.Now()
					if err := im.Flush(); err != nil {
						flushErr.Store(&err)
						cancel()
					}
				}
			}
		}
	}()

	p.bigDecs = make(chan *zstd.Decoder, bigDecoders)
	for i := 0; i < bigDecoders; i++ {
		p.bigDecs <- nil
	}
	defer func() {
		for i := 0; i < bigDecoders; i++ {
			if d := <-p.bigDecs; d != nil {
				d.Close()
			}
		}
	}()
	jobs := make(chan *need)
	var once sync.Once
	var firstErr error
	fail := func(err error) {
		once.Do(func() { firstErr = err; cancel() })
	}
	var wg sync.WaitGroup
	for w := 0; w < p.o.Workers && w < len(fetch); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ow := &objectWorker{p: p, im: im, progress: &prog.bytesDone}
			defer ow.close()
			for n := range jobs {
				wire, err := ow.fetch(ctx, n, table)
				if err != nil {
					fail(err)
					continue
				}
				prog.done.Add(1)
				prog.wire.Add(wire)
				prog.content.Add(n.size)
			}
		}()
	}
feed:
	for _, n := range fetch {
		select {
		case jobs <- n:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(stop)
	bg.Wait()
	if p.o.Progress != nil {
		p.o.Progress(snapshot())
	}
	st.Fetched = int(prog.done.Load())
	st.FetchedBytes = prog.content.Load()
	st.WireBytes = prog.wire.Load()
	if e := flushErr.Load(); e != nil && firstErr == nil {
		return *e
	}
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// objectWorker fetches objects one at a time, streaming each body through
// a size limit, an optional zstd decoder and SHA-256 into a temp file: its
// memory does not depend on object sizes.
type objectWorker struct {
	p        *puller
	im       *txstore.Import
	dec      *zstd.Decoder
	h        hash.Hash
	buf      []byte
	progress *atomic.Int64
}

func (w *objectWorker) close() {
	if w.dec != nil {
		w.dec.Close()
	}
}

// bigDecoders is how many decoders a pull keeps for objects larger than
// smallObject: publish streams those with an 8 MiB window, and a decoder
// keeps a window-sized history, so one per worker would be most of a
// pull's memory (12 × 8 MiB).
const bigDecoders = 2

// newObjectDecoder is a low-memory decoder that refuses windows larger
// than publish writes.
func newObjectDecoder() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(objectWindow))
}

// decoder returns a decoder for an object of size bytes and what gives
// it back: the worker's own for small objects (publish writes them as one
// segment, so its history stays small), else one of the pull's
// bigDecoders, waited for.
func (w *objectWorker) decoder(ctx context.Context, size int64) (*zstd.Decoder, func(), error) {
	if size <= smallObject {
		if w.dec == nil {
			d, err := newObjectDecoder()
			if err != nil {
				return nil, nil, err
			}
			w.dec = d
		}
		return w.dec, func() {}, nil
	}
	var d *zstd.Decoder
	select {
	case d = <-w.p.bigDecs:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if d == nil {
		var err error
		if d, err = newObjectDecoder(); err != nil {
			w.p.bigDecs <- nil
			return nil, nil, err
		}
	}
	return d, func() { w.p.bigDecs <- d }, nil
}

// fetch gets object n (the table's URL, else the raw one and then the
// .zst one), checks it and hands it to the import. It returns the bytes
// received for it.
func (w *objectWorker) fetch(ctx context.Context, n *need, table hints) (int64, error) {
	hexh := n.hash.String()
	type try struct {
		compressed bool
		limit      int64 // bytes accepted on the wire
	}
	tries := []try{{false, n.size}, {true, n.size}}
	if e, ok := table[n.hash]; ok && e.size == n.size {
		if e.compressed {
			tries = []try{{true, e.stored}, {false, n.size}}
		}
	}
	var wire int64
	var err, first error
	for i, t := range tries {
		path, perr := ObjectPath(hexh, t.compressed)
		if perr != nil {
			return 0, perr
		}
		err = retry(ctx, w.p.o.Tries, w.p.o.Backoff, w.p.o.MaxBackoff, func() error {
			var werr error
			wire, werr = w.once(ctx, path, n, t.compressed, t.limit)
			if errors.Is(werr, ErrContent) {
				// Wrong bytes come again: not retried (endless data).
				return permanentErr{werr}
			}
			return werr
		})
		if err == nil {
			return wire, nil
		}
		// Only a missing file sends us to the other spelling; missing
		// under both, the expected one is named.
		if first == nil {
			first = err
		}
		if !isNotFound(err) {
			return 0, err
		}
		if i == len(tries)-1 {
			return 0, first
		}
	}
	return 0, err
}

// once is one attempt at object n from path.
func (w *objectWorker) once(ctx context.Context, path string, n *need, compressed bool, limit int64) (int64, error) {
	url := w.p.f.URL(path)
	body, err := w.p.f.Get(ctx, path)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	// Content under one key (nearly all) is written straight into the
	// staging area as its object; under several, into a temp file that
	// AddFile links and copies.
	var out io.Writer
	var finish func() error
	var abort func()
	if len(n.keys) == 1 {
		ow, err := w.im.Create(n.keys[0], n.size)
		if err != nil {
			return 0, permanentErr{err}
		}
		out, abort = ow, ow.Abort
		finish = func() error { return w.im.AddObject(ow) }
	} else {
		f, err := w.im.TempFile()
		if err != nil {
			return 0, err
		}
		tmp := f.Name()
		out = f
		abort = func() { f.Close(); os.Remove(tmp) }
		finish = func() error {
			if err := f.Close(); err != nil {
				return fmt.Errorf("write %s: %w", tmp, err)
			}
			return w.im.AddFile(tmp, n.hash, n.size, n.keys)
		}
	}
	keep := false
	defer func() {
		if !keep {
			abort()
		}
	}()
	wire := &countReader{r: io.LimitReader(body, limit+1), progress: w.progress}
	var src io.Reader = wire
	if compressed {
		dec, release, err := w.decoder(ctx, n.size)
		if err != nil {
			return 0, err
		}
		defer release()
		if err := dec.Reset(wire); err != nil {
			return 0, fmt.Errorf("GET %s: %w: %w", url, ErrContent, err)
		}
		src = dec
	}
	if w.h == nil {
		w.h, w.buf = sha256.New(), make([]byte, 256<<10)
	}
	w.h.Reset()
	got, err := io.CopyBuffer(io.MultiWriter(out, w.h), io.LimitReader(src, n.size), w.buf)
	if err == nil && got == n.size {
		// One byte more than the manifest says is a body too long (the
		// writer takes exactly size bytes).
		var one [1]byte
		if k, _ := io.ReadFull(src, one[:]); k > 0 {
			got++
		}
	}
	if wire.n > limit {
		return wire.n, fmt.Errorf("GET %s: %w: more than the %d bytes expected", url, ErrContent, limit)
	}
	if err != nil {
		if compressed && !errors.Is(err, io.ErrUnexpectedEOF) && ctx.Err() == nil && !isNetErr(err) {
			return wire.n, fmt.Errorf("GET %s: %w: %w", url, ErrContent, err)
		}
		return wire.n, bodyErr(url, err)
	}
	if got != n.size {
		return wire.n, fmt.Errorf("GET %s: %w: %d bytes, want %d (truncated or too long)", url, ErrContent, got, n.size)
	}
	if !compressed {
		// The limit cut the body at size+1: a longer one is caught above.
		if wire.n != n.size {
			return wire.n, fmt.Errorf("GET %s: %w: %d bytes, want %d", url, ErrContent, wire.n, n.size)
		}
	} else if extra, _ := io.Copy(io.Discard, wire); extra > 0 || wire.n > limit {
		return wire.n, fmt.Errorf("GET %s: %w: data after the zstd frame", url, ErrContent)
	}
	var sum cas.Hash
	w.h.Sum(sum[:0])
	if sum != n.hash {
		return wire.n, fmt.Errorf("GET %s: %w: content hashes to %s, want %s", url, ErrContent, hex.EncodeToString(sum[:]), n.hash)
	}
	keep = true
	if err := finish(); err != nil {
		return wire.n, permanentErr{err}
	}
	return wire.n, nil
}

// bodyErr is an error reading the body of url: an ErrFetch naming it,
// unless the fetcher's error already is one (a stall names the URL).
func bodyErr(url string, err error) error {
	if errors.Is(err, ErrFetch) {
		return err
	}
	return fmt.Errorf("GET %s: %w: %w", url, ErrFetch, err)
}

// permanentErr marks a local failure (the store, not the server): not
// retried.
type permanentErr struct{ error }

func (e permanentErr) Unwrap() error { return e.error }

func isNetErr(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne)
}

// countReader counts what it reads, into n and progress.
type countReader struct {
	r        io.Reader
	n        int64
	progress *atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.progress != nil {
		c.progress.Add(int64(n))
	}
	return n, err
}

// manifestObj is a manifest's CAS object: zstd bytes and key.
type manifestObj struct {
	z []byte
	k cas.Key
}

// stageManifest adds the manifest object mo to the import unless the store
// has it, and returns its name (hex hash).
func stageManifest(im *txstore.Import, mo manifestObj) (string, error) {
	z, k := mo.z, mo.k
	if has, err := im.Has(k); err != nil || has {
		return k.Hash.String(), err
	}
	w, err := im.Create(k, int64(len(z)))
	if err != nil {
		return "", err
	}
	if _, err := w.Write(z); err != nil {
		w.Abort()
		return "", err
	}
	return k.Hash.String(), im.AddObject(w)
}
