package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
	"golang.org/x/sys/unix"
)

// hostTrustDir holds the machine's trusted keys (besides the tx's own
// ROOT/usr/lib/txboot/trusted.d).
const hostTrustDir = "/etc/txboot/trusted.d"

// pullOpts are pull's flags and what check makes of them.
type pullOpts struct {
	want, mkinitramfs, initagent                      string
	trust                                             []string
	insecure, noDefault, downloadOnly, apply, discard bool
	tries, workers                                    int
	ef                                                entryFlags
	keys                                              []sign.PublicKey // trusted, by check
	fetcher                                           repo.Fetcher     // for the URL, by check
}

// local: --apply or --discard, from the store alone.
func (o *pullOpts) local() bool { return o.apply || o.discard }

func pullVerb() *verb {
	o := &pullOpts{}
	return &verb{name: "pull", args: "URL [--tx latest|VERSION|sha256:…] [--trust PUBKEY …] [--insecure] [--download-only] | --apply|--discard [--tx …]",
		help: "fetch a transaction from a repository (only the objects the store lacks) and commit it",
		pos:  posArgs{max: 1, msg: "pull takes one repository URL"}, store: storeCreate,
		// A download is applied or discarded in an existing store: a
		// missing one is "no store" (exit 4), not an empty new one.
		openOpts: func(so *txstore.Options) { so.Create = !o.local() },
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&o.downloadOnly, "download-only", false, "fetch the tx's objects and manifest into the store (durable) without committing it; 'pull --apply' commits it later")
			fs.BoolVar(&o.apply, "apply", false, "commit a downloaded tx (--tx picks it, default the newest download) from the store alone, no URL, no network")
			fs.BoolVar(&o.discard, "discard", false, "drop a downloaded tx's record (--tx picks it); gc then frees its objects")
			fs.StringVar(&o.want, "tx", "latest", "which tx: latest, a version, or its digest sha256:…")
			fs.Func("trust", "a trusted public key (PEM) for index.sig; repeatable (also "+hostTrustDir+" and ROOT/usr/lib/txboot/trusted.d)", func(p string) error {
				o.trust = append(o.trust, p)
				return nil
			})
			fs.BoolVar(&o.insecure, "insecure", false, "pull even when no trusted key signed the index (a trusted key whose signature does not verify still fails)")
			fs.BoolVar(&o.noDefault, "no-default", false, "do not make the new tx the default")
			fs.Func("tries", "boot tries before the tx counts as bad, 1..99 (default 3)", rangeFlag(&o.tries, 1, 99, "--tries must be 1..99"))
			fs.Func("workers", "parallel downloads, 1..64 (default 12)", rangeFlag(&o.workers, 1, 64, "--workers must be 1..64"))
			fs.StringVar(&o.mkinitramfs, "mkinitramfs", "", "mkinitramfs to build the tx's initrd (default: the tx's, next to bootctl, or $PATH)")
			fs.StringVar(&o.initagent, "initagent", "", "initagent for the initrd's /init (default: the tx's, next to bootctl, or $PATH)")
			o.ef.register(fs)
		},
		check: func(e *env, args []string) error {
			if o.local() {
				if len(args) != 0 || o.downloadOnly || (o.apply && o.discard) {
					return usagef("pull --apply and --discard take no URL and exclude each other and --download-only")
				}
				return nil
			}
			if len(args) != 1 {
				return usagef("pull takes one repository URL")
			}
			keys, err := trustedKeys(e.root, o.trust)
			if err != nil {
				return err
			}
			o.keys = keys
			conns := o.workers
			if conns == 0 {
				conns = repo.DefaultWorkers
			}
			if o.fetcher, err = repo.NewFetcher(args[0], conns); err != nil {
				return usagef("%v", err)
			}
			return nil
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			if h, ok := o.fetcher.(*repo.HTTPFetcher); ok {
				defer h.CloseIdle()
			}
			if o.local() {
				return pullLocal(e, s, o)
			}
			return pull(e, s, args[0], o)
		}}
}

// pull fetches the tx o.want from url into s and commits it (or, with
// --download-only, only stores it).
func pull(e *env, s *txstore.Store, url string, o *pullOpts) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	e.progress("pulling %s…", url)
	po := repo.PullOptions{
		Tx: o.want, Trusted: o.keys, Insecure: o.insecure, Workers: o.workers,
		Commit:   txstore.CommitOptions{Tries: o.tries, NoDefault: o.noDefault},
		Progress: func(p repo.Progress) { e.progress("%s", progressLine(p)) },
		Warn: func(msg string) {
			e.progressDone()
			fmt.Fprintf(e.stderr, "bootctl pull: %s\n", msg)
		},
	}
	if o.downloadOnly {
		d, st, err := repo.Download(ctx, s, o.fetcher, url, po)
		e.progressDone()
		if err != nil {
			return pullError(err)
		}
		if e.json {
			return e.printJSON(map[string]any{"download": d, "stats": st})
		}
		printDownload(e, d, st, o.insecure)
		return nil
	}
	tx, st, err := repo.Pull(ctx, s, o.fetcher, url, po)
	e.progressDone()
	if err != nil {
		return pullError(err)
	}
	if e.json {
		if err := e.printJSON(map[string]any{"tx": tx, "stats": st}); err != nil {
			return err
		}
	} else {
		printPull(e, tx, st, o.insecure)
	}
	if st.Existing != 0 {
		return nil
	}
	// As after commit: the tx's initrd, then the entries.
	return kernelSide(e, s, tx, o.mkinitramfs, o.initagent, &o.ef)
}

// pullLocal is pull --apply (commit a download from the store alone) and
// pull --discard (drop its record).
func pullLocal(e *env, s *txstore.Store, o *pullOpts) error {
	d, err := s.FindDownload(o.want)
	if errors.Is(err, txstore.ErrNoDownload) {
		return exitError{ExitNotFound, err.Error()}
	}
	if err != nil {
		return err
	}
	if !o.apply {
		if err := s.RemoveDownload(d.Digest); err != nil {
			return err
		}
		if e.json {
			return e.printJSON(map[string]any{"discarded": d})
		}
		fmt.Fprintf(e.stdout, "discarded download %s (version %s); 'bootctl gc' frees its objects\n", d.Digest, printable(d.Version))
		return nil
	}
	tx, existed, err := s.ApplyDownload(d, txstore.CommitOptions{Tries: o.tries, NoDefault: o.noDefault})
	if err != nil {
		return err
	}
	if e.json {
		if err := e.printJSON(map[string]any{"tx": tx, "existing": existed}); err != nil {
			return err
		}
	} else if existed {
		fmt.Fprintf(e.stdout, "tx %d already is %s (version %s); download record dropped\n", tx.ID, tx.Digest, printable(d.Version))
	} else {
		fmt.Fprintf(e.stdout, "applied tx %d %s (version %s) from the download\n", tx.ID, tx.Digest, printable(tx.Version))
	}
	if existed {
		return nil
	}
	return kernelSide(e, s, tx, o.mkinitramfs, o.initagent, &o.ef)
}

func printDownload(e *env, d *txstore.Download, st *repo.PullStats, insecure bool) {
	if d == nil {
		fmt.Fprintf(e.stdout, "tx %d already is %s (version %s); nothing fetched\n", st.Existing, st.Digest, printable(st.Version))
		return
	}
	fmt.Fprintf(e.stdout, "downloaded %s (version %s), not committed\n", d.Digest, printable(d.Version))
	switch {
	case st.Verified != "":
		fmt.Fprintf(e.stdout, "  index signed by %s\n", printable(st.Verified))
	case insecure:
		fmt.Fprintf(e.stdout, "  index NOT verified (--insecure)\n")
	}
	printPullCounts(e, st)
	fmt.Fprintf(e.stdout, "  apply with: bootctl pull --apply --tx %s\n", d.Digest)
}

func printPullCounts(e *env, st *repo.PullStats) {
	delta := ""
	switch st.Delta {
	case "used":
		delta = ", manifest as a delta"
	case "none":
		delta = ", whole manifest (the repository has no delta for this update)"
	case "fallback":
		delta = ", whole manifest (delta unusable)"
	}
	fmt.Fprintf(e.stdout, "  %d objects: %d fetched (%s, %s on the wire), %d already present (%s, %d copied from another mode); %s of metadata%s\n",
		st.Objects, st.Fetched, human(st.FetchedBytes), human(st.WireBytes), st.Present, human(st.PresentBytes), st.Copied, human(st.MetaBytes), delta)
}

// trustedKeys are the --trust files, then the host's and the root's
// trust directories.
func trustedKeys(root string, files []string) ([]sign.PublicKey, error) {
	var keys []sign.PublicKey
	seen := map[string]bool{}
	for _, p := range files {
		k, err := sign.LoadPublicKey(p)
		if err != nil {
			return nil, usagef("--trust: %v", err)
		}
		if !seen[k.ID] {
			seen[k.ID] = true
			keys = append(keys, k)
		}
	}
	dirs, err := sign.LoadTrustDirs(hostTrustDir, filepath.Join(root, "usr/lib/txboot/trusted.d"))
	if err != nil {
		return nil, err
	}
	for _, k := range dirs {
		if !seen[k.ID] {
			seen[k.ID] = true
			keys = append(keys, k)
		}
	}
	return keys, nil
}

func progressLine(p repo.Progress) string {
	rate := ""
	if s := p.Elapsed.Seconds(); s > 0 {
		rate = fmt.Sprintf(", %s/s", human(int64(float64(p.BytesDone)/s)))
	}
	return fmt.Sprintf("pulling: %d/%d objects, %s/%s%s", p.ObjectsDone, p.Objects, human(p.BytesDone), human(p.Bytes), rate)
}

func printPull(e *env, tx *txstore.Tx, st *repo.PullStats, insecure bool) {
	if st.Existing != 0 {
		fmt.Fprintf(e.stdout, "tx %d already is %s (version %s); nothing fetched\n", tx.ID, tx.Digest, printable(st.Version))
		return
	}
	fmt.Fprintf(e.stdout, "pulled tx %d %s (version %s)\n", tx.ID, tx.Digest, printable(tx.Version))
	switch {
	case st.Verified != "":
		fmt.Fprintf(e.stdout, "  index signed by %s\n", printable(st.Verified))
	case insecure:
		fmt.Fprintf(e.stdout, "  index NOT verified (--insecure)\n")
	}
	printPullCounts(e, st)
}

// versionColumn is a tx's remote version in list and status ("-" for a
// local commit).
func versionColumn(t *txstore.Tx) string {
	if t.Version == "" {
		return "-"
	}
	return printable(t.Version)
}

// pullError: no such tx in the index is exit 4, as for a local tx id.
func pullError(err error) error {
	if errors.Is(err, repo.ErrNoTx) {
		return exitError{ExitNotFound, err.Error()}
	}
	return err
}
