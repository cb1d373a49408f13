package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/txboot/txboot/bootctl/bls"
	"github.com/txboot/txboot/bootctl/initrd"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/trust"
)

// entriesConfig is saved in the store by `entries sync` so later verbs
// (commit, mark-good, set-default, rollback, prune) keep the ESP in step.
type entriesConfig struct {
	ESP       string `json:"esp"`
	RootArg   string `json:"root_arg"`
	Options   string `json:"options,omitempty"`
	Keep      int    `json:"keep"`
	OSName    string `json:"os_name,omitempty"`
	MachineID string `json:"machine_id,omitempty"`

	warnings []string // about the saved settings, shown with the sync's report
	derived  derived  // settings read from the OS (kernel/cmdline, machine-id), never saved

	// In the running system the ESP is found, never taken from the
	// settings (see esp.go); the saved path is kept for offline use.
	live     bool
	savedESP string // what the settings held, saved back unchanged when live
	espErr   error  // why no ESP was found, when live
	espDesc  string // names a privately mounted ESP in messages
}

const entriesKey = "entries"

// entryFlags are shared by the verbs that may sync entries.
type entryFlags struct {
	esp, rootArg, options, osName string
	keep                          int
	optionsSet                    bool
}

func (f *entryFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.esp, "esp", "", "ESP mount point (default: in the running system, the one the boot loader started from; with --root, the saved one (saved offline only), else ROOT/boot/efi, ROOT/efi, ROOT/boot)")
	fs.StringVar(&f.rootArg, "root-arg", "", "root= value for entries, e.g. PARTUUID=… (saved)")
	fs.Func("options", "extra kernel arguments for entries (saved; not root=, initrd=, txboot.tx/digest/force)", func(s string) error {
		// Checked here so that nothing is saved: the user's arguments come
		// last and the last occurrence wins, so txboot.tx= would retarget
		// every entry.
		if err := bls.CheckOptions(s); err != nil {
			return err
		}
		f.options, f.optionsSet = s, true
		return nil
	})
	// 0 means "not given" (keep the saved value); given, it must be >= 1.
	fs.Func("keep", "entries for the newest N txs, plus pinned and default (saved; default 5)", rangeFlag(&f.keep, 1, -1, "--keep must be at least 1"))
	fs.StringVar(&f.osName, "os-name", "", "menu title prefix (saved)")
}

// loadEntriesConfig merges flags over the saved settings. ok is false when
// no ESP is configured or found (then entries are simply not managed).
func loadEntriesConfig(s *txstore.Store, root string, f *entryFlags) (entriesConfig, bool, error) {
	var c entriesConfig
	raw, err := s.Config(entriesKey)
	if err != nil {
		return c, false, err
	}
	if raw != nil {
		if err := json.Unmarshal(raw, &c); err != nil {
			return c, false, fmt.Errorf("%w: saved entry settings unreadable: %w", txstore.ErrCorrupt, err)
		}
	}
	saved := c.ESP
	if f != nil {
		if f.esp != "" {
			c.ESP = f.esp
		}
		if f.rootArg != "" {
			c.RootArg = f.rootArg
		}
		if f.optionsSet {
			c.Options = f.options
		}
		if f.keep > 0 {
			c.Keep = f.keep
		}
		if f.osName != "" {
			c.OSName = f.osName
		}
	}
	if kept, dropped := bls.StripReservedOptions(c.Options); len(dropped) > 0 {
		// Saved before --options was checked: never used, and the next
		// `entries sync` saves the options without them.
		c.warnings = append(c.warnings, fmt.Sprintf("saved --options %q: ignoring %q (root= goes in --root-arg; initrd=, txboot.tx, txboot.digest and txboot.force are txboot's own)", c.Options, strings.Join(dropped, " ")))
		c.Options = kept
	}
	osDefaults(&c, root, f)
	if c.Keep == 0 {
		c.Keep = 5
	}
	explicit := f != nil && f.esp != ""
	if c.live = isLive(root); c.live {
		c.savedESP = saved // an explicit --esp here is not saved either
		if !explicit {
			c.ESP = ""
			// Without a root= value txboot writes no entries: nothing to find.
			if c.RootArg != "" {
				if found, err := findLiveESP(root); err != nil {
					c.espErr = err
				} else {
					c.ESP = found.Path
					if found.Private() { // its path is a /proc/self/fd one
						c.espDesc = found.String()
					}
				}
			}
		}
	} else if !explicit && !isDir(c.ESP) { // saved ESP gone (or none): look where ESPs live
		c.ESP = ""
		for _, cand := range []string{"boot/efi", "efi", "boot"} {
			if p := filepath.Join(root, cand); isDir(filepath.Join(p, "loader")) {
				c.ESP = p
				break
			}
		}
	}
	if c.ESP == "" || !isDir(c.ESP) {
		return c, false, nil
	}
	return c, true, nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func saveEntriesConfig(s *txstore.Store, c entriesConfig) error {
	if c.live {
		c.ESP = c.savedESP // a path found in the running system means nothing offline
	}
	data, err := json.Marshal(c.withoutDerived())
	if err != nil {
		return err
	}
	return s.SetConfig(entriesKey, data)
}

// initrdPath is where commit keeps the initrd built for a tx.
func initrdPath(s *txstore.Store, id uint64) string { return s.InitrdPath(id) }

// initrdBuilder builds txs' initrds with the running system's tools (the
// flags' values, else initrd.FindTool's) and trust store, never with
// anything from a tx's tree. The trust store is loaded when an initrd is
// first needed: a sync that builds none must not fail on a key file.
type initrdBuilder struct {
	e                      *env
	mkinitramfs, initagent string // the flags'; "": initrd.FindTool
	ts                     *trust.Set
}

// build builds tx t's initrd (nothing for a tx without a kernel).
func (b *initrdBuilder) build(s *txstore.Store, t *txstore.Tx) error {
	if len(t.Kernels) == 0 {
		return nil
	}
	if b.ts == nil {
		ts, err := systemTrust(b.e, s)
		if err != nil {
			return fmt.Errorf("build initrd for tx %d: %w", t.ID, err)
		}
		b.ts = ts
	}
	return initrd.Build(s, t, b.mkinitramfs, b.initagent, b.ts)
}

// syncEntries writes the ESP's entries from the store's records, leaving
// out the txs in without (about to be pruned). A missing initrd is built
// with b.
func syncEntries(b *initrdBuilder, s *txstore.Store, c entriesConfig, without ...uint64) (*bls.Report, error) {
	if c.RootArg == "" {
		return nil, usagef("entries need a root= value: pass --root-arg once (e.g. --root-arg PARTUUID=…); it is saved")
	}
	txs, err := s.List()
	if err != nil {
		return nil, err
	}
	def, err := s.Default()
	if err != nil {
		return nil, err
	}
	var infos []bls.TxInfo
	var early []bls.Problem // per tx, before bls.Sync
	skip := map[uint64]bool{}
	for _, id := range without {
		skip[id] = true
	}
	for _, t := range txs {
		if len(t.Kernels) == 0 || skip[t.ID] {
			continue // no kernel in this /usr (nothing to boot from the menu), or going away
		}
		kver := t.Kernels[len(t.Kernels)-1]
		img := initrdPath(s, t.ID)
		if !fileExists(img) && t.State != txstore.StateBad {
			if err := b.build(s, t); err != nil {
				early = append(early, bls.Problem{TxID: t.ID, Err: err})
				continue
			}
		}
		if !fileExists(img) {
			continue
		}
		infos = append(infos, bls.TxInfo{ID: t.ID, Digest: t.Digest, Image: pinnedImage(t), Kernel: kver,
			KernelPath: filepath.Join(s.TreeDir(t.ID), "lib/modules", kver, "vmlinuz"), InitrdPath: img,
			OSName: bls.OSName(s.TreeDir(t.ID)),
			Good:   t.State == txstore.StateGood, Bad: t.State == txstore.StateBad, TriesLeft: t.TriesLeft, Pinned: t.Pinned})
	}
	if !slices.ContainsFunc(infos, func(t bls.TxInfo) bool { return t.ID == def }) {
		def = 0 // no entry for it (no kernel, or its initrd failed): none sorts first
	}
	rep, err := bls.Sync(bls.SyncConfig{ESP: c.ESP, Keep: c.Keep, Default: def, Options: c.Options, Root: c.RootArg,
		OSName: c.OSName, MachineID: c.MachineID}, infos)
	if err != nil && len(rep.Problems) == 0 {
		return nil, fmt.Errorf("entries on %s: %w", c.ESP, err) // nothing could be done
	}
	rep.Problems = append(early, rep.Problems...)
	for _, w := range c.warnings {
		rep.Skipped = append(rep.Skipped, bls.Problem{Path: "settings", Err: errors.New(w)})
	}
	// Prune must not remove a tx whose entry is still on the ESP.
	for _, id := range without {
		if err := rep.TxErr(id); err != nil {
			return &rep, fmt.Errorf("entries on %s: %w", c.ESP, err)
		}
	}
	return &rep, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func printSync(e *env, rep *bls.Report) {
	if rep == nil {
		return
	}
	for _, w := range rep.Written {
		fmt.Fprintf(e.stdout, "entries: wrote %s\n", w)
	}
	for _, r := range rep.Renamed {
		fmt.Fprintf(e.stdout, "entries: renamed %s -> %s\n", r.From, r.To)
	}
	for _, r := range rep.Removed {
		fmt.Fprintf(e.stdout, "entries: removed %s\n", r)
	}
	for _, c := range rep.Copied {
		fmt.Fprintf(e.stdout, "entries: copied %s\n", c)
	}
	for _, r := range rep.RemovedFiles {
		fmt.Fprintf(e.stdout, "entries: removed %s\n", r)
	}
	for _, r := range rep.Repaired {
		if r.Err == nil {
			fmt.Fprintf(e.stdout, "entries: %s\n", printable(r.String()))
		}
	}
	printSyncWarnings(e, rep)
}

// printSyncWarnings puts what the sync could not do, and what it left
// alone, on stderr: one line each, naming the tx and the path.
func printSyncWarnings(e *env, rep *bls.Report) {
	if rep == nil {
		return
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(e.stderr, "bootctl: warning: entries: %v\n", p)
	}
	for _, p := range rep.Skipped {
		fmt.Fprintf(e.stderr, "bootctl: warning: entries: left alone: %v\n", p)
	}
	for _, r := range rep.Repaired {
		if r.Err != nil {
			fmt.Fprintf(e.stderr, "bootctl: warning: entries: %s\n", printable(r.String()))
		} else if e.json {
			fmt.Fprintf(e.stderr, "bootctl: entries: %s\n", printable(r.String())) // stdout stays JSON
		}
	}
	for _, p := range rep.Shared {
		fmt.Fprintf(e.stderr, "bootctl: warning: entries: %v\n", p)
	}
}

// resync re-syncs entries when an ESP is configured; a missing ESP is not
// an error (not every system lets txboot manage its bootloader). What fails
// for single entries is printed as warnings; each check decides whether
// the caller's own entry's state is an error.
func resync(e *env, s *txstore.Store, f *entryFlags, checks ...func(*bls.Report) error) error {
	c, ok, err := loadEntriesConfig(s, e.root, f)
	if err != nil || !ok {
		return err
	}
	if c.RootArg == "" {
		return nil
	}
	rep, err := syncEntries(&initrdBuilder{e: e}, s, c)
	if err != nil {
		return err
	}
	if !e.json {
		printSync(e, rep)
	} else {
		printSyncWarnings(e, rep)
	}
	for _, check := range checks {
		if err := check(rep); err != nil {
			return err
		}
	}
	return nil
}

func entriesVerb() *verb {
	var ef entryFlags
	const usage = "usage: bootctl entries sync [--esp ESP] [--root-arg V] [--options S] [--keep N]"
	return &verb{name: "entries", args: "sync [--esp ESP] [--root-arg V] [--options S] [--keep N]",
		help: "write the bootloader entries (BLS, systemd-boot counting) for the txs",
		pos:  posArgs{min: 1, max: 1, msg: "entries takes one subcommand, sync"}, store: storeWrite,
		flags: ef.register,
		check: func(e *env, args []string) error {
			if args[0] != "sync" {
				return usagef("%s", usage)
			}
			return nil
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			c, ok, err := loadEntriesConfig(s, e.root, &ef)
			if err != nil {
				return err
			}
			if !ok {
				return usagef("no ESP: pass --esp PATH (the mounted EFI system partition)")
			}
			// bls.Sync creates loader/entries itself, never through a symlink.
			rep, err := syncEntries(&initrdBuilder{e: e}, s, c)
			if err != nil {
				return err
			}
			if err := saveEntriesConfig(s, c); err != nil {
				return err
			}
			// Problems of single entries: the others were synced; say
			// so, and exit 1.
			failed := exitError{ExitFail, fmt.Sprintf("%d problem(s) with entries on %s (see the warnings)", len(rep.Problems), c.ESP)}
			if e.json {
				printSyncWarnings(e, rep)
				if err := e.printJSON(rep); err != nil {
					return err
				}
				if len(rep.Problems) > 0 {
					return failed
				}
				return nil
			}
			printSync(e, rep)
			if len(rep.Problems) > 0 {
				return failed
			}
			if !rep.Changed() {
				fmt.Fprintln(e.stdout, "entries: up to date")
			}
			return nil
		}}
}

var errNoBooted = errors.New("no transaction id given and the booted one is unknown (not booted by txboot?)")

// pinnedImage is what tx t's entry pins as txboot.image=: its sealed
// image's digest when its kernel can boot it sealed, else nothing.
func pinnedImage(t *txstore.Tx) string {
	if txstore.PinImage(t) {
		return t.Image
	}
	return ""
}
