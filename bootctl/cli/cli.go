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
	fs      *flag.FlagSet
}

type verb struct {
	name  string
	args  string
	help  string
	run   func(e *env, args []string) error
	flags func(fs *flag.FlagSet) // verb-specific flags
}

var verbs []*verb

func register(v *verb) { verbs = append(verbs, v) }

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
	for _, c := range verbs {
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
	addCommon(fs, e)
	if v.flags != nil {
		v.flags(fs)
	}
	e.fs = fs
	if err := fs.Parse(interleave(fs, rest[1:])); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage: bootctl %s %s\n  %s\n\noptions:\n", v.name, v.args, v.help)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return ExitOK
		}
		fmt.Fprintf(stderr, "bootctl %s: %v\nusage: bootctl %s %s\n", v.name, err, v.name, v.args)
		return ExitUsage
	}
	err := v.run(e, fs.Args())
	return report(stderr, v.name, err)
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

func addCommon(fs *flag.FlagSet, e *env) {
	if e.root == "" {
		e.root = "/"
	}
	fs.StringVar(&e.root, "root", e.root, "system root holding .txboot/")
	fs.BoolVar(&e.json, "json", e.json, "print data as JSON")
	if e.timeout == 0 {
		e.timeout = txstore.DefaultTimeout
	}
	fs.DurationVar(&e.timeout, "timeout", e.timeout, "how long to wait for the store lock")
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
	vs := append([]*verb(nil), verbs...)
	sort.Slice(vs, func(i, j int) bool { return vs[i].name < vs[j].name })
	for _, v := range vs {
		fmt.Fprintf(w, "  %-34s %s\n", v.name+" "+v.args, v.help)
	}
	fmt.Fprintln(w, "\nexit codes: 0 ok, 1 failed, 2 usage, 3 verify found problems, 4 not found, 5 store busy")
}

func (e *env) open(write bool) (*txstore.Store, error) {
	return txstore.Open(e.root, txstore.Options{ReadOnly: !write, Create: write, Timeout: e.timeout})
}

func (e *env) openExisting(write bool) (*txstore.Store, error) {
	return txstore.Open(e.root, txstore.Options{ReadOnly: !write, Timeout: e.timeout})
}

// snapshot opens the store read-only and reads every record and the default.
func (e *env) snapshot() (*txstore.Store, []*txstore.Tx, uint64, error) {
	s, err := e.openExisting(false)
	if err != nil {
		return nil, nil, 0, err
	}
	txs, err := s.List()
	if err != nil {
		return nil, nil, 0, err
	}
	def, err := s.Default()
	return s, txs, def, err
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

func oneID(args []string) (uint64, error) {
	if len(args) != 1 {
		return 0, usagef("expected one transaction id, got %d arguments", len(args))
	}
	return parseID(args[0])
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
