package bls

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Problem is one thing Sync could not do, or a file it left alone; the rest
// of the sync went ahead without it.
type Problem struct {
	TxID uint64 // the tx it belongs to; 0: not one tx's (loader.conf, a foreign file, cleanup)
	Path string // relative to the ESP, '/'-separated
	Err  error
}

func (p Problem) Error() string {
	if msg, tx := p.Err.Error(), fmt.Sprintf("tx %d", p.TxID); p.TxID != 0 && !strings.HasPrefix(msg, tx+" ") && !strings.Contains(msg, tx+":") {
		return tx + ": " + msg
	}
	return p.Err.Error()
}

func (p Problem) Unwrap() error { return p.Err }

func (p Problem) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		TxID  uint64 `json:"tx,omitempty"`
		Path  string `json:"path,omitempty"`
		Error string `json:"error"`
	}{p.TxID, p.Path, p.Err.Error()})
}

// Err joins the problems (nil when there are none).
func (r *Report) Err() error {
	errs := make([]error, len(r.Problems))
	for i, p := range r.Problems {
		errs[i] = p
	}
	return errors.Join(errs...)
}

// TxErr joins the problems of tx id (nil when there are none).
func (r *Report) TxErr(id uint64) error {
	var errs []error
	for _, p := range r.Problems {
		if p.TxID == id {
			errs = append(errs, p)
		}
	}
	return errors.Join(errs...)
}

// Sync makes the ESP's txboot entries match txs. Each entry is handled on
// its own: what fails for one tx (a bad kernel version, a full ESP, a
// foreign file in the way) is recorded in Report.Problems, and the others
// proceed. The error is nil, Report.Err() (the problems joined), or, when
// nothing could be done at all (bad configuration, no usable
// loader/entries), that reason alone.
//
// Order, so that a crash at any point leaves bootable entries and blessing
// never depends on free space: (1) renames, which need no space — bless,
// mark bad, add counters — and removal of twins; (2) per tx, in menu order
// (default, good, trial, bad), copy its kernel and initrd and write its
// entry; when the ESP is full, entries of txs no longer wanted, then of bad
// txs, and the kernels and initrds only they use are removed first to make
// room, never those of bootable entries; (3) set loader.conf's `default` to
// MenuPattern; (4) remove entries of txs no longer wanted; (5) remove
// kernels and initrds no entry references. Files that do not start with the
// prefix are never touched, nothing that is not a regular file is opened,
// and no directory below the ESP is reached through a symlink. The caller
// holds the store's writer lock; nothing else may rename entries meanwhile
// (systemd-bless-boot runs at boot).
//
// Boot counting: a tx neither good nor bad gets "+LEFT" when its entry is
// created; an existing counter is kept as the bootloader left it. A good tx's
// entry loses its counter (blessed). A bad tx keeps its entry, renamed to
// "+0[-DONE]": systemd-boot sorts it last and never picks it by itself, and a
// human can still choose it from the menu.
//
// Default selection: loader.conf's `default` matches all txboot entries and
// the sort-key puts cfg.Default first (see sortKey), so systemd-boot boots
// the default tx while it has tries left and the newest good tx after.
// Needs systemd-boot v251+ (sort-key); older ones order by file name, newest
// first, which still skips entries out of tries.
func Sync(cfg SyncConfig, txs []TxInfo) (Report, error) {
	r := Report{Entries: map[uint64]string{}}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return r, err
	}
	want, err := selectTxs(cfg, txs)
	if err != nil {
		return r, err
	}
	esp, err := openESP(cfg.ESP)
	if err != nil {
		return r, err
	}
	defer esp.Close()
	loader, err := esp.mkdirAll(path.Dir(EntriesDir))
	if err != nil {
		return r, err
	}
	defer loader.Close()
	entries, err := loader.mkdirAll(path.Base(EntriesDir))
	if err != nil {
		return r, err
	}
	defer entries.Close()
	s := &syncer{cfg: cfg, esp: esp, loader: loader, entries: entries, r: &r,
		hashes: map[string]string{}, done: map[string]bool{}, dropped: map[uint64]uint64{}, skipped: map[string]bool{}}
	s.blobs = map[string]*espDir{}
	for _, d := range []string{KernelsDir, InitrdsDir} {
		bd, err := esp.mkdirAll(d)
		if err != nil {
			s.blobErr = append(s.blobErr, err)
			continue
		}
		defer bd.Close()
		s.blobs[d] = bd
	}

	existing, err := s.scanEntries()
	if err != nil {
		return r, err
	}
	s.existing = existing
	s.wanted = make(map[uint64]bool, len(want))
	for _, t := range want {
		s.wanted[t.ID] = true
	}
	order := menuOrder(cfg, want)
	ok := make(map[uint64]bool, len(order))
	for _, t := range order {
		if err := checkTx(t); err != nil {
			s.problem(t.ID, "", err)
			continue
		}
		ok[t.ID] = true
	}

	// (1) Renames first: they need no space, no other entry and nothing
	// checkTx looks at.
	for _, t := range order {
		s.renameEntry(t)
	}
	// (1b) What the existing entries boot, checked against the digests in
	// the paths and repaired from the store (heal.go).
	s.healExisting(txs)
	s.fallback = fallbackOf(cfg.Default, order, ok)
	// (2) Kernels, initrds and content, the most important entry first.
	for _, t := range order {
		if ok[t.ID] {
			s.writeEntry(t)
		}
	}
	// (3) loader.conf.
	s.syncLoaderConf()
	// (4) Entries of txs not wanted any more.
	s.removeUnwanted()
	// (5) Kernels and initrds nothing references.
	s.gcBlobs()
	return r, r.Err()
}

// menuOrder sorts txs the way sortKey ranks them: the default, then good,
// on trial and bad ones, newest first within each.
func menuOrder(cfg SyncConfig, txs []TxInfo) []TxInfo {
	rank := func(t TxInfo) int {
		switch {
		case t.ID == cfg.Default:
			return 0
		case t.Good:
			return 1
		case t.Bad:
			return 3
		}
		return 2
	}
	out := slices.Clone(txs)
	sort.SliceStable(out, func(i, j int) bool {
		if ri, rj := rank(out[i]), rank(out[j]); ri != rj {
			return ri < rj
		}
		return out[i].ID > out[j].ID
	})
	return out
}

type syncer struct {
	cfg                   SyncConfig
	esp, loader, entries  *espDir
	blobs                 map[string]*espDir // KernelsDir, InitrdsDir
	blobErr               []error            // why a blob directory is unusable
	r                     *Report
	existing              map[uint64][]Name
	wanted                map[uint64]bool
	hashes                map[string]string // host path -> hex digest
	done                  map[string]bool   // ESP rel path of a blob present and checked this run
	dropped               map[uint64]uint64 // tx whose entry was removed to make room -> for which tx
	roomLevel             int               // how far makeRoom has gone
	skipped               map[string]bool
	unwantedGone, gcFails bool
	fallback              uint64            // the fallback entry's tx: its own copies of the default's files
	defaultBlob           map[string]string // dir -> the default entry's digest there
	verified              map[string]bool   // ESP rel path of a blob healExisting found right (or repaired)
}

func (s *syncer) problem(id uint64, rel string, err error) {
	s.r.Problems = append(s.r.Problems, Problem{TxID: id, Path: rel, Err: err})
}

func (s *syncer) skip(rel string, err error) {
	if s.skipped[rel] {
		return
	}
	s.skipped[rel] = true
	s.r.Skipped = append(s.r.Skipped, Problem{Path: rel, Err: err})
}

// scanEntries groups the txboot entry files by tx ID. Names with the prefix
// that are not "<prefix><id>[+counters].conf" are reported as ignored, and
// such names that are not regular files as skipped; our own leftover temp
// files are removed.
func (s *syncer) scanEntries() (map[uint64][]Name, error) {
	des, err := s.entries.list()
	if err != nil {
		return nil, err
	}
	prefix := s.cfg.EntryPrefix
	out := make(map[uint64][]Name)
	for _, de := range des {
		f := de.Name()
		rel := s.entries.relPath(f)
		if strings.HasPrefix(f, "."+prefix) && strings.HasSuffix(f, ".tmp") {
			if n, ok := tempTarget(f); ok && strings.HasPrefix(n, prefix) && isTempFor(f, n) {
				if err := s.entries.remove(f); err != nil {
					s.skip(rel, err)
					continue
				}
				s.r.RemovedFiles = append(s.r.RemovedFiles, rel)
			}
			continue
		}
		if !strings.HasPrefix(f, prefix) {
			continue
		}
		n, err := ParseName(f)
		var id uint64
		ok := err == nil
		if ok {
			id, ok = n.TxID(prefix)
		}
		if !ok {
			s.r.Ignored = append(s.r.Ignored, rel)
			continue
		}
		if !de.Type().IsRegular() {
			s.skip(rel, fmt.Errorf("%s: %s: %w", s.entries.path(f), kindOfType(de.Type()), ErrNotRegular))
			continue
		}
		out[id] = append(out[id], n)
	}
	return out, nil
}

// tempTarget recovers the target name from a tempName result.
func tempTarget(f string) (string, bool) {
	s, ok := strings.CutSuffix(f, ".tmp")
	if !ok || !strings.HasPrefix(s, ".") || len(s) < 18 {
		return "", false
	}
	return s[1 : len(s)-17], true
}

// target decides which existing file of tx t to keep and what it must be
// called.
func (s *syncer) target(t TxInfo) (keep *Name, target Name) {
	have := s.existing[t.ID]
	base := EntryBase(s.cfg.EntryPrefix, t.ID)
	var plain *Name
	var counted []Name
	for i := range have {
		if have[i].Counting {
			counted = append(counted, have[i])
		} else {
			plain = &have[i]
		}
	}
	// Of several counted files, the one with the fewest tries left: never
	// hand back tries the bootloader already used.
	sort.Slice(counted, func(i, j int) bool {
		if counted[i].Left != counted[j].Left {
			return counted[i].Left < counted[j].Left
		}
		if counted[i].Done != counted[j].Done {
			return counted[i].Done > counted[j].Done
		}
		return counted[i].String() < counted[j].String()
	})
	tries := t.TriesLeft
	if tries <= 0 {
		tries = s.cfg.Tries
	}
	switch {
	case t.Good:
		target = Name{Base: base}
		if plain != nil {
			keep = plain
		} else if len(counted) > 0 {
			keep = &counted[0]
		}
	case t.Bad:
		if len(counted) > 0 {
			keep = &counted[0]
			target = counted[0]
			target.Left = 0
		} else {
			target = Name{Base: base, Counting: true, Left: 0, LeftDigits: 1}
			keep = plain
		}
	default:
		if len(counted) > 0 {
			// The bootloader's counters are authoritative for the name.
			keep = &counted[0]
			target = counted[0]
		} else {
			target = Name{Base: base, Counting: true, Left: tries}
			keep = plain
		}
	}
	return keep, target
}

// renameEntry gives tx t's existing entry its state's name (bless, mark
// bad) and removes its twins: renames and unlinks only, so it works on a
// full ESP. systemd stops blessing when an unsuffixed twin exists.
func (s *syncer) renameEntry(t TxInfo) {
	keep, target := s.target(t)
	tname := target.String()
	if keep == nil {
		return
	}
	if keep.String() != tname {
		if err := s.entries.rename(keep.String(), tname); err != nil {
			s.problem(t.ID, s.entries.relPath(keep.String()), err)
			s.r.Entries[t.ID] = keep.String()
			return
		}
		s.r.Renamed = append(s.r.Renamed, Rename{From: s.entries.relPath(keep.String()), To: s.entries.relPath(tname)})
	}
	s.r.Entries[t.ID] = tname
	for _, n := range s.existing[t.ID] {
		if n == *keep || n.String() == tname {
			continue
		}
		if err := s.entries.remove(n.String()); err != nil {
			s.problem(t.ID, s.entries.relPath(n.String()), err)
			continue
		}
		s.r.Removed = append(s.r.Removed, s.entries.relPath(n.String()))
	}
	s.existing[t.ID] = []Name{target}
}

// writeEntry copies tx t's kernel and initrd and writes its entry file.
func (s *syncer) writeEntry(t TxInfo) {
	if by, ok := s.dropped[t.ID]; ok {
		s.problem(t.ID, "", fmt.Errorf("%w: entry removed to make room for tx %d", ErrNoSpace, by))
		return
	}
	_, target := s.target(t)
	tname := target.String()
	if cur, ok := s.r.Entries[t.ID]; ok && cur != tname {
		return // its rename failed: already reported
	}
	rel := s.entries.relPath(tname)
	kh, err := s.storeBlob(t, KernelsDir, kernelFile, t.KernelPath)
	if err != nil {
		s.problem(t.ID, "", err)
		return
	}
	ih, err := s.storeBlob(t, InitrdsDir, initrdFile, t.InitrdPath)
	if err != nil {
		s.problem(t.ID, "", err)
		return
	}
	if t.ID == s.cfg.Default {
		s.defaultBlob = map[string]string{KernelsDir: kh, InitrdsDir: ih}
	}
	e := entryFor(s.cfg, t, kh, ih)
	if err := e.Validate(); err != nil {
		s.problem(t.ID, rel, err)
		return
	}
	content := e.Marshal()
	cur, err := s.entries.readFile(tname, MaxEntrySize)
	switch {
	case err == nil && bytes.Equal(cur, content):
		s.r.Kept = append(s.r.Kept, rel)
		s.r.Entries[t.ID] = tname
		return
	case err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, ErrTooLarge):
		s.problem(t.ID, rel, err)
		return
	}
	err = s.withRoom(t, int64(len(content)), func() error { return s.entries.writeAtomic(tname, content, 0o644) })
	if err != nil {
		s.problem(t.ID, rel, err)
		return
	}
	s.r.Written = append(s.r.Written, rel)
	s.r.Entries[t.ID] = tname
}

// withRoom runs write; when the ESP is full it makes room (see makeRoom)
// and tries again, and when it is still full says how much was needed.
func (s *syncer) withRoom(t TxInfo, need int64, write func() error) error {
	for {
		err := write()
		if err == nil || !isNoSpace(err) {
			return err
		}
		if !s.makeRoom(t) {
			free, ferr := freeBytes(s.entries.fd)
			if ferr != nil {
				return fmt.Errorf("%w: need %d bytes: %w", ErrNoSpace, need, err)
			}
			return fmt.Errorf("%w: need %d bytes, %d free: %w", ErrNoSpace, need, free, err)
		}
	}
}

// makeRoom frees space on a full ESP for tx t, one step per call: first
// the entries of txs no longer wanted (step 4 early), then those of bad
// txs (not bootable without txboot.force), each followed by removing the
// kernels and initrds no remaining entry names. Entries that can boot and
// what they use are never removed. False when there is nothing left to do.
func (s *syncer) makeRoom(t TxInfo) bool {
	for s.roomLevel < 2 {
		s.roomLevel++
		before := len(s.r.Removed) + len(s.r.RemovedFiles)
		switch s.roomLevel {
		case 1:
			s.removeUnwanted()
		case 2:
			if t.Bad {
				continue // never trade one bad entry for another
			}
			ids := make([]uint64, 0, len(s.existing))
			for id := range s.existing {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			for _, id := range ids {
				if id == t.ID || !s.wanted[id] || !s.isBad(id) {
					continue
				}
				s.dropEntry(id, t.ID)
			}
		}
		s.gcBlobs()
		if len(s.r.Removed)+len(s.r.RemovedFiles) > before {
			return true
		}
	}
	return false
}

func (s *syncer) isBad(id uint64) bool {
	for _, n := range s.existing[id] {
		if !n.Bad() {
			return false
		}
	}
	return len(s.existing[id]) > 0
}

// dropEntry removes every entry file of tx id to make room for tx by.
func (s *syncer) dropEntry(id, by uint64) {
	for _, n := range s.existing[id] {
		if err := s.entries.remove(n.String()); err != nil {
			s.problem(id, s.entries.relPath(n.String()), err)
			continue
		}
		s.r.Removed = append(s.r.Removed, s.entries.relPath(n.String()))
	}
	delete(s.existing, id)
	delete(s.r.Entries, id)
	s.dropped[id] = by
}

func (s *syncer) removeUnwanted() {
	if s.unwantedGone {
		return
	}
	s.unwantedGone = true
	ids := make([]uint64, 0, len(s.existing))
	for id := range s.existing {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if s.wanted[id] {
			continue
		}
		left := s.existing[id][:0]
		for _, n := range s.existing[id] {
			if err := s.entries.remove(n.String()); err != nil {
				s.problem(id, s.entries.relPath(n.String()), err)
				left = append(left, n)
				continue
			}
			s.r.Removed = append(s.r.Removed, s.entries.relPath(n.String()))
		}
		if len(left) == 0 {
			delete(s.existing, id)
		} else {
			s.existing[id] = left
		}
	}
}

func (s *syncer) syncLoaderConf() {
	name := path.Base(LoaderConf)
	s.removeTemps(s.loader, name)
	cur, err := s.loader.readFile(name, maxConfSize)
	damaged := false
	if errors.Is(err, ErrTooLarge) {
		// Nothing systemd-boot should read: keep it aside (a rename needs
		// no space) and start afresh.
		if rerr := s.loader.rename(name, name+DamagedSuffix); rerr != nil {
			s.problem(0, LoaderConf, rerr)
			return
		}
		s.r.Repaired = append(s.r.Repaired, Repair{Path: LoaderConf, Why: WhyGarbage + " (" + err.Error() + "); kept as " + LoaderConf + DamagedSuffix})
		cur, err, damaged = nil, nil, true
	} else if err == nil {
		if cerr := checkLoaderConf(cur); cerr != nil {
			// Keep the old bytes beside it, then keep only the lines that
			// parse. Either file is replaced atomically; a crash between
			// leaves the damaged one, handled again next time.
			if werr := s.withRoom(TxInfo{}, int64(len(cur)), func() error { return s.loader.writeAtomic(name+DamagedSuffix, cur, 0o644) }); werr != nil {
				s.problem(0, LoaderConf, fmt.Errorf("%s does not parse (%w) and could not be kept aside: %w", s.loader.path(name), cerr, werr))
				return
			}
			s.r.Repaired = append(s.r.Repaired, Repair{Path: LoaderConf, Why: WhyGarbage + " (" + cerr.Error() + "); kept as " + LoaderConf + DamagedSuffix})
			cur, damaged = cleanLoaderConf(cur), true
		}
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.problem(0, LoaderConf, err)
		return
	}
	pat := MenuPattern(s.cfg.EntryPrefix)
	s.r.DefaultPattern = pat
	next := SetLoaderDefault(cur, pat)
	if err == nil && !damaged && bytes.Equal(cur, next) {
		return
	}
	if err := s.withRoom(TxInfo{}, int64(len(next)), func() error { return s.loader.writeAtomic(name, next, 0o644) }); err != nil {
		s.problem(0, LoaderConf, err)
		return
	}
	s.r.LoaderConf = true
}

// openSource opens a host file (a tx's kernel or initrd) to hash and copy
// from the same fd, refusing anything but a regular file at the end of the
// path: a tree's vmlinuz is never a symlink (see manifest.Kernels), and one
// must not copy a host file onto the ESP.
func openSource(p string) (*os.File, int64, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, 0, fmt.Errorf("%s: %w: symlink, not followed", p, ErrTx)
		}
		return nil, 0, fmt.Errorf("open %s: %w", p, &fs.PathError{Op: "open", Path: p, Err: err})
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("stat %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%s: %w: not a regular file", p, ErrTx)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("open %s: %w", p, err)
	}
	return os.NewFile(uintptr(fd), p), st.Size, nil
}

func hashReader(f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// storeBlob copies src to <esp>/dir/<hex>/file unless it is there already
// with the right size and content, and returns the directory's name:
// <hex>, or for the fallback entry, when the default's entry uses the same
// content, its own copy <hex>-fallback (space permitting; else it shares,
// and Report.Shared says so).
func (s *syncer) storeBlob(t TxInfo, dir, file, src string) (string, error) {
	top := s.blobs[dir]
	if top == nil {
		return "", fmt.Errorf("%s: %w", dir, errors.Join(s.blobErr...))
	}
	in, size, err := openSource(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	hx, ok := s.hashes[src]
	if !ok {
		if hx, err = hashReader(in); err != nil {
			return "", err
		}
		s.hashes[src] = hx
	}
	if t.ID == s.fallback && s.defaultBlob[dir] == hx {
		name := hx + FallbackSuffix
		err := s.putBlob(t, top, in, size, dir, name, file, hx)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, ErrNoSpace) {
			return "", err
		}
		rel := path.Join(dir, hx, file)
		s.r.Shared = append(s.r.Shared, Problem{TxID: t.ID, Path: rel,
			Err: fmt.Errorf("the fallback entry (tx %d) shares %s with the default (tx %d): no room for its own copy: %w", t.ID, rel, s.cfg.Default, err)})
	}
	return hx, s.putBlob(t, top, in, size, dir, hx, file, hx)
}

// putBlob makes <esp>/dir/name/file hold in's content (digest hx): kept
// when it is there already and matches, else (re)written.
func (s *syncer) putBlob(t TxInfo, top *espDir, in *os.File, size int64, dir, name, file, hx string) error {
	rel := path.Join(dir, name, file)
	if s.done[rel] || s.verified[rel] {
		s.done[rel] = true
		return nil
	}
	existed := false
	if sub, err := top.openDir(name); err == nil {
		f, have, err := sub.openRegular(file)
		if err == nil {
			existed = true
			// Sizes match: only now is hashing the ESP copy worth it.
			same := false
			if have == size {
				got, err := hashReader(f)
				same = err == nil && got == hx
			}
			f.Close()
			if same {
				sub.Close()
				s.done[rel] = true
				return nil
			}
		} else if errors.Is(err, ErrNotRegular) {
			sub.Close()
			return err
		}
		sub.Close()
	} else if errors.Is(err, ErrNotDir) {
		return err
	}
	var n int64
	err := s.withRoom(t, size, func() error {
		sub, err := top.mkdirAll(name)
		if err != nil {
			return err
		}
		defer sub.Close()
		n, err = copyVerified(in, sub, file, hx)
		return err
	})
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", in.Name(), rel, err)
	}
	s.done[rel] = true
	s.r.Copied = append(s.r.Copied, rel)
	s.r.BytesCopied += n
	if existed {
		// Not named by an entry that parsed (healExisting saw those).
		s.r.Repaired = append(s.r.Repaired, Repair{TxID: t.ID, Path: rel, Why: WhyMismatch})
	}
	return nil
}

// copyVerified writes in (from its start) to dir/name atomically and checks
// that what was written hashes to wantHex: the name is the digest, so it
// must be true.
func copyVerified(in *os.File, dir *espDir, name, wantHex string) (n int64, err error) {
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("seek %s: %w", in.Name(), err)
	}
	tmp, tn, err := dir.createTemp(name, 0o644)
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			unix.Unlinkat(dir.fd, tn, 0)
		}
	}()
	h := sha256.New()
	n, err = io.Copy(io.MultiWriter(&spaceWriter{w: tmp}, h), in)
	if err != nil {
		tmp.Close()
		return 0, fmt.Errorf("copy %s to %s: %w", in.Name(), tmp.Name(), err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantHex {
		tmp.Close()
		return 0, fmt.Errorf("%s: %w", in.Name(), ErrSourceChanged)
	}
	return n, dir.commitTemp(tmp, tn, name)
}

// referencedBlobs collects the digests of every txboot kernel and initrd
// named by any .conf file in loader/entries, ours or not, parsable or not: a
// plain token scan, so nothing an entry still needs is ever removed. Files
// that are not regular are skipped (systemd-boot cannot boot them either);
// an oversized one is scanned in bounded chunks, never read whole.
func (s *syncer) referencedBlobs() (map[string]bool, error) {
	des, err := s.entries.list()
	if err != nil {
		return nil, err
	}
	refs := make(map[string]bool)
	for _, de := range des {
		if !strings.HasSuffix(strings.ToLower(de.Name()), confSuffix) {
			continue
		}
		rel := s.entries.relPath(de.Name())
		f, size, err := s.entries.openRegular(de.Name())
		if errors.Is(err, ErrNotRegular) {
			s.skip(rel, err)
			continue
		}
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if size > MaxEntrySize {
			s.skip(rel, fmt.Errorf("%s: %d bytes, not a boot entry (limit %d); scanned only for kernels and initrds it names: %w", s.entries.path(de.Name()), size, MaxEntrySize, ErrTooLarge))
		}
		err = scanRefs(f, refs)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return refs, nil
}

// scanRefs adds the "txboot/kernels/<hex>" and "txboot/initrds/<hex>"
// references in r to refs, reading at most one chunk and a small overlap
// at a time. FAT is case-insensitive and systemd-boot accepts '\'
// separators.
func scanRefs(f *os.File, refs map[string]bool) error {
	const chunk = 64 << 10
	overlap := len(InitrdsDir) + 1 + 64 + len(FallbackSuffix)
	buf := make([]byte, 0, chunk+overlap)
	rd := make([]byte, chunk)
	for {
		n, rerr := f.Read(rd)
		buf = append(buf, rd[:n]...)
		eof := rerr == io.EOF
		if rerr != nil && !eof {
			return fmt.Errorf("read %s: %w", f.Name(), rerr)
		}
		s := strings.ReplaceAll(strings.ToLower(string(buf)), `\`, "/")
		for _, d := range []string{KernelsDir, InitrdsDir} {
			for rest := s; ; {
				i := strings.Index(rest, d+"/")
				if i < 0 {
					break
				}
				rest = rest[i+len(d)+1:]
				if len(rest) >= 64 && isHex64(rest[:64]) {
					if strings.HasPrefix(rest[64:], FallbackSuffix) {
						refs[d+"/"+rest[:64]+FallbackSuffix] = true
					} else {
						refs[d+"/"+rest[:64]] = true
					}
				}
			}
		}
		if eof {
			return nil
		}
		if len(buf) > overlap {
			buf = append(buf[:0], buf[len(buf)-overlap:]...)
		}
	}
}

// gcBlobs removes dir/<hex> directories no entry references (or that this
// run stored), and leftover temp files in the referenced ones. Names that
// are not digests are not ours and are left alone, and so is anything that
// is not a directory where a digest directory belongs.
func (s *syncer) gcBlobs() {
	if len(s.blobErr) > 0 {
		if !s.gcFails {
			s.gcFails = true
			for _, err := range s.blobErr {
				s.problem(0, "", fmt.Errorf("kernels and initrds not cleaned up: %w", err))
			}
		}
		return
	}
	refs, err := s.referencedBlobs()
	if err != nil {
		s.problem(0, EntriesDir, fmt.Errorf("kernels and initrds not cleaned up: %w", err))
		return
	}
	for _, d := range []struct{ dir, file string }{{KernelsDir, kernelFile}, {InitrdsDir, initrdFile}} {
		top := s.blobs[d.dir]
		des, err := top.list()
		if err != nil {
			s.problem(0, d.dir, err)
			continue
		}
		for _, de := range des {
			hx := de.Name()
			if _, ok := blobHex(hx); !ok {
				continue
			}
			rel := path.Join(d.dir, hx)
			if !de.IsDir() {
				s.skip(rel, fmt.Errorf("%s: %s: %w", top.path(hx), kindOfType(de.Type()), ErrNotDir))
				continue
			}
			if refs[rel] || s.done[path.Join(rel, d.file)] {
				if sub, err := top.openDir(hx); err == nil {
					s.removeTemps(sub, d.file)
					sub.Close()
				}
				continue
			}
			if err := top.removeAll(hx); err != nil {
				s.problem(0, rel, err)
				continue
			}
			s.r.RemovedFiles = append(s.r.RemovedFiles, rel)
		}
	}
}

// removeTemps removes leftover temp files for name in d: debris of a crash
// between create and rename.
func (s *syncer) removeTemps(d *espDir, name string) {
	des, err := d.list()
	if err != nil {
		return
	}
	for _, de := range des {
		if isTempFor(de.Name(), name) {
			if err := d.remove(de.Name()); err != nil {
				s.skip(d.relPath(de.Name()), err)
				continue
			}
			s.r.RemovedFiles = append(s.r.RemovedFiles, d.relPath(de.Name()))
		}
	}
}
