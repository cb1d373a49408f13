package cli

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/txboot/txboot/bootctl/bls"
	"github.com/txboot/txboot/bootctl/initrd"
	"github.com/txboot/txboot/bootctl/install"
	"github.com/txboot/txboot/txstore"
)

// installVerb: install.Run opens (and creates) the store itself, after it
// has checked ROOT and the ESP.
func installVerb() *verb {
	var ef entryFlags
	var mkinitramfs, initagent string
	return &verb{name: "install", args: "--root ROOT --esp ESP [--root-arg SPEC] [--options S] [--keep N]",
		help: "turn the OS tree ROOT (merged /usr) into a txboot system: its /usr becomes tx 1; systemd-boot and entries on ESP",
		pos:  posArgs{msg: "install takes no arguments (the OS tree is --root ROOT)"}, store: storeSelf,
		flags: func(fs *flag.FlagSet) {
			ef.register(fs)
			fs.StringVar(&mkinitramfs, "mkinitramfs", "", "mkinitramfs to install and build the initrd with (default: next to bootctl, or $PATH)")
			fs.StringVar(&initagent, "initagent", "", "initagent to install as the initrd's /init (default: next to bootctl, or $PATH)")
		},
		exec: func(e *env, _ *txstore.Store, args []string) error {
			if ef.esp == "" {
				return usagef("install needs --esp ESP (the mounted EFI system partition, or a directory to copy onto one)")
			}
			// Saved with the settings: later verbs run from anywhere.
			if abs, err := filepath.Abs(ef.esp); err == nil {
				ef.esp = abs
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the running bootctl: %w", err)
			}
			// The host's tools: copied into the tree when it has none, and
			// always what builds the initrd (the tree's never run here).
			o := install.Options{Root: e.root, ESP: ef.esp, RootArg: ef.rootArg, Options: ef.options, OptionsSet: ef.optionsSet,
				Bootctl: self, Initagent: initrd.FindTool(initagent, "initagent"), Mkinitramfs: initrd.FindTool(mkinitramfs, "mkinitramfs"),
				Timeout: e.timeout, Log: e.stdout}
			b := &initrdBuilder{e: e, mkinitramfs: o.Mkinitramfs, initagent: o.Initagent}
			o.Entries = func(s *txstore.Store, tx *txstore.Tx, rootArg string) error {
				f := ef
				if rootArg != "" {
					f.rootArg = rootArg
				}
				c, ok, err := loadEntriesConfig(s, e.root, &f)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("ESP %s: not a directory", ef.esp)
				}
				if tx != nil {
					if err := b.build(s, tx); err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "install: initrd for %s: %s\n", tx.Kernels[len(tx.Kernels)-1], initrdPath(s, tx.ID))
				}
				rep, err := syncEntries(b, s, c)
				if err != nil {
					return err
				}
				if err := saveEntriesConfig(s, c); err != nil {
					return err
				}
				printSync(e, rep)
				if tx != nil {
					return entryWritten(tx.ID)(rep)
				}
				if len(rep.Problems) > 0 {
					return exitError{ExitFail, fmt.Sprintf("%d problem(s) with entries on %s (see the warnings)", len(rep.Problems), c.ESP)}
				}
				if !rep.Changed() {
					fmt.Fprintln(e.stdout, "entries: up to date")
				}
				return nil
			}
			res, err := install.Run(o)
			if err != nil {
				return err
			}
			if res.Tx != nil {
				fmt.Fprintf(e.stdout, "installed: tx %d boots from %s (systemd-boot; entries in %s)\n", res.Tx.ID, ef.esp, bls.EntriesDir)
			}
			return nil
		}}
}
