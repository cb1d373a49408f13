package cli

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// oneIDArg: the verb takes exactly one transaction id.
var oneIDArg = posArgs{min: 1, max: 1, msg: "expected one transaction id, got %d arguments"}

// commitOpts are commit's flags.
type commitOpts struct {
	summary, mkinitramfs, initagent, signKey string
	tries                                    int // 0: txstore's default (3)
	noDefault, consume                       bool
	ef                                       entryFlags
	signer                                   func(string) []sign.Signature // from signKey, by check
	imageSigner                              func(digest, image string) []sign.Signature
}

func commitVerb() *verb {
	o := &commitOpts{}
	return &verb{name: "commit", args: "DIR [--summary S] [--tries N] [--no-default] [--consume] [--sign KEY] [--esp ESP]",
		help: "store DIR (the new /usr's contents) as a new transaction",
		pos:  posArgs{min: 1, max: 1, msg: "commit takes one directory"}, store: storeCreate,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.summary, "summary", "", "one-line description")
			fs.Func("tries", "boot tries before the tx counts as bad, 1..99 (default 3)", rangeFlag(&o.tries, 1, 99, "--tries must be 1..99"))
			fs.BoolVar(&o.noDefault, "no-default", false, "do not make the new tx the default")
			fs.BoolVar(&o.consume, "consume", false, "take DIR's files into the store by hardlink instead of copying, and remove DIR afterwards")
			fs.StringVar(&o.signKey, "sign", "", "ed25519 private key (PEM): sign the new tx's digest and its sealed image into its record")
			fs.StringVar(&o.mkinitramfs, "mkinitramfs", "", "mkinitramfs to build the tx's initrd (default: next to bootctl, or $PATH; never the tx's own)")
			fs.StringVar(&o.initagent, "initagent", "", "initagent for the initrd's /init (default: next to bootctl, or $PATH; never the tx's own)")
			o.ef.register(fs)
		},
		check: func(e *env, args []string) error {
			if err := checkText("--summary", o.summary); err != nil {
				return err
			}
			// The key is read before anything is committed (or a store
			// created): a bad key must not leave an unsigned tx behind.
			if o.signKey != "" {
				k, err := sign.LoadPrivateKey(o.signKey)
				if err != nil {
					return err
				}
				o.signer = func(d string) []sign.Signature { return []sign.Signature{sign.SignTx(k, d)} }
				o.imageSigner = func(d, img string) []sign.Signature { return []sign.Signature{sign.SignImage(k, d, img)} }
			}
			return nil
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			e.progress("committing %s…", args[0])
			tx, st, err := s.Commit(args[0], txstore.CommitOptions{Summary: o.summary, Tries: o.tries, NoDefault: o.noDefault, Consume: o.consume, Sign: o.signer, SignImage: o.imageSigner})
			e.progressDone()
			if err != nil {
				return err
			}
			if st.ConsumeErr != nil {
				fmt.Fprintf(e.stderr, "bootctl: warning: %v\n", st.ConsumeErr)
			}
			if e.json {
				// Only the output differs: the initrd and the entry are
				// still made.
				if err := e.printJSON(map[string]any{"tx": tx, "stats": st}); err != nil {
					return err
				}
				return kernelSide(e, s, tx, o.mkinitramfs, o.initagent, &o.ef)
			}
			fmt.Fprintf(e.stdout, "committed tx %d %s\n", tx.ID, tx.Digest)
			if o.signer != nil && len(tx.Signatures) > 0 {
				fmt.Fprintf(e.stdout, "  signed by key %s\n", tx.Signatures[len(tx.Signatures)-1].KeyID)
				if len(tx.ImageSignatures) > 0 {
					fmt.Fprintf(e.stdout, "  image %s signed by key %s\n", tx.Image, tx.ImageSignatures[len(tx.ImageSignatures)-1].KeyID)
				}
			}
			fmt.Fprintf(e.stdout, "  %d entries, %d files, %s; %d new objects (%s), %d deduplicated\n",
				st.Entries, st.Files, human(st.Bytes), st.NewObjects, human(st.NewBytes), st.Deduplicated)
			if o.consume {
				fmt.Fprintf(e.stdout, "  %d new objects taken by hardlink; %s removed\n", st.Linked, args[0])
			}
			fmt.Fprintf(e.stdout, "  scan+hash %s, store %s, blit %s, total %s\n",
				ms(st.Scan), ms(st.Store), ms(st.BlitTime), ms(st.Total))
			return kernelSide(e, s, tx, o.mkinitramfs, o.initagent, &o.ef)
		}}
}

func listVerb() *verb {
	return &verb{name: "list", help: "list transactions", store: storeRead, exec: func(e *env, s *txstore.Store, args []string) error {
		txs, def, err := snapshot(s)
		if err != nil {
			return err
		}
		ds := pendingDownloads(e, s)
		if e.json {
			return e.printJSON(map[string]any{"default": def, "transactions": listModes(txs), "downloads": ds})
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tTRIES\tMODE\tCREATED\tVERSION\tDIGEST\tFLAGS\tSUMMARY")
		for _, t := range txs {
			var flags []string
			if t.ID == def {
				flags = append(flags, "default")
			}
			if t.Pinned {
				flags = append(flags, "pinned")
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.State, t.TriesLeft, modeColumn(t),
				t.Created.Local().Format("2006-01-02 15:04"), versionColumn(t), shortDigest(t.Digest), strings.Join(flags, ","), printable(t.Summary))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		printDownloads(e.stdout, ds)
		return nil
	}}
}

// pendingDownloads are the store's downloads (pull --download-only) for
// list and status, never nil. An unreadable record is a warning there, not
// a failure: both are what one runs to see what is wrong.
func pendingDownloads(e *env, s *txstore.Store) []*txstore.Download {
	ds, err := s.Downloads()
	if err != nil {
		fmt.Fprintf(e.stderr, "bootctl: warning: pending downloads: %v\n", err)
	}
	if ds == nil {
		ds = []*txstore.Download{}
	}
	return ds
}

// printDownloads prints one line per pending download, with the command
// that applies it.
func printDownloads(w io.Writer, ds []*txstore.Download) {
	for i, d := range ds {
		version := ""
		if d.Version != "" {
			version = printable(d.Version) + " "
		}
		fmt.Fprintf(w, "downloaded, not applied: %s%s (bootctl pull --apply --tx %s)\n", version, d.Digest, applyArg(ds, i))
	}
}

// applyArg is what --tx takes to pick ds[i] (oldest first, as
// Store.Downloads lists them): its version when that is a plain word that
// FindDownload resolves to ds[i] (no newer download with that version),
// else its digest.
func applyArg(ds []*txstore.Download, i int) string {
	v := ds[i].Version
	plain := v != "" && v != "latest" && !strings.HasPrefix(v, "sha256:") &&
		strings.IndexFunc(v, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("._+~:@-", r))
		}) < 0 && v[0] != '-'
	for _, d := range ds[i+1:] {
		if d.Version == v {
			plain = false
		}
	}
	if plain {
		return v
	}
	return ds[i].Digest
}

func showVerb() *verb {
	var id uint64
	var packages bool
	return &verb{name: "show", args: "ID [--packages]", help: "show one transaction; --packages: only its exact package set, as apt takes it",
		pos: oneIDArg, store: storeRead,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&packages, "packages", false, "print only the tx's installed packages, one name=version a line (apt-get install takes them)")
		},
		check: func(e *env, args []string) (err error) { id, err = parseID(args[0]); return err },
		exec: func(e *env, s *txstore.Store, args []string) error {
			if packages {
				return showPackageSet(e, s, id)
			}
			return show(e, s, id)
		}}
}

func show(e *env, s *txstore.Store, id uint64) error {
	t, err := s.Get(id)
	if err != nil {
		return err
	}
	pkgs := showPackagesOf(s, t)
	if e.json {
		return e.printJSON(showOut{Tx: t, Packages: pkgs})
	}
	fmt.Fprintf(e.stdout, "tx %d\n  digest:   %s\n  parent:   %d\n  created:  %s\n  summary:  %s\n  entries:  %d (%s)\n  kernels:  %s\n  state:    %s (tries left %d, spent %d)\n  pinned:   %v\n  tree:     %s\n",
		t.ID, t.Digest, t.Parent, t.Created.Local().Format(time.RFC3339), printable(t.Summary), t.Entries, human(t.Bytes),
		printable(strings.Join(t.Kernels, " ")), t.State, t.TriesLeft, t.Tries, t.Pinned, s.TreeDir(t.ID))
	if t.Version != "" || t.Origin != "" {
		fmt.Fprintf(e.stdout, "  version:  %s (pulled from %s)\n", printable(t.Version), printable(t.Origin))
	}
	if t.LastFailure != "" {
		fmt.Fprintf(e.stdout, "  failure:  %s\n", printable(t.LastFailure))
	}
	printShowImage(e, s, t)
	printShowPackages(e.stdout, pkgs)
	return nil
}

// signatureProblem is the Path of verify's problem for a trusted key's
// signature that does not verify; tree paths start with "usr/".
const signatureProblem = "signature"

// signedNote is what verify's ok line says about a tx's signature.
func signedNote(state, keyID string) string {
	switch state {
	case sigValid:
		return ", signed by " + keyID
	case sigUntrusted:
		return ", signed by untrusted:" + keyID + " (not in the system's trust store)"
	}
	return ""
}

func pruneVerb() *verb {
	var keep int
	var noGC bool
	return &verb{name: "prune", args: "[--keep N] [--no-gc]", help: "remove all but the N newest, pinned, default and booted txs",
		store: storeCreate,
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&keep, "keep", 5, "how many of the newest txs to keep")
			fs.BoolVar(&noGC, "no-gc", false, "do not remove unreferenced objects afterwards")
		},
		check: func(e *env, args []string) error {
			if keep < 1 {
				return usagef("--keep must be at least 1")
			}
			return nil
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			// Entries first, under prune's locks: none may point at a tx
			// that is gone, and the plan cannot change before the removal.
			c, haveEntries, err := loadEntriesConfig(s, e.root, nil)
			if err != nil {
				return err
			}
			res, err := s.PruneWith(keep, []uint64{booted()}, func(plan []uint64) error {
				if !haveEntries || c.RootArg == "" {
					return nil
				}
				rep, err := syncEntries(&initrdBuilder{e: e}, s, c, plan...)
				if err != nil {
					return err
				}
				if !e.json {
					printSync(e, rep)
				}
				return nil
			})
			if res == nil {
				return err // nothing removed
			}
			if err != nil { // records removed, some tree left alone (damage)
				if e.json {
					e.printJSON(map[string]any{"prune": res, "error": err.Error()})
				} else {
					fmt.Fprintf(e.stdout, "removed %d tx(s) %v, kept %v\n", len(res.Removed), res.Removed, res.Kept)
				}
				return fmt.Errorf("prune removed tx(s) %v, but not all of their files: %w", res.Removed, err)
			}
			if !e.json {
				fmt.Fprintf(e.stdout, "removed %d tx(s) %v, kept %v\n", len(res.Removed), res.Removed, res.Kept)
			}
			var gc *txstore.GCStats
			var gcErr error
			if !noGC {
				gc, gcErr = s.GC()
			}
			if e.json {
				out := map[string]any{"prune": res, "gc": gc}
				if gcErr != nil {
					out["gc_error"] = gcErr.Error()
				}
				if err := e.printJSON(out); err != nil {
					return err
				}
			} else if gc != nil {
				fmt.Fprintf(e.stdout, "gc: removed %d objects, freed %s\n", gc.Removed, human(gc.FreedBytes))
				printGCNote(e, gc)
			}
			if gcErr != nil {
				return fmt.Errorf("gc: %w (prune itself succeeded: removed %d tx(s) %v; only gc failed)", gcErr, len(res.Removed), res.Removed)
			}
			return nil
		}}
}

func gcVerb() *verb {
	return &verb{name: "gc", help: "remove objects no transaction references", store: storeCreate, exec: func(e *env, s *txstore.Store, args []string) error {
		gc, err := s.GC()
		if err != nil {
			if gc != nil && !e.json { // what it did before it found the damage
				fmt.Fprintf(e.stdout, "gc: %d objects referenced, removed %d, freed %s\n", gc.Referenced, gc.Removed, human(gc.FreedBytes))
			}
			return err
		}
		if e.json {
			return e.printJSON(gc)
		}
		fmt.Fprintf(e.stdout, "gc: %d objects referenced, removed %d, freed %s\n", gc.Referenced, gc.Removed, human(gc.FreedBytes))
		printGCNote(e, gc)
		return nil
	}}
}

// printGCNote says what gc kept and why (a pull running).
func printGCNote(e *env, gc *txstore.GCStats) {
	if n := gc.Note(); n != "" {
		fmt.Fprintf(e.stdout, "gc: %s\n", n)
	}
}

// pinVerb is pin (pin true) or unpin.
func pinVerb(pin bool) *verb {
	name, help := "pin", "keep a transaction through prune"
	if !pin {
		name, help = "unpin", "let prune remove a transaction again"
	}
	var id uint64
	return &verb{name: name, args: "ID", help: help, pos: oneIDArg, store: storeWrite,
		check: func(e *env, args []string) (err error) { id, err = parseID(args[0]); return err },
		exec: func(e *env, s *txstore.Store, args []string) error {
			if err := s.SetPinned(id, pin); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "tx %d %sned\n", id, name)
			return nil
		}}
}

// manifestName names tx id's manifest object for a problem report.
func manifestName(s *txstore.Store, id uint64) string {
	if t, err := s.Get(id); err == nil {
		return fmt.Sprintf("manifest object sha256:%s of tx %d", t.Manifest, id)
	}
	return fmt.Sprintf("manifest of tx %d", id)
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

func human(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

// kernelSide is what follows a new tx (commit, pull): an initrd for its
// kernel, then the entries when they are managed. A tx with a kernel whose
// entry could not be written fails: the store would name it while the
// loader cannot boot it.
func kernelSide(e *env, s *txstore.Store, tx *txstore.Tx, mkinitramfs, initagent string, ef *entryFlags) error {
	c, ok, err := loadEntriesConfig(s, e.root, ef)
	if err != nil || !ok {
		return err
	}
	b := &initrdBuilder{e: e, mkinitramfs: mkinitramfs, initagent: initagent}
	if err := b.build(s, tx); err != nil {
		return err
	}
	if len(tx.Kernels) > 0 && !e.json {
		fmt.Fprintf(e.stdout, "  initrd for %s: %s\n", tx.Kernels[len(tx.Kernels)-1], initrdPath(s, tx.ID))
	}
	if c.RootArg == "" {
		return nil
	}
	rep, err := syncEntries(b, s, c)
	if err != nil {
		return err
	}
	if err := saveEntriesConfig(s, c); err != nil {
		return err
	}
	if !e.json {
		printSync(e, rep)
	} else {
		printSyncWarnings(e, rep) // stderr: stdout stays JSON
	}
	if len(tx.Kernels) > 0 {
		return entryWritten(tx.ID)(rep)
	}
	return nil
}
