package cli

import (
	"flag"
	"fmt"
	"strings"

	"github.com/txboot/txboot/txstore"
)

// fsckVerb is thin: the checks and the rebuild live in txstore (fsck.go).
func fsckVerb() *verb {
	var repair bool
	return &verb{name: "fsck", args: "[--repair]", help: "check store.db; --repair rebuilds it from the trees and manifests",
		store: storeRead, writeWhen: func() bool { return repair },
		// NoCleanup: a writer's cleanup lists the records to find
		// leftover trees, which a damaged database cannot do.
		openOpts: func(o *txstore.Options) { o.NoCleanup = true },
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&repair, "repair", false, "rebuild a damaged store.db (the old one is kept as store.db.corrupt-TIME)")
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			rep, err := s.Fsck()
			if err != nil {
				return err
			}
			if !repair || len(rep.Problems) == 0 {
				if e.json {
					if err := e.printJSON(rep); err != nil {
						return err
					}
				} else {
					printFsck(e, rep)
				}
				if len(rep.Problems) > 0 {
					return exitError{ExitProblems, fmt.Sprintf("%s: %d problem(s); 'bootctl fsck --repair' rebuilds it from the trees and manifests", rep.DB, len(rep.Problems))}
				}
				return nil
			}
			rr, err := s.Rebuild()
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(map[string]any{"check": rep, "rebuild": rr})
			}
			printFsck(e, rep)
			ids := make([]string, len(rr.Txs))
			for i, t := range rr.Txs {
				ids[i] = fmt.Sprint(t.ID)
			}
			fmt.Fprintf(e.stdout, "rebuilt %s: %d transaction(s) [%s], %d record(s) kept from the old database; default tx %d\n",
				rr.DB, len(rr.Txs), strings.Join(ids, " "), rr.Salvaged, rr.Default)
			if rr.Saved != "" {
				fmt.Fprintf(e.stdout, "the old database is kept as %s\n", printable(rr.Saved))
			}
			for _, p := range rr.SetAside {
				fmt.Fprintf(e.stdout, "no manifest matches a tree; set aside as %s\n", printable(p))
			}
			for _, p := range rr.Skipped {
				fmt.Fprintf(e.stdout, "skipped %s\n", printable(p))
			}
			return nil
		}}
}

func printFsck(e *env, rep *txstore.FsckReport) {
	if len(rep.Problems) == 0 {
		fmt.Fprintf(e.stdout, "%s: ok (%d transactions)\n", rep.DB, rep.Records)
		return
	}
	fmt.Fprintf(e.stdout, "%s: %d problem(s)\n", rep.DB, len(rep.Problems))
	for _, p := range rep.Problems {
		fmt.Fprintf(e.stdout, "  %s\n", printable(p))
	}
}
