package bls

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/loader"
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
	DefaultPrefix = loader.DefaultPrefix // the one shared with initagent
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
	ID     uint64
	Digest string // "sha256:<64 hex>", pinned on the kernel command line
	// Image is the fs-verity digest of the tx's sealed image, pinned as
	// txboot.image= when set: set it only when txstore.PinImage says the
	// tx's kernel can boot it sealed.
	Image      string
	Kernel     string // kernel version, shown in the entry's version
	KernelPath string // host path of the vmlinuz to boot
	InitrdPath string // host path of the initrd built for this tx
	Good       bool
	Bad        bool
	TriesLeft  int // from the store; <= 0 on a tx neither good nor bad means "not set": SyncConfig.Tries
	Pinned     bool
	Title      string // replaces the generated menu title when set
	OSName     string // the tx's own OS name (OSName of its tree), used when SyncConfig.OSName is ""
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
	OSName      string // menu title prefix; default: each tx's OSName, else "Linux"
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
	// Entries is the entry file name of each wanted tx after the sync
	// (absent: it has none); callers check a blessing with it.
	Entries  map[uint64]string
	Problems []Problem // what could not be done, per tx; the rest was done
	Skipped  []Problem // files on the ESP left alone: not regular, too large
	// Repaired: kernels and initrds that did not match the SHA-256 in
	// their path (or were missing) and loader.conf or entries that did
	// not parse, rewritten (Err nil) or not (heal.go).
	Repaired []Repair
	// Shared: files the fallback entry shares with the default's because
	// the ESP had no room for its own copy.
	Shared []Problem
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
	if err := CheckOptions(c.Options); err != nil {
		return c, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if strings.ContainsAny(c.MachineID, " \t") {
		return c, fmt.Errorf("%w: machine ID %q", ErrConfig, c.MachineID)
	}
	return c, nil
}

// selectTxs picks the txs that get entries by bootstate.Keep, the rule
// prune uses: the newest good one (so a good entry exists even when the
// newest Keep are all on trial or bad), the default, pinned ones, and the
// newest Keep with bad ones after the others. Sorted by ID.
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
	// The same rule as prune (bootstate.Keep), so no entry is written
	// for a tx prune would remove while a good one goes without.
	cands := make([]bootstate.KeepCandidate, len(sorted))
	for i, t := range sorted {
		st := bootstate.Pending
		switch {
		case t.Good:
			st = bootstate.Good
		case t.Bad:
			st = bootstate.Bad
		}
		cands[i] = bootstate.KeepCandidate{ID: t.ID, State: st, Pinned: t.Pinned}
	}
	want := bootstate.Keep(cands, cfg.Keep, cfg.Default)
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
	if strings.ContainsAny(t.OSName, "\r\n\x00") {
		return fmt.Errorf("%w: tx %d: OS name spans lines", ErrTx, t.ID)
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
		// The user's --os-name, else what the tx says it is (os-release).
		name := cfg.OSName
		if name == "" {
			name = t.OSName
		}
		if name == "" {
			name = DefaultOSName
		}
		title = fmt.Sprintf("%s (tx %d)", name, t.ID)
	}
	version := strconv.FormatUint(t.ID, 10)
	if t.Kernel != "" {
		version += "-" + t.Kernel
	}
	opts := fmt.Sprintf("root=%s ro txboot.tx=%d txboot.digest=%s", cfg.Root, t.ID, t.Digest)
	if t.Image != "" {
		opts += " txboot.image=" + t.Image
	}
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
