package cli

import (
	"flag"
	"fmt"
	"strings"

	"github.com/txboot/txboot/txstore"
)

// fsckVerb is thin: the checks and the rebuild live in txstore (fsck.go).
// Two kinds of findings: store.db damage (rep.Problems: --repair rebuilds
// the database) and txs whose sealed image is missing or stale
// (rep.Images: --repair builds each again with Store.Seal; the database
// is sound then and is left alone).
func fsckVerb() *verb {
	var repair bool
	return &verb{name: "fsck", args: "[--repair]", help: "check store.db and the txs' images; --repair rebuilds them",
		store: storeRead, writeWhen: func() bool { return repair },
		// NoCleanup: a writer's cleanup lists the records to find
		// leftover trees, which a damaged database cannot do.
		openOpts: func(o *txstore.Options) { o.NoCleanup = true },
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&repair, "repair", false, "rebuild a damaged store.db (the old one is kept as store.db.corrupt-TIME) and missing or stale images")
		},
		exec: func(e *env, s *txstore.Store, args []string) error {
			rep, err := s.Fsck()
			if err != nil {
				return err
			}
			if !repair || (len(rep.Problems) == 0 && len(rep.Images) == 0) {
				return fsckCheck(e, rep)
			}
			return fsckRepair(e, s, rep)
		}}
}

// fsckCheck prints what Fsck found; any finding is exit 3.
func fsckCheck(e *env, rep *txstore.FsckReport) error {
	if e.json {
		if err := e.printJSON(rep); err != nil {
			return err
		}
	} else {
		printFsck(e, rep)
	}
	var found []string
	if n := len(rep.Problems); n > 0 {
		found = append(found, fmt.Sprintf("%s: %d problem(s)", rep.DB, n))
	}
	if n := len(rep.Images); n > 0 {
		found = append(found, fmt.Sprintf("%d image(s) missing or stale", n))
	}
	if len(found) == 0 {
		return nil
	}
	return exitError{ExitProblems, strings.Join(found, "; ") + "; 'bootctl fsck --repair' rebuilds " + fsckWhat(rep)}
}

// fsckWhat is what --repair would rebuild.
func fsckWhat(rep *txstore.FsckReport) string {
	switch {
	case len(rep.Images) == 0:
		return "it from the trees and manifests"
	case len(rep.Problems) == 0:
		return "them (so does 'bootctl seal ID')"
	}
	return "the database from the trees and manifests, then the images"
}

// fsckRepairOut is fsck --repair --json.
type fsckRepairOut struct {
	Check   *txstore.FsckReport    `json:"check"`
	Rebuild *txstore.RebuildReport `json:"rebuild,omitempty"`
	Seal    []sealOut              `json:"seal,omitempty"`
}

// fsckRepair rebuilds a damaged store.db, then the images found missing
// or stale (checked again after a rebuild: its records are new).
func fsckRepair(e *env, s *txstore.Store, rep *txstore.FsckReport) error {
	out := fsckRepairOut{Check: rep}
	images := rep.Images
	if len(rep.Problems) > 0 {
		rr, err := s.Rebuild()
		if err != nil {
			return err
		}
		out.Rebuild = rr
		if again, err := s.Fsck(); err == nil {
			images = again.Images
		}
	}
	ids := make([]uint64, len(images))
	for i, p := range images {
		ids[i] = p.ID
	}
	var changed bool
	out.Seal, changed = sealAll(e, s, ids)
	if e.json {
		if err := e.printJSON(out); err != nil {
			return err
		}
	} else {
		printFsck(e, rep)
		if out.Rebuild != nil {
			printRebuild(e, out.Rebuild)
		}
		for _, o := range out.Seal {
			fmt.Fprintf(e.stdout, "tx %d: %s\n", o.ID, fsckSealLine(o))
		}
	}
	return sealFinish(e, s, out.Seal, changed)
}

func printFsck(e *env, rep *txstore.FsckReport) {
	if len(rep.Problems) == 0 {
		fmt.Fprintf(e.stdout, "%s: ok (%d transactions)\n", rep.DB, rep.Records)
	} else {
		fmt.Fprintf(e.stdout, "%s: %d problem(s)\n", rep.DB, len(rep.Problems))
		for _, p := range rep.Problems {
			fmt.Fprintf(e.stdout, "  %s\n", printable(p))
		}
	}
	for _, p := range rep.Images {
		fmt.Fprintf(e.stdout, "tx %d: image: %s\n", p.ID, printable(p.Problem))
	}
}

func printRebuild(e *env, rr *txstore.RebuildReport) {
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
}

// fsckSealLine says what Store.Seal did to a tx whose image fsck found
// missing or stale.
func fsckSealLine(o sealOut) string {
	switch {
	case o.Error != "":
		return "image not rebuilt: " + printable(o.Error)
	case o.Image == "":
		return "image not rebuilt: " + printable(o.Note)
	}
	line := "image " + o.Image + " rebuilt"
	if !o.Built {
		line = "image " + o.Image + " is current"
	}
	if o.Sealed {
		return line + "; sealed"
	}
	return line + "; not sealed: " + printable(o.Note)
}
