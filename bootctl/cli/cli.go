// Package cli implements bootctl's verbs; bootctl's main only calls Main.
package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/txboot/txboot/initagent/cmdline"
	"github.com/txboot/txboot/txstore"
	"golang.org/x/sys/unix"
)

// Exit codes (documented in the README).
const (
	ExitOK       = 0
	ExitFail     = 1 // the operation failed
	ExitUsage    = 2 // bad command line
	ExitProblems = 3 // verify found problems
	ExitNotFound = 4 // no such tx, or no store
	ExitBusy     = 5 // another writer holds the store
)

// env is what every verb gets.
type env struct {
	root    string
	json    bool
	timeout time.Duration
	stdout  io.Writer
	stderr  io.Writer
}

// verb is one bootctl command. Each is made by a constructor listed in
// allVerbs (verbs.go), called anew for every Main call: the options its
// flags fill belong to that one call and never leak into the next.
type verb struct {
	name  string
	args  string // the usage after the name, e.g. "ID [--full]"
	help  string
	pos   posArgs   // positional arguments; Main checks the count
	store storeMode // how Main opens the store before exec

	// writeWhen, when set, makes a storeRead verb open the store writable
	// when it returns true; asked after check (fsck --repair).
	writeWhen func() bool
	// openOpts adjusts the options Main opens the store with (verify:
	// HashOnce; fsck: NoCleanup).
	openOpts func(*txstore.Options)

	flags func(fs *flag.FlagSet) // verb-specific flags, into the verb's own options
	// check runs after the count check and before the store is opened:
	// validating flags and arguments, reading keys. It writes nothing,
	// so a bad command line creates no store.
	check func(e *env, args []string) error
	// exec does the work, with the store opened by store (nil for
	// storeNone and storeSelf). Main closes the store afterwards; a verb
	// may close it earlier (mark-bad before a reboot): Close is idempotent.
	exec func(e *env, s *txstore.Store, args []string) error
}

// posArgs declares a verb's positional arguments.
type posArgs struct {
	min, max int    // max < 0: no upper bound
	msg      string // the error when the count is wrong (%d: the count given); default generated
}

// storeMode is how a verb needs the store.
type storeMode int

const (
	storeNone   storeMode = iota // never opened
	storeRead                    // an existing store, read-only: works while a writer holds the lock
	storeWrite                   // an existing store, writable: the one writer (exit 5 when busy)
	storeCreate                  // writable, created when missing
	storeSelf                    // opened by the verb itself, at a point it chooses (health: after its checks; pull: for fetching, writer lock only to commit)
)

// countErr is the usage error for a wrong number of arguments, or nil.
func (p posArgs) countErr(name string, n int) error {
	if n >= p.min && (p.max < 0 || n <= p.max) {
		return nil
	}
	if strings.Contains(p.msg, "%d") {
		return usagef(p.msg, n)
	}
	if p.msg != "" {
		return usageError{p.msg}
	}
	switch {
	case p.max == 0:
		return usagef("%s takes no arguments", name)
	case p.min == p.max:
		return usagef("%s takes %d argument(s), got %d", name, p.min, n)
	case p.max < 0:
		return usagef("%s takes at least %d argument(s), got %d", name, p.min, n)
	}
	return usagef("%s takes %d to %d arguments, got %d", name, p.min, p.max, n)
}

// usageError is a bad command line.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitError carries a specific exit code with a message already printed (or not).
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// Main runs bootctl with args (without the program name) and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	// Global flags may come before the verb.
	gfs := flag.NewFlagSet("bootctl", flag.ContinueOnError)
	gfs.SetOutput(io.Discard)
	addCommon(gfs, e)
	if err := gfs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) { // -h, --help: asked for, not a mistake
			printUsage(stdout)
			return ExitOK
		}
		fmt.Fprintf(stderr, "bootctl: %v\n", err)
		printUsage(stderr)
		return ExitUsage
	}
	rest := gfs.Args()
	if len(rest) == 0 || rest[0] == "help" || rest[0] == "-h" || rest[0] == "--help" {
		printUsage(stdout)
		if len(rest) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	var v *verb
	for _, c := range allVerbs() {
		if c.name == rest[0] {
			v = c
		}
	}
	if v == nil {
		fmt.Fprintf(stderr, "bootctl: unknown command %q (try 'bootctl help')\n", rest[0])
		return ExitUsage
	}
	fs := flag.NewFlagSet("bootctl "+v.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if v.flags != nil {
		v.flags(fs)
	}
	addCommon(fs, e) // after the verb's: a verb may give --timeout its own meaning
	usageLine := strings.TrimSpace("bootctl " + v.name + " " + v.args)
	if err := fs.Parse(interleave(fs, rest[1:])); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage: %s\n  %s\n\noptions:\n", usageLine, v.help)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return ExitOK
		}
		fmt.Fprintf(stderr, "bootctl %s: %v\nusage: %s\n", v.name, err, usageLine)
		return ExitUsage
	}
	if err := v.pos.countErr(v.name, fs.NArg()); err != nil {
		fmt.Fprintf(stderr, "bootctl %s: %v\nusage: %s\n", v.name, err, usageLine)
		return ExitUsage
	}
	return report(stderr, v.name, v.invoke(e, fs.Args()))
}

// invoke runs a constructed verb: check, the store opened as declared,
// exec, the store closed.
func (v *verb) invoke(e *env, args []string) error {
	if v.check != nil {
		if err := v.check(e, args); err != nil {
			return err
		}
	}
	mode := v.store
	if mode == storeRead && v.writeWhen != nil && v.writeWhen() {
		mode = storeWrite
	}
	var s *txstore.Store
	if mode != storeNone && mode != storeSelf {
		o := txstore.Options{ReadOnly: mode == storeRead, Create: mode == storeCreate, Timeout: e.timeout}
		if v.openOpts != nil {
			v.openOpts(&o)
		}
		var err error
		if s, err = txstore.Open(e.root, o); err != nil {
			return err
		}
		defer s.Close()
	}
	return v.exec(e, s, args)
}

// interleave lets flags follow positional arguments ("verify 3 --full").
func interleave(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") {
				if f := fs.Lookup(name); f != nil {
					if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !bf.IsBoolFlag() {
						if i+1 < len(args) {
							flags = append(flags, args[i+1])
							i++
						}
					}
				}
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

// addCommon adds the flags every verb takes. A verb that defines one of
// them itself (registered first) keeps its own: the common one is then
// only taken before the verb ("bootctl --root R VERB"), except the lock
// wait, which becomes --lock-timeout (pull's --timeout bounds the pull).
func addCommon(fs *flag.FlagSet, e *env) {
	if e.root == "" {
		e.root = "/"
	}
	if fs.Lookup("root") == nil {
		fs.StringVar(&e.root, "root", e.root, "system root holding .txboot/")
	}
	if fs.Lookup("json") == nil {
		fs.BoolVar(&e.json, "json", e.json, "print data as JSON")
	}
	if e.timeout == 0 {
		e.timeout = txstore.DefaultTimeout
	}
	name := "timeout"
	if fs.Lookup(name) != nil {
		name = "lock-timeout"
	}
	fs.DurationVar(&e.timeout, name, e.timeout, "how long to wait for the store lock")
}

func report(stderr io.Writer, name string, err error) int {
	if err == nil {
		return ExitOK
	}
	var ue usageError
	var ee exitError
	code := ExitFail
	switch {
	case errors.As(err, &ue):
		code = ExitUsage
	case errors.As(err, &ee):
		code = ee.code
	case errors.Is(err, txstore.ErrNotFound), errors.Is(err, txstore.ErrNoStore):
		code = ExitNotFound
	case errors.Is(err, txstore.ErrInvalid):
		code = ExitUsage
	case errors.Is(err, txstore.ErrBusy):
		code = ExitBusy
	}
	if msg := err.Error(); msg != "" {
		// The store names its operation ("gc: …"); when that is the verb,
		// say it once.
		msg = strings.TrimPrefix(msg, name+": ")
		if errors.Is(err, txstore.ErrCorrupt) && name != "fsck" {
			msg += " (bootctl fsck --repair rebuilds it from the trees)"
		}
		fmt.Fprintf(stderr, "bootctl %s: %s\n", name, msg)
	}
	return code
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: bootctl [--root PATH] [--json] COMMAND [ARGS]")
	fmt.Fprintln(w, "\ncommands:")
	vs := allVerbs()
	sort.Slice(vs, func(i, j int) bool { return vs[i].name < vs[j].name })
	for _, v := range vs {
		fmt.Fprintf(w, "  %-34s %s\n", strings.TrimSpace(v.name+" "+v.args), v.help)
	}
	fmt.Fprintln(w, "\nexit codes: 0 ok, 1 failed, 2 usage, 3 verify found problems, 4 not found, 5 store busy")
}

func (e *env) openExisting(write bool) (*txstore.Store, error) {
	return txstore.Open(e.root, txstore.Options{ReadOnly: !write, Timeout: e.timeout})
}

// snapshot reads every record and the default.
func snapshot(s *txstore.Store) ([]*txstore.Tx, uint64, error) {
	txs, err := s.List()
	if err != nil {
		return nil, 0, err
	}
	def, err := s.Default()
	return txs, def, err
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// progress prints to stderr only when it is a terminal.
func (e *env) progress(format string, a ...any) {
	f, ok := e.stderr.(*os.File)
	if !ok {
		return
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return
	}
	fmt.Fprintf(f, "\r\033[K"+format, a...)
}

func (e *env) progressDone() {
	e.progress("")
}

func parseID(s string) (uint64, error) {
	id, err := strconv.ParseUint(strings.TrimPrefix(s, "#"), 10, 64)
	if err != nil || id == 0 {
		return 0, usagef("%q is not a transaction id (a positive integer)", s)
	}
	return id, nil
}

// procCmdline may be overridden in tests.
var procCmdline = "/proc/cmdline"

// bootedTx is the tx this system booted (txboot.tx= on /proc/cmdline), or 0.
func bootedTx() uint64 {
	data, err := os.ReadFile(procCmdline)
	if err != nil {
		return 0
	}
	id, _ := cmdline.BootedTx(string(data))
	return id
}
