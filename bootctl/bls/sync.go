package bls

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Layout on the ESP. Kernels and initrds are stored once per content digest
// and shared by every entry that boots them.
const (
	EntriesDir  = "loader/entries"
	LoaderConf  = "loader/loader.conf"
	KernelsDir  = "txboot/kernels"
	InitrdsDir  = "txboot/initrds"
	kernelFile  = "vmlinuz"
	initrdFile  = "initrd.img"
	maxConfSize = 1 << 20 // loader.conf is the user's; refuse anything absurd
)

// Defaults for SyncConfig's zero values.
const (
	DefaultPrefix = "txboot-"
	DefaultKeep   = 5
	DefaultTries  = 3
	DefaultOSName = "Linux"
)

// Errors from Sync, for errors.Is.
var (
	ErrConfig         = errors.New("invalid sync configuration")
	ErrTx             = errors.New("invalid transaction for a boot entry")
	ErrUnknownDefault = errors.New("default transaction not among the transactions")
	ErrSourceChanged  = errors.New("file changed while being copied to the ESP")
)

// TxInfo is what Sync needs to know about one transaction.
type TxInfo struct {
	ID         uint64
	Digest     string // "sha256:<64 hex>", pinned on the kernel command line
	Kernel     string // kernel version, shown in the entry's version
	KernelPath string // host path of the vmlinuz to boot
	InitrdPath string // host path of the initrd built for this tx
	Good       bool
	Bad        bool
	TriesLeft  int // from the store; <= 0 on a tx neither good nor bad means "not set": SyncConfig.Tries
	Pinned     bool
	Title      string // replaces the generated menu title when set
}

// SyncConfig says where the ESP is and how entries look.
type SyncConfig struct {
	ESP         string // mount point of the ESP
	EntryPrefix string // entry file names are <prefix><id>…; default "txboot-"
	Keep        int    // newest N txs get entries (plus pinned and default); default 5
	Default     uint64 // tx booted by default (sorted first); 0: none
	Options     string // user's extra kernel arguments
	Root        string // root= value
	Tries       int    // boot counter for new trial entries when TriesLeft is unset; default 3
	OSName      string // menu title prefix; default "Linux"
	MachineID   string // written as machine-id when set
}

// Rename is one entry renamed by Sync.
type Rename struct {
	From, To string
}

// Report says what Sync did. Paths are relative to the ESP, '/'-separated.
type Report struct {
	Written        []string // entry files created or rewritten
	Renamed        []Rename // entries renamed (bless, mark bad, counters added)
	Removed        []string // entry files removed: stale txs and twins
	Kept           []string // entry files already right, untouched
	Ignored        []string // files with the prefix that are not txboot entries
	Copied         []string // kernels and initrds copied to the ESP
	RemovedFiles   []string // kernels, initrds and temp files removed
	BytesCopied    int64
	LoaderConf     bool   // loader.conf rewritten
	DefaultPattern string // loader.conf's `default` value
}

// Changed reports whether Sync wrote anything to the ESP.
func (r *Report) Changed() bool {
	return len(r.Written)+len(r.Renamed)+len(r.Removed)+len(r.Copied)+len(r.RemovedFiles) > 0 || r.LoaderConf
}

func (c SyncConfig) withDefaults() (SyncConfig, error) {
	if c.EntryPrefix == "" {
		c.EntryPrefix = DefaultPrefix
	}
	if c.Keep <= 0 {
		c.Keep = DefaultKeep
	}
	if c.Tries <= 0 {
		c.Tries = DefaultTries
	}
	if c.OSName == "" {
		c.OSName = DefaultOSName
	}
	if c.ESP == "" {
		return c, fmt.Errorf("%w: no ESP", ErrConfig)
	}
	for i := 0; i < len(c.EntryPrefix); i++ {
		// '+' would be read as a boot counter; other characters are not
		// allowed in entry names at all.
		if ch := c.EntryPrefix[i]; !validNameChar(ch) || ch == '+' {
			return c, fmt.Errorf("%w: entry prefix %q: character %q", ErrConfig, c.EntryPrefix, ch)
		}
	}
	if c.EntryPrefix[0] == '.' {
		return c, fmt.Errorf("%w: entry prefix %q is hidden", ErrConfig, c.EntryPrefix)
	}
	if c.Root == "" || strings.ContainsAny(c.Root, " \t\r\n\x00\"") {
		return c, fmt.Errorf("%w: root= %q", ErrConfig, c.Root)
	}
	for what, v := range map[string]string{"options": c.Options, "OS name": c.OSName, "machine ID": c.MachineID} {
		if strings.ContainsAny(v, "\r\n\x00") {
			return c, fmt.Errorf("%w: %s %q spans lines", ErrConfig, what, v)
		}
	}
	if strings.ContainsAny(c.MachineID, " \t") {
		return c, fmt.Errorf("%w: machine ID %q", ErrConfig, c.MachineID)
	}
	return c, nil
}

// selectTxs picks the txs that get entries: the newest Keep by ID, pinned
// ones, the default, and the newest good one so that a good entry exists even
// when the newest Keep are all on trial or bad. Sorted by ID.
func selectTxs(cfg SyncConfig, txs []TxInfo) ([]TxInfo, error) {
	byID := make(map[uint64]TxInfo, len(txs))
	for _, t := range txs {
		if t.ID == 0 {
			return nil, fmt.Errorf("%w: ID 0", ErrTx)
		}
		if _, dup := byID[t.ID]; dup {
			return nil, fmt.Errorf("%w: ID %d given twice", ErrTx, t.ID)
		}
		if t.Good && t.Bad {
			return nil, fmt.Errorf("%w: tx %d both good and bad", ErrTx, t.ID)
		}
		byID[t.ID] = t
	}
	if _, ok := byID[cfg.Default]; cfg.Default != 0 && !ok {
		return nil, fmt.Errorf("%w: tx %d", ErrUnknownDefault, cfg.Default)
	}
	sorted := slices.Clone(txs)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID > sorted[j].ID })
	want := make(map[uint64]bool)
	newestGood := false
	for i, t := range sorted {
		if i < cfg.Keep || t.Pinned || t.ID == cfg.Default || (t.Good && !newestGood) {
			want[t.ID] = true
		}
		newestGood = newestGood || t.Good
	}
	var out []TxInfo
	for i := len(sorted) - 1; i >= 0; i-- {
		if want[sorted[i].ID] {
			out = append(out, sorted[i])
		}
	}
	return out, nil
}

func checkTx(t TxInfo) error {
	hexd, ok := strings.CutPrefix(t.Digest, "sha256:")
	if !ok || !isHex64(hexd) {
		return fmt.Errorf("%w: tx %d: digest %q", ErrTx, t.ID, t.Digest)
	}
	if t.KernelPath == "" || t.InitrdPath == "" {
		return fmt.Errorf("%w: tx %d: kernel or initrd path missing", ErrTx, t.ID)
	}
	if strings.ContainsAny(t.Kernel, " \t\r\n\x00") {
		return fmt.Errorf("%w: tx %d: kernel version %q", ErrTx, t.ID, t.Kernel)
	}
	if strings.ContainsAny(t.Title, "\r\n\x00") {
		return fmt.Errorf("%w: tx %d: title spans lines", ErrTx, t.ID)
	}
	return nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !('0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// sortKey orders our entries in systemd-boot's menu, which sorts by
// sort-key, then version descending (newest first), with entries out of tries
// last: the default first, then good txs, then those on trial, then bad ones.
// Booting the first entry matching MenuPattern thus falls back from a failed
// default to the newest good tx by itself.
func sortKey(prefix string, t TxInfo, isDefault bool) string {
	k := strings.ToLower(strings.Trim(prefix, "-_."))
	if k == "" {
		k = "txboot"
	}
	switch {
	case isDefault:
		return k + "-1-default"
	case t.Good:
		return k + "-2-good"
	case t.Bad:
		return k + "-4-bad"
	}
	return k + "-3-trial"
}

// entryFor builds the entry of tx t whose kernel and initrd are stored on
// the ESP under the given content digests.
func entryFor(cfg SyncConfig, t TxInfo, kernelHex, initrdHex string) *Entry {
	title := t.Title
	if title == "" {
		title = fmt.Sprintf("%s (tx %d)", cfg.OSName, t.ID)
	}
	version := strconv.FormatUint(t.ID, 10)
	if t.Kernel != "" {
		version += "-" + t.Kernel
	}
	opts := fmt.Sprintf("root=%s ro txboot.tx=%d txboot.digest=%s", cfg.Root, t.ID, t.Digest)
	if o := strings.TrimSpace(cfg.Options); o != "" {
		opts += " " + o
	}
	return &Entry{
		Title:     title,
		Version:   version,
		MachineID: cfg.MachineID,
		SortKey:   sortKey(cfg.EntryPrefix, t, t.ID == cfg.Default),
		Linux:     "/" + path.Join(KernelsDir, kernelHex, kernelFile),
		Initrd:    []string{"/" + path.Join(InitrdsDir, initrdHex, initrdFile)},
		Options:   opts,
	}
}

// Sync makes the ESP's txboot entries match txs. Order, so that a crash at
// any point leaves bootable entries: (1) copy kernels and initrds; (2) create,
// rewrite and rename entries; (3) set loader.conf's `default` to MenuPattern;
// (4) remove entries of txs no longer wanted; (5) remove kernels and initrds
// no entry references. Files that do not start with the prefix
// are never touched. The caller holds the store's writer lock; nothing else
// may rename entries meanwhile (systemd-bless-boot runs at boot).
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
	var r Report
	cfg, err := cfg.withDefaults()
	if err != nil {
		return r, err
	}
	want, err := selectTxs(cfg, txs)
	if err != nil {
		return r, err
	}
	for _, t := range want {
		if err := checkTx(t); err != nil {
			return r, err
		}
	}
	if st, err := os.Stat(cfg.ESP); err != nil {
		return r, fmt.Errorf("ESP %s: %w", cfg.ESP, err)
	} else if !st.IsDir() {
		return r, fmt.Errorf("ESP %s: %w", cfg.ESP, ErrConfig)
	}
	for _, d := range []string{EntriesDir, KernelsDir, InitrdsDir} {
		if err := mkdirAllDurable(cfg.ESP, d); err != nil {
			return r, err
		}
	}

	// (1) Kernels and initrds, each content once.
	c := copier{esp: cfg.ESP, hashes: map[string]string{}, done: map[string]bool{}, r: &r}
	entries := make(map[uint64][]byte, len(want))
	for _, t := range want {
		kh, err := c.store(KernelsDir, kernelFile, t.KernelPath)
		if err != nil {
			return r, err
		}
		ih, err := c.store(InitrdsDir, initrdFile, t.InitrdPath)
		if err != nil {
			return r, err
		}
		e := entryFor(cfg, t, kh, ih)
		if err := e.Validate(); err != nil {
			return r, fmt.Errorf("tx %d: %w", t.ID, err)
		}
		entries[t.ID] = e.Marshal()
	}

	// (2) Entries.
	entriesDir := filepath.Join(cfg.ESP, EntriesDir)
	existing, err := scanEntries(entriesDir, cfg.EntryPrefix, &r)
	if err != nil {
		return r, err
	}
	for _, t := range want {
		if err := syncEntry(cfg, entriesDir, t, existing[t.ID], entries[t.ID], &r); err != nil {
			return r, err
		}
	}

	// (3) loader.conf.
	if err := syncLoaderConf(cfg, &r); err != nil {
		return r, err
	}

	// (4) Entries of txs not wanted any more.
	wanted := make(map[uint64]bool, len(want))
	for _, t := range want {
		wanted[t.ID] = true
	}
	ids := make([]uint64, 0, len(existing))
	for id := range existing {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if wanted[id] {
			continue
		}
		for _, n := range existing[id] {
			if err := RemoveDurable(entriesDir, n.String()); err != nil {
				return r, err
			}
			r.Removed = append(r.Removed, path.Join(EntriesDir, n.String()))
		}
	}

	// (5) Kernels and initrds nothing references.
	refs, err := referencedBlobs(entriesDir)
	if err != nil {
		return r, err
	}
	for _, d := range []struct{ dir, file string }{{KernelsDir, kernelFile}, {InitrdsDir, initrdFile}} {
		if err := gcBlobs(cfg.ESP, d.dir, d.file, refs, &r); err != nil {
			return r, err
		}
	}
	return r, nil
}

// scanEntries groups the txboot entry files in dir by tx ID. Names with the
// prefix that are not "<prefix><id>[+counters].conf" are reported as ignored;
// our own leftover temp files are removed.
func scanEntries(dir, prefix string, r *Report) (map[uint64][]Name, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	out := make(map[uint64][]Name)
	for _, de := range des {
		f := de.Name()
		if strings.HasPrefix(f, "."+prefix) && strings.HasSuffix(f, ".tmp") {
			if n, ok := tempTarget(f); ok && strings.HasPrefix(n, prefix) && isTempFor(f, n) {
				if err := RemoveDurable(dir, f); err != nil {
					return nil, err
				}
				r.RemovedFiles = append(r.RemovedFiles, path.Join(EntriesDir, f))
			}
			continue
		}
		if !strings.HasPrefix(f, prefix) {
			continue
		}
		n, err := ParseName(f)
		var id uint64
		ok := err == nil && de.Type().IsRegular()
		if ok {
			id, ok = n.TxID(prefix)
		}
		if !ok {
			r.Ignored = append(r.Ignored, path.Join(EntriesDir, f))
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

// syncEntry gives tx t exactly one entry file, named for its state, holding
// content.
func syncEntry(cfg SyncConfig, dir string, t TxInfo, have []Name, content []byte, r *Report) error {
	base := EntryBase(cfg.EntryPrefix, t.ID)
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
		tries = cfg.Tries
	}

	var keep *Name // existing file to reuse, if any
	var target Name
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

	tname := target.String()
	rel := path.Join(EntriesDir, tname)
	if keep != nil && keep.String() != tname {
		if err := RenameAtomic(dir, keep.String(), tname); err != nil {
			return err
		}
		r.Renamed = append(r.Renamed, Rename{From: path.Join(EntriesDir, keep.String()), To: rel})
	}
	cur, err := os.ReadFile(filepath.Join(dir, tname))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", filepath.Join(dir, tname), err)
	}
	switch {
	case err == nil && bytes.Equal(cur, content):
		if keep != nil && keep.String() == tname {
			r.Kept = append(r.Kept, rel)
		}
	default:
		if err := WriteFileAtomic(dir, tname, content, 0o644); err != nil {
			return err
		}
		r.Written = append(r.Written, rel)
	}
	// Twins: any other file for this tx disagrees with its state. systemd
	// stops blessing when an unsuffixed twin exists, so remove them.
	for _, n := range have {
		if keep != nil && n == *keep {
			continue
		}
		if n.String() == tname {
			continue
		}
		if err := RemoveDurable(dir, n.String()); err != nil {
			return err
		}
		r.Removed = append(r.Removed, path.Join(EntriesDir, n.String()))
	}
	return nil
}

func syncLoaderConf(cfg SyncConfig, r *Report) error {
	p := filepath.Join(cfg.ESP, LoaderConf)
	if err := removeTemps(filepath.Dir(p), path.Dir(LoaderConf), filepath.Base(p), r); err != nil {
		return err
	}
	cur, err := readLimited(p, maxConfSize)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	pat := MenuPattern(cfg.EntryPrefix)
	r.DefaultPattern = pat
	next := SetLoaderDefault(cur, pat)
	if err == nil && bytes.Equal(cur, next) {
		return nil
	}
	if err := WriteFileAtomic(filepath.Dir(p), filepath.Base(p), next, 0o644); err != nil {
		return err
	}
	r.LoaderConf = true
	return nil
}

func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: %w", p, ErrTooLarge)
	}
	return b, nil
}

// copier puts files on the ESP under dir/<sha256>/file.
type copier struct {
	esp    string
	hashes map[string]string // host path -> hex digest
	done   map[string]bool   // ESP rel path already checked this run
	r      *Report
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// store copies src to <esp>/dir/<hex>/file unless it is there already with
// the right size and content, and returns hex.
func (c *copier) store(dir, file, src string) (string, error) {
	st, err := os.Stat(src)
	if err != nil {
		return "", fmt.Errorf("stat %s: %w", src, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: %w: not a regular file", src, ErrTx)
	}
	hx, ok := c.hashes[src]
	if !ok {
		if hx, _, err = hashFile(src); err != nil {
			return "", err
		}
		c.hashes[src] = hx
	}
	rel := path.Join(dir, hx, file)
	if c.done[rel] {
		return hx, nil
	}
	dst := filepath.Join(c.esp, filepath.FromSlash(rel))
	if have, err := os.Stat(dst); err == nil && have.Mode().IsRegular() && have.Size() == st.Size() {
		// Sizes match: only now is hashing the ESP copy worth it.
		if got, _, err := hashFile(dst); err == nil && got == hx {
			c.done[rel] = true
			return hx, nil
		}
	}
	if err := mkdirAllDurable(c.esp, path.Join(dir, hx)); err != nil {
		return "", err
	}
	n, err := copyVerified(src, filepath.Dir(dst), file, hx)
	if err != nil {
		return "", err
	}
	c.done[rel] = true
	c.r.Copied = append(c.r.Copied, rel)
	c.r.BytesCopied += n
	return hx, nil
}

// copyVerified writes src to dir/name atomically and checks that what was
// written hashes to wantHex: the name is the digest, so it must be true.
func copyVerified(src, dir, name, wantHex string) (n int64, err error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", src, err)
	}
	defer in.Close()
	tmp, err := createTemp(dir, name, 0o644)
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	n, err = io.Copy(io.MultiWriter(tmp, h), in)
	if err != nil {
		tmp.Close()
		return 0, fmt.Errorf("copy %s to %s: %w", src, tmp.Name(), err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantHex {
		tmp.Close()
		return 0, fmt.Errorf("%s: %w", src, ErrSourceChanged)
	}
	return n, commitTemp(tmp, dir, name)
}

// referencedBlobs collects the digests of every txboot kernel and initrd
// named by any .conf file in dir, ours or not, parsable or not: a plain token
// scan, so nothing an entry still needs is ever removed.
func referencedBlobs(dir string) (map[string]bool, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	refs := make(map[string]bool)
	for _, de := range des {
		if !strings.HasSuffix(strings.ToLower(de.Name()), confSuffix) {
			continue
		}
		p := filepath.Join(dir, de.Name())
		b, err := readLimited(p, maxConfSize)
		if err != nil {
			return nil, err
		}
		// FAT is case-insensitive and systemd-boot accepts '\' separators.
		s := strings.ReplaceAll(strings.ToLower(string(b)), `\`, "/")
		for _, d := range []string{KernelsDir, InitrdsDir} {
			for rest := s; ; {
				i := strings.Index(rest, d+"/")
				if i < 0 {
					break
				}
				rest = rest[i+len(d)+1:]
				if len(rest) >= 64 && isHex64(rest[:64]) {
					refs[d+"/"+rest[:64]] = true
				}
			}
		}
	}
	return refs, nil
}

// gcBlobs removes dir/<hex> directories no entry references, and leftover
// temp files in the referenced ones. Names that are not digests are not ours
// and are left alone.
func gcBlobs(esp, dir, file string, refs map[string]bool, r *Report) error {
	full := filepath.Join(esp, filepath.FromSlash(dir))
	des, err := os.ReadDir(full)
	if err != nil {
		return fmt.Errorf("read %s: %w", full, err)
	}
	for _, de := range des {
		hx := de.Name()
		if !de.IsDir() || !isHex64(hx) {
			continue
		}
		sub := filepath.Join(full, hx)
		if refs[dir+"/"+hx] {
			if err := removeTemps(sub, path.Join(dir, hx), file, r); err != nil {
				return err
			}
			continue
		}
		if err := os.RemoveAll(sub); err != nil {
			return fmt.Errorf("remove %s: %w", sub, err)
		}
		if err := syncDir(full); err != nil {
			return err
		}
		r.RemovedFiles = append(r.RemovedFiles, path.Join(dir, hx))
	}
	return nil
}

// removeTemps removes leftover temp files for name in dir (rel: dir relative
// to the ESP, for the report): debris of a crash between create and rename.
func removeTemps(dir, rel, name string, r *Report) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("read %s: %w", dir, err)
	}
	for _, de := range des {
		if isTempFor(de.Name(), name) {
			if err := RemoveDurable(dir, de.Name()); err != nil {
				return err
			}
			r.RemovedFiles = append(r.RemovedFiles, path.Join(rel, de.Name()))
		}
	}
	return nil
}
