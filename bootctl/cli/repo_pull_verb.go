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

func init() {
	var want, mkinitramfs, initagent string
	var trust []string
	var insecure, noDefault, downloadOnly, apply, discard bool
	var tries, workers int
	var pef entryFlags
	register(&verb{name: "pull", args: "URL [--tx latest|VERSION|sha256:…] [--trust PUBKEY …] [--insecure] [--download-only] | --apply|--discard [--tx …]",
		help: "fetch a transaction from a repository (only the objects the store lacks) and commit it",
		flags: func(fs *flag.FlagSet) {
			want, trust, insecure, noDefault, tries, workers = "latest", nil, false, false, 0, 0
			downloadOnly, apply, discard = false, false, false
			fs.BoolVar(&downloadOnly, "download-only", false, "fetch the tx's objects and manifest into the store (durable) without committing it; 'pull --apply' commits it later")
			fs.BoolVar(&apply, "apply", false, "commit a downloaded tx (--tx picks it, default the newest download) from the store alone, no URL, no network")
			fs.BoolVar(&discard, "discard", false, "drop a downloaded tx's record (--tx picks it); gc then frees its objects")
			fs.StringVar(&want, "tx", "latest", "which tx: latest, a version, or its digest sha256:…")
			fs.Func("trust", "a trusted public key (PEM) for index.sig; repeatable (also "+hostTrustDir+" and ROOT/usr/lib/txboot/trusted.d)", func(p string) error {
				trust = append(trust, p)
				return nil
			})
			fs.BoolVar(&insecure, "insecure", false, "pull even when no trusted key signed the index (a trusted key whose signature does not verify still fails)")
			fs.BoolVar(&noDefault, "no-default", false, "do not make the new tx the default")
			fs.Func("tries", "boot tries before the tx counts as bad, 1..99 (default 3)", rangeFlag(&tries, 1, 99, "--tries must be 1..99"))
			fs.Func("workers", "parallel downloads, 1..64 (default 12)", rangeFlag(&workers, 1, 64, "--workers must be 1..64"))
			fs.StringVar(&mkinitramfs, "mkinitramfs", "", "mkinitramfs to build the tx's initrd (default: the tx's, next to bootctl, or $PATH)")
			fs.StringVar(&initagent, "initagent", "", "initagent for the initrd's /init (default: the tx's, next to bootctl, or $PATH)")
			pef = entryFlags{}
			pef.register(fs)
		},
		run: func(e *env, args []string) error {
			if apply || discard {
				if len(args) != 0 || downloadOnly || (apply && discard) {
					return usagef("pull --apply and --discard take no URL and exclude each other and --download-only")
				}
				return pullLocal(e, want, apply, noDefault, tries, mkinitramfs, initagent, &pef)
			}
			if len(args) != 1 {
				return usagef("pull takes one repository URL")
			}
			keys, err := trustedKeys(e.root, trust)
			if err != nil {
				return err
			}
			conns := workers
			if conns == 0 {
				conns = repo.DefaultWorkers
			}
			f, err := repo.NewFetcher(args[0], conns)
			if err != nil {
				return usagef("%v", err)
			}
			if h, ok := f.(*repo.HTTPFetcher); ok {
				defer h.CloseIdle()
			}
			s, err := e.open(true)
			if err != nil {
				return err
			}
			defer s.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
			defer stop()
			e.progress("pulling %s…", args[0])
			po := repo.PullOptions{
				Tx: want, Trusted: keys, Insecure: insecure, Workers: workers,
				Commit:   txstore.CommitOptions{Tries: tries, NoDefault: noDefault},
				Progress: func(p repo.Progress) { e.progress("%s", progressLine(p)) },
				Warn: func(msg string) {
					e.progressDone()
					fmt.Fprintf(e.stderr, "bootctl pull: %s\n", msg)
				},
			}
			if downloadOnly {
				d, st, err := repo.Download(ctx, s, f, args[0], po)
				e.progressDone()
				if errors.Is(err, repo.ErrNoTx) {
					return exitError{ExitNotFound, err.Error()}
				}
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(map[string]any{"download": d, "stats": st})
				}
				printDownload(e, d, st, insecure)
				return nil
			}
			tx, st, err := repo.Pull(ctx, s, f, args[0], po)
			e.progressDone()
			if errors.Is(err, repo.ErrNoTx) {
				return exitError{ExitNotFound, err.Error()}
			}
			if err != nil {
				return err
			}
			if e.json {
				if err := e.printJSON(map[string]any{"tx": tx, "stats": st}); err != nil {
					return err
				}
			} else {
				printPull(e, tx, st, insecure)
			}
			if st.Existing != 0 {
				return nil
			}
			// As after commit: the tx's initrd, then the entries.
			return kernelSide(e, s, tx, mkinitramfs, initagent, &pef)
		}})
}

// pullLocal is pull --apply (commit a download from the store alone) and
// pull --discard (drop its record).
func pullLocal(e *env, want string, apply, noDefault bool, tries int, mkinitramfs, initagent string, pef *entryFlags) error {
	s, err := e.openExisting(true)
	if err != nil {
		return err
	}
	defer s.Close()
	d, err := s.FindDownload(want)
	if errors.Is(err, txstore.ErrNoDownload) {
		return exitError{ExitNotFound, err.Error()}
	}
	if err != nil {
		return err
	}
	if !apply {
		if err := s.RemoveDownload(d.Digest); err != nil {
			return err
		}
		if e.json {
			return e.printJSON(map[string]any{"discarded": d})
		}
		fmt.Fprintf(e.stdout, "discarded download %s (version %s); 'bootctl gc' frees its objects\n", d.Digest, printable(d.Version))
		return nil
	}
	tx, existed, err := s.ApplyDownload(d, txstore.CommitOptions{Tries: tries, NoDefault: noDefault})
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
	return kernelSide(e, s, tx, mkinitramfs, initagent, pef)
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
