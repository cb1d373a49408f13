package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/trust"
	"golang.org/x/sys/unix"
)

// pullOpts are pull's flags and what check makes of them.
type pullOpts struct {
	want, mkinitramfs, initagent                      string
	trust                                             []string
	insecure, noDefault, downloadOnly, apply, discard bool
	allowDowngrade                                    bool
	tries, workers                                    int
	timeout                                           time.Duration // the whole network part
	ef                                                entryFlags
	keys                                              []sign.PublicKey // trusted, by check
	fetcher                                           repo.Fetcher     // for the URL, by check
}

// local: --apply or --discard, from the store alone.
func (o *pullOpts) local() bool { return o.apply || o.discard }

func pullVerb() *verb {
	o := &pullOpts{timeout: defaultPullTimeout}
	return &verb{name: "pull", args: "URL [--tx latest|VERSION|sha256:…] [--trust PUBKEY …] [--insecure] [--download-only] [--allow-downgrade] [--timeout D] | --apply|--discard [--tx …]",
		help: "fetch a transaction from a repository (only the objects the store lacks) and commit it",
		pos:  posArgs{max: 1, msg: "pull takes one repository URL"},
		// Opened by exec: fetching holds no writer lock (see exec).
		store: storeSelf,
		flags: func(fs *flag.FlagSet) {
			fs.Func("timeout", "give up when the network part (index, manifest, objects, retries) takes longer than this, e.g. 30m or 4h; must be positive, a pull always has a limit (default "+strings.TrimSuffix(defaultPullTimeout.String(), "0s")+"; the store lock wait is --lock-timeout)", func(v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d <= 0 {
					return errors.New("--timeout must be a positive duration such as 30m or 4h (a pull always has a time limit)")
				}
				o.timeout = d
				return nil
			})
			fs.BoolVar(&o.downloadOnly, "download-only", false, "fetch the tx's objects and manifest into the store (durable) without committing it; 'pull --apply' commits it later")
			fs.BoolVar(&o.apply, "apply", false, "commit a downloaded tx (--tx picks it, default the newest download) from the store alone, no URL, no network")
			fs.BoolVar(&o.discard, "discard", false, "drop a downloaded tx's record (--tx picks it); gc then frees its objects")
			fs.StringVar(&o.want, "tx", "latest", "which tx: latest, a version, or its digest sha256:…")
			fs.Func("trust", "a trusted public key (PEM) for index.sig, for this pull; repeatable (the system's trust store counts too: ROOT/etc/txboot/trusted.d, keys certified by a repository's signed key statement, the booted tx's once it is good)", func(p string) error {
				o.trust = append(o.trust, p)
				return nil
			})
			fs.BoolVar(&o.insecure, "insecure", false, "pull an unsigned repository; refused when the system trusts any key or --trust is given")
			fs.BoolVar(&o.noDefault, "no-default", false, "do not make the new tx the default")
			fs.BoolVar(&o.allowDowngrade, "allow-downgrade", false, "make the tx the default even when it is older (earlier in the index) than the current default")
			fs.Func("tries", "boot tries before the tx counts as bad, 1..99 (default 3)", rangeFlag(&o.tries, 1, 99, "--tries must be 1..99"))
			fs.Func("workers", "parallel downloads, 1..64 (default 12)", rangeFlag(&o.workers, 1, 64, "--workers must be 1..64"))
			fs.StringVar(&o.mkinitramfs, "mkinitramfs", "", "mkinitramfs to build the tx's initrd (default: next to bootctl, or $PATH; never the tx's own)")
			fs.StringVar(&o.initagent, "initagent", "", "initagent for the initrd's /init (default: next to bootctl, or $PATH; never the tx's own)")
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
			keys, err := trustFlagKeys(o.trust)
			if err != nil {
				return err
			}
			if o.insecure && len(keys) > 0 {
				return usagef("--insecure with --trust: a repository those keys did not sign would pass; drop --insecure")
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
		exec: func(e *env, _ *txstore.Store, args []string) error {
			if h, ok := o.fetcher.(*repo.HTTPFetcher); ok {
				defer h.CloseIdle()
			}
			if o.local() {
				// A download is applied or discarded in an existing store
				// (a missing one is "no store", exit 4, not an empty new
				// one), by the writer.
				s, err := e.openExisting(true)
				if err != nil {
					return err
				}
				defer s.Close()
				return pullLocal(e, s, o)
			}
			// Fetching holds no writer lock, so mark-good, set-default
			// and the health service are not kept out by a slow network;
			// repo.Pull takes it for the commit and it stays held for
			// the initrd and entries until Close.
			s, err := txstore.OpenFetch(e.root, txstore.Options{Create: true, Timeout: e.timeout})
			if err != nil {
				return err
			}
			defer s.Close()
			return pull(e, s, args[0], o)
		}}
}

// defaultPullTimeout bounds a pull's network part unless --timeout says
// otherwise: long enough for a whole tree over a slow link, short enough
// that a server trickling bytes does not keep a pull (and its fetch lock,
// which defers gc) alive for ever.
const defaultPullTimeout = 30 * time.Minute

// timeoutError names --timeout when the pull ran out of it.
func timeoutError(err error, limit time.Duration) error {
	var de *repo.DeadlineError
	if !errors.As(err, &de) {
		return err
	}
	return fmt.Errorf("took longer than --timeout %v and gave up; nothing was recorded (objects already checked stay, a re-run fetches only the rest): %w", limit, de.Err)
}

// pull fetches the tx o.want from url into s and commits it (or, with
// --download-only, only stores it).
func pull(e *env, s *txstore.Store, url string, o *pullOpts) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	keys, err := pullKeys(e, s, o)
	if err != nil {
		return err
	}
	e.progress("pulling %s…", url)
	po := repo.PullOptions{
		Tx: o.want, Trusted: keys, Insecure: o.insecure, Workers: o.workers, AllowDowngrade: o.allowDowngrade,
		TrustDir: filepath.Join(s.Dir, repo.TrustDirName), Timeout: o.timeout, MemoryLimit: true,
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
			return pullError(timeoutError(err, o.timeout))
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
		return pullError(timeoutError(err, o.timeout))
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

// trustFlagKeys reads the --trust files.
func trustFlagKeys(files []string) ([]sign.PublicKey, error) {
	var keys []sign.PublicKey
	for _, p := range files {
		k, err := sign.LoadPublicKey(p)
		if err != nil {
			return nil, usagef("--trust: %v", err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// pullKeys are the keys a pull checks with: --trust, then the system's
// trust store (never anything from the tx being pulled). --insecure is
// refused when there is any: it would let through a repository that none
// of them signed.
func pullKeys(e *env, s *txstore.Store, o *pullOpts) ([]sign.PublicKey, error) {
	set, err := systemTrust(e, s)
	if err != nil {
		return nil, err
	}
	keys := slices.Clone(o.keys)
	for _, k := range set.Keys {
		if !slices.ContainsFunc(keys, func(x sign.PublicKey) bool { return x.ID == k.ID }) {
			keys = append(keys, k)
		}
	}
	if o.insecure && len(keys) > 0 {
		return nil, usagef("--insecure refused: this system trusts %d keys (%s, %s); an index none of them signed is refused, so drop --insecure",
			len(keys), filepath.Join(s.Root, trust.EtcDir), filepath.Join(s.Dir, repo.TrustDirName, "keys"))
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
