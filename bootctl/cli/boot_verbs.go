package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/txboot/txboot/bootctl/bls"
	"github.com/txboot/txboot/bootctl/health"
	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/bootinfo"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/efivars"
	"golang.org/x/sys/unix"
)

// bootInfo is what initagent left in /run/txboot/boot.json; the schema
// lives in txstore/bootinfo, which initagent writes with.
type bootInfo = bootinfo.Info

// bootInfoPath may be overridden in tests.
var bootInfoPath = bootinfo.Path

func readBootInfo() (*bootInfo, error) { return bootinfo.Read(bootInfoPath) }

// booted is the tx running now: initagent's record, else the command line.
func booted() uint64 {
	if bi, err := readBootInfo(); err == nil && bi.Booted != 0 {
		return bi.Booted
	}
	return bootedTx()
}

func targetID(args []string) (uint64, error) {
	switch len(args) {
	case 0:
		if id := booted(); id != 0 {
			return id, nil
		}
		return 0, usageError{errNoBooted.Error()}
	case 1:
		return parseID(args[0])
	}
	return 0, usagef("expected at most one transaction id")
}

// watchdogPath may be overridden in tests (never the host's device).
var watchdogPath = "/dev/watchdog"

// disarmWatchdog stops the watchdog initagent armed for a boot on trial:
// the magic close ('V') tells the driver the stop is intended.
func disarmWatchdog() bool {
	fd, err := unix.Open(watchdogPath, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Write(fd, []byte("V"))
	unix.Close(fd)
	return true
}

// healDefault moves a bad default by bootstate.HealDefault, the rule
// initagent applies too: the booted tx if it is good, else the good tx the
// fallback order from the default reaches first.
func healDefault(s *txstore.Store) (uint64, error) {
	def, err := s.Default()
	if err != nil || def == 0 {
		return 0, err
	}
	txs, err := s.List()
	if err != nil {
		return 0, err
	}
	cands := make([]bootstate.Candidate, len(txs))
	for i, t := range txs {
		cands[i] = bootstate.Candidate{ID: t.ID, State: t.State}
	}
	nd := bootstate.HealDefault(def, cands, booted())
	if nd == 0 {
		return 0, nil
	}
	return nd, s.SetDefault(nd)
}

func markGood(e *env, s *txstore.Store, id uint64, why string, ef *entryFlags) error {
	if _, err := s.Update(id, txstore.Event{Kind: "mark-good", Detail: why}, func(t *txstore.Tx) error {
		t.MarkGood()
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "tx %d marked good\n", id)
	if id == booted() && disarmWatchdog() {
		fmt.Fprintln(e.stdout, "watchdog disarmed")
	}
	if nd, err := healDefault(s); err != nil {
		return err
	} else if nd != 0 {
		fmt.Fprintf(e.stdout, "default was bad; tx %d is the default now\n", nd)
	}
	// Other entries' problems are warnings; only an entry of this tx that
	// could not be blessed (renamed without its counter) fails the verb,
	// and so does an ESP that cannot be found when entries are managed:
	// the loader would count a healthy tx down to bad (RAUC's "mark-good
	// succeeded while the write failed").
	var entry, pending string
	err := resync(e, s, ef, func(rep *bls.Report) error {
		entry = rep.Entries[id]
		return ownEntry(rep, id, "blessed", func(n bls.Name) bool { return !n.Counting })
	})
	if err == nil {
		var c entriesConfig
		var found bool
		if c, found, err = loadEntriesConfig(s, e.root, ef); err == nil {
			pending, err = requireBlessable(e, c, found, id)
		}
	}
	if err != nil {
		return fmt.Errorf("tx %d is marked good in the store, but the boot loader will keep counting it down: %w", id, err)
	}
	switch {
	case pending != "":
		fmt.Fprintf(e.stdout, "not booted by the boot loader and %s: entries are written blessed when synced (bootctl entries sync --esp ESP)\n", printable(pending))
	case entry != "":
		fmt.Fprintf(e.stdout, "boot entry %s is blessed\n", printable(entry))
	}
	return nil
}

// ownEntry fails when tx id had a problem and its entry (if it has one)
// is not in the state ok wants; a stale content alone is only a warning.
func ownEntry(rep *bls.Report, id uint64, what string, ok func(bls.Name) bool) error {
	var errs []error
	for _, p := range rep.Problems {
		if p.TxID == id {
			errs = append(errs, p.Err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	if f, has := rep.Entries[id]; has {
		if n, perr := bls.ParseName(f); perr == nil && ok(n) {
			return nil
		}
	}
	return fmt.Errorf("tx %d: boot entry not %s: %w", id, what, errors.Join(errs...))
}

// entryWritten fails when tx id had a problem and has no entry at all: the
// store would name it (the default, the new tx) while the loader cannot
// boot it.
func entryWritten(id uint64) func(*bls.Report) error {
	return func(rep *bls.Report) error {
		return ownEntry(rep, id, "written", func(bls.Name) bool { return true })
	}
}

func markBad(e *env, s *txstore.Store, id uint64, reason string, ef *entryFlags) error {
	if _, err := s.Update(id, txstore.Event{Kind: "mark-bad", Detail: reason}, func(t *txstore.Tx) error {
		t.MarkBad(reason)
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "tx %d marked bad: %s\n", id, reason)
	if nd, err := healDefault(s); err != nil {
		return err
	} else if nd != 0 {
		fmt.Fprintf(e.stdout, "tx %d is the default now\n", nd)
	}
	return resync(e, s, ef, func(rep *bls.Report) error {
		return ownEntry(rep, id, "marked bad (+0)", func(n bls.Name) bool { return n.Bad() })
	})
}

// healthNotOnTrial: the unit runs on every boot, and a boot not on trial
// (initagent found the tx good) has nothing to prove, so it stays cheap:
// no checks, no store write, no ESP. Only when systemd-boot still counted
// this boot (an earlier blessing did not reach the ESP) is the entry
// blessed, without running the checks again.
func healthNotOnTrial(e *env, id uint64, ef *entryFlags) error {
	if _, _, counted := loaderCounted(e, id); !counted {
		if info, err := readBootInfo(); err == nil && info != nil && len(info.Failures) > 0 {
			// initagent fell back this boot and recorded the failed txs
			// (bad, the default moved) in the store; until the entries
			// say so too, the loader keeps trying the failed one first.
			s, err := e.openExisting(true)
			if err != nil {
				return err
			}
			defer s.Close()
			fmt.Fprintf(e.stdout, "health: tx %d is not on trial; this boot fell back from tx %d: syncing the entries\n", id, info.Failures[0].Tx)
			return resync(e, s, ef)
		}
		fmt.Fprintf(e.stdout, "health: tx %d is not on trial: nothing to check\n", id)
		return healthCheckESP(e, ef)
	}
	s, err := e.openExisting(true)
	if err != nil {
		return err
	}
	defer s.Close()
	t, err := s.Get(id)
	if err != nil {
		return err
	}
	if t.State != txstore.StateGood {
		fmt.Fprintf(e.stdout, "health: tx %d is not on trial (%s, booted by force): nothing to check; its entry is left as it is\n", id, t.State)
		return nil
	}
	fmt.Fprintf(e.stdout, "health: tx %d is good but the boot loader still counts its entry: blessing it\n", id)
	return markGood(e, s, id, "health: bless the entry the boot loader still counted", ef)
}

// reboot asks systemd when it runs, else syncs and reboots directly.
func reboot(e *env) error {
	fmt.Fprintln(e.stdout, "rebooting")
	releaseESPs() // a privately mounted ESP is unmounted cleanly first
	if isDir("/run/systemd/system") {
		if p, err := exec.LookPath("systemctl"); err == nil {
			return exec.Command(p, "reboot").Run()
		}
	}
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

func markGoodVerb() *verb {
	var ef entryFlags
	var id uint64
	return &verb{name: "mark-good", args: "[ID]", help: "record that a tx (default: the booted one) is healthy; bless its entry",
		pos: posArgs{max: 1, msg: "expected at most one transaction id"}, store: storeWrite,
		flags: ef.register,
		check: func(e *env, args []string) (err error) { id, err = targetID(args); return err },
		exec: func(e *env, s *txstore.Store, args []string) error {
			return markGood(e, s, id, "bootctl mark-good", &ef)
		}}
}

func markBadVerb() *verb {
	var ef entryFlags
	var reason string
	var rebootAfter bool
	var id uint64
	return &verb{name: "mark-bad", args: "[ID] [--reason R] [--reboot]", help: "record that a tx is broken; it is never chosen again unless forced",
		pos: posArgs{max: 1, msg: "expected at most one transaction id"}, store: storeWrite,
		flags: func(fs *flag.FlagSet) {
			ef.register(fs)
			fs.StringVar(&reason, "reason", "marked bad by bootctl", "why (shown by status and log)")
			fs.BoolVar(&rebootAfter, "reboot", false, "reboot afterwards")
		},
		check: func(e *env, args []string) (err error) {
			if err := checkText("--reason", reason); err != nil {
				return err
			}
			id, err = targetID(args)
			return err
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			err := markBad(e, s, id, reason, &ef)
			s.Close() // the lock is released before the reboot
			if err == nil && rebootAfter {
				return reboot(e)
			}
			return err
		}}
}

// healthVerb opens the store itself: only after the checks (which may
// take minutes), so the writer lock is not held while they run, and not
// at all on a boot that is not on trial.
func healthVerb() *verb {
	var ef entryFlags
	var rebootAfter bool
	var checkTimeout time.Duration
	return &verb{name: "health", args: "[--reboot] [--check-timeout D]", help: "run health checks; mark the booted tx good, or bad (and reboot)",
		pos: posArgs{msg: "health takes no arguments"}, store: storeSelf,
		flags: func(fs *flag.FlagSet) {
			ef.register(fs)
			fs.BoolVar(&rebootAfter, "reboot", false, "reboot when a required check fails")
			fs.DurationVar(&checkTimeout, "check-timeout", 2*time.Minute, "time limit per check")
		},
		exec: func(e *env, _ *txstore.Store, args []string) error {
			id, err := targetID(nil)
			if err != nil {
				return err
			}
			if bi, err := readBootInfo(); err == nil && bi.Booted == id && !bi.OnTrial && bi.NoDatabase == "" {
				return healthNotOnTrial(e, id, &ef)
			}
			res := health.Run(e.root, checkTimeout, e.stdout, e.stderr)
			s, err := e.openExisting(true)
			if err != nil {
				return err
			}
			if res.Failed == "" {
				err = markGood(e, s, id, fmt.Sprintf("health: %d required, %d wanted checks; %d wanted failed", res.Required, res.Wanted, res.WantedFailed), &ef)
				s.Close()
				return err
			}
			err = markBad(e, s, id, "health check failed: "+res.Failed, &ef)
			s.Close()
			if err != nil {
				return err
			}
			if rebootAfter {
				return reboot(e)
			}
			return exitError{ExitFail, "health check failed: " + res.Failed}
		}}
}

func logVerb() *verb {
	var n int
	return &verb{name: "log", args: "[-n N]", help: "show the store's event log (boots, fallbacks, marks)",
		store: storeRead,
		flags: func(fs *flag.FlagSet) { fs.IntVar(&n, "n", 50, "how many of the newest events") },
		exec: func(e *env, s *txstore.Store, args []string) error {
			evs, err := s.Events(n)
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(evs)
			}
			for _, ev := range evs {
				tx := ""
				if ev.TxID != 0 {
					tx = fmt.Sprintf("tx %d ", ev.TxID)
				}
				fmt.Fprintf(e.stdout, "%s  %-12s %s%s\n", ev.Time.Local().Format("2006-01-02 15:04:05"), printable(ev.Kind), tx, printable(ev.Detail))
			}
			return nil
		}}
}

// efivarsFlag is --efivars, where set-default, rollback, boot-once and
// status read and write systemd-boot's variables.
func efivarsFlag(fs *flag.FlagSet, p *string, usage string) { fs.StringVar(p, "efivars", "", usage) }

const efivarsUsage = "efivarfs directory (default /sys/firmware/efi/efivars)"

func setDefaultVerb() *verb {
	var ef entryFlags
	var efiDir string
	var id uint64
	return &verb{name: "set-default", args: "ID", help: "boot this tx by default (clears a default chosen in the boot menu)",
		pos: oneIDArg, store: storeWrite,
		flags: func(fs *flag.FlagSet) { ef.register(fs); efivarsFlag(fs, &efiDir, efivarsUsage) },
		check: func(e *env, args []string) (err error) { id, err = parseID(args[0]); return err },
		exec: func(e *env, s *txstore.Store, args []string) error {
			if err := s.SetDefault(id); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "tx %d is the default\n", id)
			// The menu default is cleared even when the entry failed: it
			// would otherwise keep overriding the store's choice.
			rerr := resync(e, s, &ef, entryWritten(id))
			return errors.Join(rerr, clearMenuDefault(e, s, efiDir, id))
		}}
}

func rollbackVerb() *verb {
	var ef entryFlags
	var efiDir string
	return &verb{name: "rollback", help: "make the previous good tx the default (clears a default chosen in the boot menu)",
		pos: posArgs{msg: "rollback takes no arguments"}, store: storeWrite,
		flags: func(fs *flag.FlagSet) { ef.register(fs); efivarsFlag(fs, &efiDir, efivarsUsage) },
		exec: func(e *env, s *txstore.Store, args []string) error {
			def, err := s.Default()
			if err != nil {
				return err
			}
			from := def
			if b := booted(); b != 0 && b < from {
				from = b
			}
			txs, err := s.List()
			if err != nil {
				return err
			}
			for i := len(txs) - 1; i >= 0; i-- {
				if t := txs[i]; t.ID < from && t.State == txstore.StateGood {
					if err := s.SetDefault(t.ID); err != nil {
						return err
					}
					s.Log(txstore.Event{Kind: "rollback", TxID: t.ID, Detail: fmt.Sprintf("from tx %d", def)})
					fmt.Fprintf(e.stdout, "rolled back: tx %d is the default (was %d)\n", t.ID, def)
					rerr := resync(e, s, &ef, entryWritten(t.ID))
					return errors.Join(rerr, clearMenuDefault(e, s, efiDir, t.ID))
				}
			}
			return exitError{ExitNotFound, fmt.Sprintf("no good tx older than %d to roll back to", from)}
		}}
}

func bootOnceVerb() *verb {
	var efiDir string
	var id uint64
	return &verb{name: "boot-once", args: "ID", help: "boot this tx on the next boot only (systemd-boot LoaderEntryOneShot)",
		pos: oneIDArg, store: storeRead,
		flags: func(fs *flag.FlagSet) { efivarsFlag(fs, &efiDir, efivarsUsage) },
		check: func(e *env, args []string) (err error) { id, err = parseID(args[0]); return err },
		exec: func(e *env, s *txstore.Store, args []string) error {
			t, err := s.Get(id)
			if err != nil {
				return err
			}
			// systemd-boot ignores a one-shot that matches no entry and boots
			// the default, so without an entry "next boot: tx N" would be false.
			if err := hasEntry(e, s, id); err != nil {
				return err
			}
			if t.State == txstore.StateBad {
				fmt.Fprintf(e.stderr, "warning: tx %d is marked bad (%s); initagent will refuse it unless its entry adds txboot.force=1\n", id, printable(t.LastFailure))
			}
			pat := bls.EntryPattern(bls.DefaultPrefix, id)
			if err := efivars.New(efiDir).SetEntryOneShot(pat); err != nil {
				return fmt.Errorf("set LoaderEntryOneShot: %w", err)
			}
			fmt.Fprintf(e.stdout, "next boot: tx %d (LoaderEntryOneShot=%s)\n", id, pat)
			return nil
		}}
}

func statusVerb() *verb {
	var efiDir string
	return &verb{name: "status", help: "what booted, what is default, what is on trial or bad, and why",
		pos: posArgs{msg: "status takes no arguments"}, store: storeRead,
		flags: func(fs *flag.FlagSet) { efivarsFlag(fs, &efiDir, "efivarfs directory") },
		exec:  func(e *env, s *txstore.Store, args []string) error { return status(e, s, efiDir) }}
}

// hasEntry checks that tx id has a readable entry on the ESP.
func hasEntry(e *env, s *txstore.Store, id uint64) error {
	c, ok, err := loadEntriesConfig(s, e.root, nil)
	if err != nil {
		return err
	}
	if !ok {
		return exitError{ExitFail, fmt.Sprintf("tx %d has no boot entry: no ESP is configured or found (bootctl entries sync --esp ESP writes the entries)", id)}
	}
	files, err := bls.List(c.ESP, bls.DefaultPrefix)
	if err != nil {
		return err
	}
	base := bls.EntryBase(bls.DefaultPrefix, id)
	for _, f := range files {
		if f.Err == nil && strings.EqualFold(f.Name.Base, base) {
			return nil
		}
	}
	return exitError{ExitFail, fmt.Sprintf("tx %d has no boot entry on %s (no readable %s/%s*.conf); boot-once needs one", id, c.ESP, bls.EntriesDir, base)}
}

// clearMenuDefault removes LoaderEntryDefault after set-default or rollback:
// systemd-boot prefers it over loader.conf, so a default once picked in the
// menu would silently keep the machine off the tx just made the default.
func clearMenuDefault(e *env, s *txstore.Store, efiDir string, id uint64) error {
	old, err := efivars.New(efiDir).ClearEntryDefault()
	if err != nil {
		return fmt.Errorf("tx %d is the default in the store and loader.conf, but the boot menu's default (LoaderEntryDefault=%q) overrides it and could not be cleared: %w", id, old, err)
	}
	if old != "" {
		fmt.Fprintf(e.stdout, "cleared the boot menu's default (LoaderEntryDefault=%s), which overrode loader.conf\n", old)
		s.Log(txstore.Event{Kind: "menu-default", TxID: id, Detail: "cleared LoaderEntryDefault=" + old})
	}
	return nil
}

type statusTx struct {
	*txstore.Tx
	Default bool `json:"default"`
	Booted  bool `json:"booted"`
	// Signature: unsigned, valid, untrusted or bad, checked against the
	// system's trust store (systemTrust); SignedBy: that key's ID.
	Signature string `json:"signature"`
	SignedBy  string `json:"signed_by,omitempty"`
	// BootMode: how the tx boots, "sealed" or "unsealed", and why
	// (txstore.BootMode).
	BootMode    string `json:"boot_mode"`
	BootModeWhy string `json:"boot_mode_why,omitempty"`
}

type statusOut struct {
	Booted        uint64          `json:"booted"`
	Requested     uint64          `json:"requested,omitempty"`
	BootFailures  any             `json:"boot_failures,omitempty"`
	Default       uint64          `json:"default"`
	OnTrial       []uint64        `json:"on_trial"`
	Bad           []uint64        `json:"bad"`
	Transactions  []statusTx      `json:"transactions"`
	LoaderEntry   string          `json:"loader_entry_selected,omitempty"`
	LoaderCounter string          `json:"loader_boot_count_path,omitempty"`
	MenuDefault   string          `json:"loader_entry_default,omitempty"`
	Entries       []string        `json:"entries,omitempty"`
	ESP           string          `json:"esp,omitempty"`
	Info          *bootInfo       `json:"-"`
	Events        []txstore.Event `json:"recent_events,omitempty"`
	// Downloads: pending pull --download-only, oldest first.
	Downloads []*txstore.Download `json:"downloads"`
	// Repositories: the newest index accepted from each, and whether it
	// is still fresh (a frozen mirror shows as stale).
	Repositories []statusRemote `json:"repositories"`
	// Etc: whose /etc is live, its conflicts, files kept beside (status_etc.go).
	Etc *statusEtc `json:"etc,omitempty"`

	// ESPRepairs: kernels and initrds on the ESP that did not match the
	// SHA-256 in their path (or were missing), rewritten from the store or
	// not (esp_heal.go); ESPShared: files the fallback entry shares with
	// the default's (no room for its own copy).
	ESPRepairs []bls.Repair `json:"esp_repairs,omitempty"`
	ESPShared  []string     `json:"esp_shared_with_fallback,omitempty"`
	// Packages: the booted (or default) tx's package changes (status_pkgs.go).
	Packages *statusPkgs `json:"packages,omitempty"`
}

// status is the status verb, on a store opened read-only.
func status(e *env, s *txstore.Store, efiDir string) error {
	txs, def, err := snapshot(s)
	if err != nil {
		return err
	}
	out := statusOut{Default: def, OnTrial: []uint64{}, Bad: []uint64{}}
	out.Booted = booted()
	if bi, err := readBootInfo(); err == nil {
		out.Requested = bi.Requested
		if len(bi.Failures) > 0 {
			out.BootFailures = bi.Failures
		}
		out.Info = bi
	}
	keys := knownKeys(e, s)
	for _, t := range txs {
		sig, by := signatureState(keys, t)
		mode, why := txstore.BootMode(t)
		out.Transactions = append(out.Transactions, statusTx{Tx: t, Default: t.ID == def, Booted: t.ID == out.Booted, Signature: sig, SignedBy: by,
			BootMode: mode, BootModeWhy: why})
		switch t.State {
		case txstore.StatePending, txstore.StateTrying:
			out.OnTrial = append(out.OnTrial, t.ID)
		case txstore.StateBad:
			out.Bad = append(out.Bad, t.ID)
		}
	}
	v := efivars.New(efiDir)
	out.LoaderEntry, _ = v.EntrySelected()
	out.LoaderCounter, _ = v.BootCountPath()
	out.MenuDefault, _ = v.EntryDefault()
	if c, ok, _ := loadEntriesConfig(s, e.root, nil); ok {
		out.ESP = c.espName()
		if hr, err := healESP(s, c, false); err != nil {
			fmt.Fprintf(e.stderr, "bootctl: warning: %v\n", err)
		} else {
			out.ESPRepairs = hr.Repairs
			for _, p := range hr.Shared {
				out.ESPShared = append(out.ESPShared, p.Path)
			}
		}
		if files, err := bls.List(c.ESP, bls.DefaultPrefix); err == nil {
			for _, f := range files {
				out.Entries = append(out.Entries, f.File)
			}
		}
	}
	out.Events, _ = s.Events(5)
	out.Etc = etcStatus(e.root, out.Info)
	out.Packages = statusPackages(s, out.Booted, def)
	out.Downloads = pendingDownloads(e, s)
	now := time.Now()
	out.Repositories = remotes(e, s, now)
	if e.json {
		if err := e.printJSON(out); err != nil {
			return err
		}
		return unrepaired(out.ESPRepairs)
	}
	printStatus(e.stdout, &out, def, now)
	return unrepaired(out.ESPRepairs)
}

// printStatus is status in text: booted, default, loader, the txs, pending
// downloads, repositories, the ESP.
func printStatus(w io.Writer, out *statusOut, def uint64, now time.Time) {
	if out.Booted != 0 {
		fmt.Fprintf(w, "Booted:   tx %d", out.Booted)
		if out.Requested != 0 && out.Requested != out.Booted {
			fmt.Fprintf(w, " (fell back from tx %d)", out.Requested)
		}
		if out.Info != nil && out.Info.SignedBy != "" {
			fmt.Fprintf(w, " (signature checked at boot: key %s)", printable(out.Info.SignedBy))
		}
		fmt.Fprintln(w)
		if out.Info != nil {
			for _, f := range out.Info.Failures {
				fmt.Fprintf(w, "          tx %d failed this boot: %s\n", f.Tx, printable(f.Reason))
			}
		}
	} else {
		fmt.Fprintln(w, "Booted:   (not booted by txboot)")
	}
	fmt.Fprintf(w, "Default:  tx %d\n", def)
	printStatusModes(w, out, def)
	printEtcStatus(w, out.Etc)
	if out.LoaderEntry != "" {
		fmt.Fprintf(w, "Loader:   %s", printable(out.LoaderEntry))
		if out.LoaderCounter != "" {
			fmt.Fprintf(w, " (counting: %s)", printable(out.LoaderCounter))
		}
		fmt.Fprintln(w)
	}
	if out.MenuDefault != "" {
		fmt.Fprintf(w, "Menu default: %s (set in the boot menu; it overrides loader.conf until `bootctl set-default` or `rollback` clears it)\n", printable(out.MenuDefault))
	}
	printStatusPackages(w, out.Packages)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\n  ID\tSTATE\tTRIES LEFT\tSIGNED\tVERSION\tDIGEST\tFLAGS\tSUMMARY / LAST FAILURE")
	for i := len(out.Transactions) - 1; i >= 0; i-- {
		t := out.Transactions[i]
		var flags []string
		if t.Booted {
			flags = append(flags, "booted")
		}
		if t.Default {
			flags = append(flags, "default")
		}
		if t.Pinned {
			flags = append(flags, "pinned")
		}
		note := t.Summary
		if t.LastFailure != "" {
			note = "FAILED: " + t.LastFailure
		}
		tries := "-"
		if t.State == txstore.StatePending || t.State == txstore.StateTrying {
			tries = fmt.Sprint(t.TriesLeft)
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.State, tries, signedColumn(t.Signature, t.SignedBy),
			versionColumn(t.Tx), shortDigest(t.Digest), strings.Join(flags, ","), printable(note))
	}
	tw.Flush()
	if len(out.Downloads) > 0 {
		fmt.Fprintln(w)
		printDownloads(w, out.Downloads)
	}
	printRemotes(w, out.Repositories, now)
	if out.ESP != "" {
		fmt.Fprintf(w, "\nEntries on %s: %s\n", printable(out.ESP), printable(strings.Join(out.Entries, " ")))
		for _, r := range out.ESPRepairs {
			fmt.Fprintf(w, "  %s\n", printable(r.String()))
		}
		for _, p := range out.ESPShared {
			fmt.Fprintf(w, "  the fallback entry shares %s with the default's (the ESP had no room for its own copy at the last sync)\n", printable(p))
		}
	}
}
