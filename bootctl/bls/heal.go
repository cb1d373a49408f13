package bls

// Self-healing of the ESP: every kernel and initrd is stored under its own
// SHA-256 (txboot/kernels/<hex>[-fallback]/vmlinuz), so a damaged or
// missing one is found by hashing it and rewritten from the store. The
// firmware cannot do this for itself: systemd-boot fails the entry with
// "Load Error" and hands back to the firmware, which tries the next boot
// option (PXE on OVMF) and sits there.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"unicode/utf8"
)

// FallbackSuffix marks the fallback entry's own copy of a kernel or initrd
// it would otherwise share with the default entry: <hex>-fallback. The
// digest stays in the name, so the copy is verified like any other.
const FallbackSuffix = "-fallback"

// DamagedSuffix is appended to loader.conf's name for the copy of a
// loader.conf that did not parse, kept when it is replaced.
const DamagedSuffix = ".damaged"

// Why a file was repaired.
const (
	WhyMismatch = "content did not match its name"
	WhyMissing  = "missing"
	WhyGarbage  = "did not parse"
)

// ErrUnrepairable: a damaged or missing file on the ESP that no tx in the
// store has the content for.
var ErrUnrepairable = errors.New("cannot be repaired from the store")

// Repair is one file on the ESP found damaged or missing.
type Repair struct {
	TxID uint64 // the tx whose entry names it (the first in menu order); 0 for loader.conf
	Path string // relative to the ESP, '/'-separated
	Why  string // WhyMismatch, WhyMissing, WhyGarbage
	Err  error  // nil: rewritten; else why it was not
}

func (r Repair) String() string {
	tx := ""
	if r.TxID != 0 {
		tx = fmt.Sprintf(" (tx %d)", r.TxID)
	}
	if r.Err != nil {
		return fmt.Sprintf("ESP file %s%s: %s; not repaired: %v", r.Path, tx, r.Why, r.Err)
	}
	return fmt.Sprintf("repaired ESP file %s%s: %s", r.Path, tx, r.Why)
}

func (r Repair) MarshalJSON() ([]byte, error) {
	v := struct {
		TxID     uint64 `json:"tx,omitempty"`
		Path     string `json:"path"`
		Why      string `json:"why"`
		Repaired bool   `json:"repaired"`
		Error    string `json:"error,omitempty"`
	}{TxID: r.TxID, Path: r.Path, Why: r.Why, Repaired: r.Err == nil}
	if r.Err != nil {
		v.Error = r.Err.Error()
	}
	return json.Marshal(v)
}

// HealConfig says which ESP Heal checks.
type HealConfig struct {
	ESP         string
	EntryPrefix string // "" means DefaultPrefix
	Default     uint64 // the default tx, to tell its fallback (0: none)
	// Only, when set, limits the check to the entries of these txs.
	Only map[uint64]bool
}

// HealReport says what Heal checked and did. Paths are relative to the ESP.
type HealReport struct {
	Checked []string  // kernels and initrds hashed
	Repairs []Repair  // damaged or missing ones, repaired or not
	Shared  []Problem // files the fallback entry shares with the default's
}

// Unrepaired is the repairs that failed.
func (r *HealReport) Unrepaired() []Repair {
	var out []Repair
	for _, x := range r.Repairs {
		if x.Err != nil {
			out = append(out, x)
		}
	}
	return out
}

// Heal checks every kernel and initrd the ESP's txboot entries name against
// the SHA-256 in its path and rewrites a damaged or missing one from the
// store: the first tx in txs whose KernelPath (InitrdPath) has that
// content, the entry's own tx first. Each rewrite is a temp file, fsync,
// rename and directory fsync through O_NOFOLLOW directory handles. Entries
// and files that are not txboot's (no prefix, paths outside
// txboot/kernels and txboot/initrds) are neither read nor written. The
// error is for an ESP that cannot be read at all.
//
// Without the store's writer lock (status) this is still safe: a rewrite
// puts the one content its name allows, whoever writes it.
func Heal(cfg HealConfig, txs []TxInfo) (HealReport, error) {
	var r HealReport
	if cfg.EntryPrefix == "" {
		cfg.EntryPrefix = DefaultPrefix
	}
	esp, err := openESP(cfg.ESP)
	if err != nil {
		return r, err
	}
	defer esp.Close()
	entries, err := esp.openEntriesDir()
	if err != nil || entries == nil {
		return r, err
	}
	defer entries.Close()
	refs, err := entryRefs(entries, cfg.EntryPrefix)
	if err != nil {
		return r, err
	}
	h := &healer{esp: esp, txs: txs, hashes: map[string]string{}, ok: map[string]bool{}, failed: map[string]bool{},
		write: func(_ TxInfo, _ int64, w func() error) error { return w() }}
	defer h.close()
	for _, ref := range refs {
		if cfg.Only != nil && !cfg.Only[ref.tx] {
			continue
		}
		if rep, checked := h.check(ref); checked {
			r.Checked = append(r.Checked, ref.rel)
			if rep != nil {
				r.Repairs = append(r.Repairs, *rep)
			}
		}
	}
	r.Shared = sharedWithDefault(refs, cfg.Default, txs)
	return r, nil
}

// blobRef is one kernel or initrd an entry names.
type blobRef struct {
	tx        uint64
	good      bool   // the entry is blessed (no counter)
	dir       string // KernelsDir or InitrdsDir
	name, hex string // <hex>[-fallback], <hex>
	file      string
	rel       string
}

// parseBlobPath recognises an entry's path to a txboot kernel or initrd:
// /txboot/kernels/<hex>[-fallback]/vmlinuz or
// /txboot/initrds/<hex>[-fallback]/initrd.img ('\' separators allowed, as
// systemd-boot does). Anything else is not txboot's to check.
func parseBlobPath(p string) (blobRef, bool) {
	p = strings.TrimPrefix(strings.ReplaceAll(p, `\`, "/"), "/")
	for _, d := range []struct{ dir, file string }{{KernelsDir, kernelFile}, {InitrdsDir, initrdFile}} {
		rest, ok := strings.CutPrefix(p, d.dir+"/")
		if !ok {
			continue
		}
		name, file, ok := strings.Cut(rest, "/")
		if !ok || file != d.file {
			return blobRef{}, false
		}
		hx, ok := blobHex(name)
		if !ok {
			return blobRef{}, false
		}
		return blobRef{dir: d.dir, name: name, hex: hx, file: file, rel: path.Join(d.dir, name, file)}, true
	}
	return blobRef{}, false
}

// blobHex is the digest in a blob directory's name: <hex> or
// <hex>-fallback.
func blobHex(name string) (string, bool) {
	hx := strings.TrimSuffix(name, FallbackSuffix)
	return hx, isHex64(hx)
}

// entryRefs lists the kernels and initrds the prefix's entries name,
// grouped by file in the order of the entries (newest tx first); entries
// that do not parse name nothing (Sync rewrites them).
func entryRefs(entries *espDir, prefix string) ([]blobRef, error) {
	des, err := entries.list()
	if err != nil {
		return nil, err
	}
	type ent struct {
		id   uint64
		good bool
		e    *Entry
	}
	var es []ent
	for _, de := range des {
		f := de.Name()
		if !strings.HasPrefix(f, prefix) || !strings.HasSuffix(f, confSuffix) || !de.Type().IsRegular() {
			continue
		}
		b, err := entries.readFile(f, MaxEntrySize)
		if err != nil {
			continue
		}
		e, err := Parse(b)
		if err != nil {
			continue
		}
		id, _ := CmdlineTx(e.Options)
		if id == 0 {
			continue
		}
		es = append(es, ent{id, !strings.Contains(strings.TrimSuffix(f, confSuffix), "+"), e})
	}
	sort.SliceStable(es, func(i, j int) bool { return es[i].id > es[j].id })
	var out []blobRef
	for _, x := range es {
		for _, p := range append([]string{x.e.Linux}, x.e.Initrd...) {
			if ref, ok := parseBlobPath(p); ok {
				ref.tx, ref.good = x.id, x.good
				out = append(out, ref)
			}
		}
	}
	return out, nil
}

// sharedWithDefault lists the files that both the default's entry and the
// fallback's (the newest good tx that is not the default) name.
func sharedWithDefault(refs []blobRef, def uint64, txs []TxInfo) []Problem {
	if def == 0 {
		return nil
	}
	good := map[uint64]bool{}
	for _, t := range txs {
		good[t.ID] = t.Good
	}
	var fb uint64
	for _, r := range refs { // newest first
		if r.tx != def && good[r.tx] {
			fb = r.tx
			break
		}
	}
	if fb == 0 {
		return nil
	}
	mine := map[string]bool{}
	for _, r := range refs {
		if r.tx == def {
			mine[r.rel] = true
		}
	}
	var out []Problem
	for _, r := range refs {
		if r.tx == fb && mine[r.rel] {
			out = append(out, Problem{TxID: fb, Path: r.rel, Err: fmt.Errorf("the fallback entry (tx %d) shares %s with the default (tx %d)", fb, r.rel, def)})
		}
	}
	return out
}

// healer checks and repairs blobs; Sync and Heal share it.
type healer struct {
	esp    *espDir
	dirs   map[string]*espDir // KernelsDir, InitrdsDir, opened on first use
	owned  []*espDir          // the ones h opened (and closes)
	txs    []TxInfo
	hashes map[string]string // host path -> hex
	ok     map[string]bool   // rel checked (and repaired) this run
	failed map[string]bool   // rel reported unrepairable this run
	// write runs a write on the ESP (Sync makes room when it is full).
	write func(t TxInfo, need int64, w func() error) error
}

func (h *healer) close() {
	for _, d := range h.owned {
		d.Close()
	}
}

// top opens dir (KernelsDir or InitrdsDir), creating it only for a
// repair: checking never writes.
func (h *healer) top(dir string, create bool) (*espDir, error) {
	if d := h.dirs[dir]; d != nil {
		return d, nil
	}
	var d *espDir
	var err error
	if create {
		d, err = h.esp.mkdirAll(dir)
	} else {
		d, err = h.esp.openPath(dir)
	}
	if err != nil {
		return nil, err
	}
	if h.dirs == nil {
		h.dirs = map[string]*espDir{}
	}
	h.dirs[dir] = d
	h.owned = append(h.owned, d)
	return d, nil
}

// state hashes the ESP copy of ref: "" when it matches its name, else why
// not. err: the file or its directory is not what txboot's layout expects
// (a symlink, a FIFO…): left alone.
func (h *healer) state(ref blobRef) (why string, err error) {
	top, err := h.top(ref.dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return WhyMissing, nil
	}
	if err != nil {
		return "", err
	}
	sub, err := top.openDir(ref.name)
	if errors.Is(err, fs.ErrNotExist) {
		return WhyMissing, nil
	}
	if err != nil {
		return "", err
	}
	defer sub.Close()
	f, _, err := sub.openRegular(ref.file)
	if errors.Is(err, fs.ErrNotExist) {
		return WhyMissing, nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	got, err := hashReader(f)
	if err != nil {
		return "", err
	}
	if got != ref.hex {
		return WhyMismatch, nil
	}
	return "", nil
}

// check verifies ref once per run and repairs it when damaged; nil when it
// was fine. checked is false when the file was already handled this run.
func (h *healer) check(ref blobRef) (rep *Repair, checked bool) {
	if h.ok[ref.rel] || h.failed[ref.rel] {
		return nil, false
	}
	why, err := h.state(ref)
	if err != nil {
		h.failed[ref.rel] = true
		return &Repair{TxID: ref.tx, Path: ref.rel, Why: "not checked", Err: err}, true
	}
	if why == "" {
		h.ok[ref.rel] = true
		return nil, true
	}
	if err := h.repair(ref); err != nil {
		h.failed[ref.rel] = true
		return &Repair{TxID: ref.tx, Path: ref.rel, Why: why, Err: err}, true
	}
	h.ok[ref.rel] = true
	return &Repair{TxID: ref.tx, Path: ref.rel, Why: why}, true
}

// repair rewrites ref from the first source with its content, ref's own
// tx first.
func (h *healer) repair(ref blobRef) error {
	cands := make([]TxInfo, 0, len(h.txs))
	for _, t := range h.txs {
		if t.ID == ref.tx {
			cands = append([]TxInfo{t}, cands...)
		} else {
			cands = append(cands, t)
		}
	}
	what := "kernel"
	if ref.dir == InitrdsDir {
		what = "initrd"
	}
	var tried []string
	for _, t := range cands {
		src := t.KernelPath
		if ref.dir == InitrdsDir {
			src = t.InitrdPath
		}
		if src == "" {
			continue
		}
		in, size, err := openSource(src)
		if err != nil {
			if t.ID == ref.tx {
				tried = append(tried, fmt.Sprintf("tx %d's %s: %v", t.ID, what, err))
			}
			continue
		}
		hx, ok := h.hashes[src]
		if !ok {
			if hx, err = hashReader(in); err != nil {
				in.Close()
				continue
			}
			h.hashes[src] = hx
		}
		if hx != ref.hex {
			in.Close()
			if t.ID == ref.tx {
				tried = append(tried, fmt.Sprintf("tx %d's %s %s has other content (sha256 %s)", t.ID, what, src, hx))
			}
			continue
		}
		top, err := h.top(ref.dir, true)
		if err == nil {
			err = h.write(t, size, func() error {
				sub, err := top.mkdirAll(ref.name)
				if err != nil {
					return err
				}
				defer sub.Close()
				_, err = copyVerified(in, sub, ref.file, ref.hex)
				return err
			})
		}
		in.Close()
		if err != nil {
			return fmt.Errorf("copy %s to %s: %w", src, ref.rel, err)
		}
		return nil
	}
	if len(tried) == 0 {
		tried = append(tried, fmt.Sprintf("tx %d is not in the store", ref.tx))
	}
	return fmt.Errorf("%w: no tx has this %s (%s)", ErrUnrepairable, what, strings.Join(tried, "; "))
}

// openPath opens the directory rel below d one component at a time, never
// following a symlink and creating nothing.
func (d *espDir) openPath(rel string) (*espDir, error) {
	cur := d
	for _, c := range strings.Split(rel, "/") {
		next, err := cur.openDir(c)
		if cur != d {
			cur.Close()
		}
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// healExisting checks what the existing entries of wanted txs boot and
// repairs it; what it checked is not hashed again by storeBlob. Entries
// of txs no longer wanted are about to go and are not checked.
func (s *syncer) healExisting(txs []TxInfo) {
	refs, err := entryRefs(s.entries, s.cfg.EntryPrefix)
	if err != nil {
		s.problem(0, EntriesDir, err)
		return
	}
	// Its own map, not s.done: checked is not in use (gcBlobs keeps what
	// is done); putBlob skips hashing what is in s.verified.
	s.verified = map[string]bool{}
	h := &healer{esp: s.esp, dirs: map[string]*espDir{}, txs: txs, hashes: s.hashes, ok: s.verified, failed: map[string]bool{}, write: s.withRoom}
	for d, fd := range s.blobs {
		h.dirs[d] = fd
	}
	defer h.close()
	for _, ref := range refs {
		if !s.wanted[ref.tx] {
			continue
		}
		rep, _ := h.check(ref)
		if rep == nil {
			continue
		}
		s.r.Repaired = append(s.r.Repaired, *rep)
		if rep.Err == nil {
			s.r.Copied = append(s.r.Copied, ref.rel)
		}
	}
}

// fallbackOf is the tx of the fallback entry: the newest good tx, other
// than the default, that gets an entry. 0 when there is no default.
func fallbackOf(def uint64, order []TxInfo, ok map[uint64]bool) uint64 {
	if def == 0 || !ok[def] {
		return 0
	}
	var fb uint64
	for _, t := range order {
		if t.ID != def && t.Good && ok[t.ID] && t.ID > fb {
			fb = t.ID
		}
	}
	return fb
}

// checkLoaderConf reports why loader.conf content would not parse as
// systemd-boot's loader.conf: NUL or other control bytes, invalid UTF-8,
// an overlong line, or a line whose key is not a lowercase word.
// Unknown keys are fine (a newer systemd-boot's options).
func checkLoaderConf(b []byte) error {
	for i, l := range splitConfLines(b) {
		if err := checkConfLine(l); err != nil {
			return fmt.Errorf("line %d: %w", i+1, err)
		}
	}
	return nil
}

func splitConfLines(b []byte) []string {
	return strings.FieldsFunc(string(b), func(r rune) bool { return r == '\r' || r == '\n' })
}

var errConfLine = errors.New("not a loader.conf line")

func checkConfLine(l string) error {
	if len(l) > MaxLineLen {
		return fmt.Errorf("%w: %d bytes", errConfLine, len(l))
	}
	if !utf8.ValidString(l) {
		return fmt.Errorf("%w: invalid UTF-8", errConfLine)
	}
	for _, r := range l {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return fmt.Errorf("%w: control character %q", errConfLine, r)
		}
	}
	t := strings.Trim(l, " \t")
	if t == "" || t[0] == '#' {
		return nil
	}
	key, _, _ := strings.Cut(strings.ReplaceAll(t, "\t", " "), " ")
	for i := 0; i < len(key); i++ {
		if c := key[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%w: key %q", errConfLine, key)
		}
	}
	return nil
}

// cleanLoaderConf keeps the lines of a damaged loader.conf that parse,
// one per line with '\n' endings.
func cleanLoaderConf(b []byte) []byte {
	var out strings.Builder
	for _, l := range splitConfLines(b) {
		if checkConfLine(l) == nil {
			out.WriteString(l)
			out.WriteByte('\n')
		}
	}
	return []byte(out.String())
}
