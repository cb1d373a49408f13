package cli

import (
	"flag"
	"fmt"
	"os"
	"strings"

	txrun "github.com/txboot/txboot/bootctl/run"
	"github.com/txboot/txboot/txstore"
)

// runOpts are the flags run and shell share.
type runOpts struct {
	from                   uint64
	summary                string
	tries                  int
	noDefault              bool
	mkinitramfs, initagent string
	ef                     entryFlags
}

func (o *runOpts) register(fs *flag.FlagSet) {
	fs.Func("from", "the tx to start from (default: the default tx, a pending one included)", func(s string) (err error) {
		o.from, err = parseID(s)
		return err
	})
	fs.StringVar(&o.summary, "summary", "", "one-line description (default: the command line)")
	fs.Func("tries", "boot tries before the new tx counts as bad, 1..99 (default 3)", rangeFlag(&o.tries, 1, 99, "--tries must be 1..99"))
	fs.BoolVar(&o.noDefault, "no-default", false, "do not make the new tx the default")
	fs.StringVar(&o.mkinitramfs, "mkinitramfs", "", "mkinitramfs for the new tx's initrd (default: next to bootctl, or $PATH; never the tx's own)")
	fs.StringVar(&o.initagent, "initagent", "", "initagent for the initrd's /init (default: next to bootctl, or $PATH; never the tx's own)")
	o.ef.register(fs)
}

func runVerb() *verb {
	o := &runOpts{}
	return &verb{name: "run", args: "[--from ID] [--summary S] [--tries N] [--no-default] -- COMMAND [ARGS…]",
		help: "run COMMAND on a working copy of a tx's /usr and /etc; what it changes becomes a new tx (e.g. run -- apt-get install -y nginx)",
		pos:  posArgs{min: 1, max: -1, msg: "run needs a command: bootctl run -- COMMAND [ARGS…]"}, store: storeWrite,
		flags: o.register,
		check: func(e *env, args []string) error { return checkText("--summary", o.summary) },
		exec:  func(e *env, s *txstore.Store, args []string) error { return doRun(e, s, o, args, false) }}
}

func shellVerb() *verb {
	o := &runOpts{}
	return &verb{name: "shell", args: "[--from ID] [--summary S] [--tries N] [--no-default]",
		help: "an interactive shell on a working copy of a tx's /usr and /etc; exit 0 records what changed as a new tx",
		pos:  posArgs{msg: "shell takes no arguments (bootctl run -- COMMAND runs one command)"}, store: storeWrite,
		flags: o.register,
		check: func(e *env, args []string) error { return checkText("--summary", o.summary) },
		exec: func(e *env, s *txstore.Store, args []string) error {
			if o.summary == "" {
				o.summary = "bootctl shell"
			}
			return doRun(e, s, o, []string{"sh", "-c", `if command -v bash >/dev/null; then exec bash --norc -i; else exec sh -i; fi`}, true)
		}}
}

// doRun runs the command, then makes the new tx's initrd and entry as
// commit does. The command's exit code is bootctl's when it fails.
func doRun(e *env, s *txstore.Store, o *runOpts, argv []string, interactive bool) error {
	ro := txrun.Options{Root: e.root, From: o.from, Argv: argv, Interactive: interactive,
		Commit: txstore.CommitOptions{Summary: o.summary, Tries: o.tries, NoDefault: o.noDefault},
		Stdin:  os.Stdin, Stdout: e.stdout, Stderr: e.stderr}
	if err := announce(e, s, o.from); err != nil {
		return err
	}
	res, err := txrun.Run(s, ro)
	if err != nil {
		return err
	}
	if res.Code != 0 {
		fmt.Fprintf(e.stderr, "bootctl run: the command exited with %d; nothing recorded\n", res.Code)
		return exitError{res.Code, ""}
	}
	if res.Unchanged {
		fmt.Fprintf(e.stdout, "the command changed nothing; no transaction recorded\n")
		return nil
	}
	printRunResult(e, res)
	if err := kernelSide(e, s, res.Tx, o.mkinitramfs, o.initagent, &o.ef); err != nil {
		return err
	}
	if !o.noDefault {
		fmt.Fprintf(e.stdout, "tx %d boots next, on trial; reboot to use it (nothing on the running system changed)\n", res.Tx.ID)
	}
	return nil
}

// announce says where the run starts, and that it stacks on a pending tx.
func announce(e *env, s *txstore.Store, from uint64) error {
	if from == 0 {
		def, err := s.Default()
		if err != nil {
			return err
		}
		from = def
	}
	t, err := s.Get(from)
	if err != nil {
		return err
	}
	if t.State == txstore.StatePending && t.Made == "run" {
		fmt.Fprintf(e.stderr, "bootctl run: starting from tx %d, an earlier run's that has not booted yet: the new tx carries both runs' changes\n", from)
	}
	return nil
}

func printRunResult(e *env, res *txrun.Result) {
	tx, st := res.Tx, res.Stats
	fmt.Fprintf(e.stdout, "committed tx %d %s (from tx %d)\n", tx.ID, tx.Digest, res.From.ID)
	if st != nil {
		fmt.Fprintf(e.stdout, "  %d entries; %d new objects (%s), %d deduplicated; total %s\n",
			st.Entries, st.NewObjects, human(st.NewBytes), st.Deduplicated, ms(st.Total))
	}
	for _, c := range res.Changes {
		fmt.Fprintf(e.stdout, "  %s\n", pkgChangeLine(c.Name, c.Arch, c.Old, c.New))
	}
	if res.EtcChanged {
		fmt.Fprintf(e.stdout, "  /etc changed: merged into the live /etc when tx %d boots (bootctl status lists conflicts)\n", tx.ID)
	}
	if len(res.Kernels) > 0 {
		fmt.Fprintf(e.stdout, "  kernel %s: in usr/lib/modules (Debian's initrd hooks were skipped)\n", strings.Join(res.Kernels, ", "))
	}
	if len(res.Dropped) > 0 {
		fmt.Fprintf(e.stdout, "  kernel %s removed\n", strings.Join(res.Dropped, ", "))
	}
}

// pkgChangeLine is one package change, as run, show and diff print it.
func pkgChangeLine(name, arch, old, cur string) string {
	n := name
	if arch != "" {
		n += ":" + arch
	}
	switch {
	case old == "":
		return fmt.Sprintf("+ %s %s (installed)", n, cur)
	case cur == "":
		return fmt.Sprintf("- %s %s (removed)", n, old)
	}
	return fmt.Sprintf("~ %s %s -> %s", n, old, cur)
}
