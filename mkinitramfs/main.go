// Command mkinitramfs builds txboot's initramfs: initagent as /init, the
// kernel modules needed to reach the root device, and extra files, as a
// reproducible zstd-compressed newc cpio.
//
//	mkinitramfs --kver 6.1.0-56-amd64 --kmoddir /tmp/k/linux-image-6.1.0-56-amd64 \
//	    --add-drivers "virtio_net" --add-file /bin/busybox:/bin/busybox \
//	    --trust /etc/txboot/trusted.d/vendor.pem -o initrd.img
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/txboot/txboot/mkinitramfs/initramfs"
	"golang.org/x/sys/unix"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkinitramfs:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fl := flag.NewFlagSet("mkinitramfs", flag.ContinueOnError)
	var (
		out       = fl.String("o", "", "output file (required)")
		initPath  = fl.String("init", "", "initagent binary for /init (default: bin/initagent, else initagent next to this program)")
		kver      = fl.String("kver", "", "kernel release (default: uname -r)")
		kmoddir   = fl.String("kmoddir", "/", "root directory holding lib/modules/<kver>")
		noDefault = fl.Bool("no-default-drivers", false, "carry only --add-drivers, not the default set")
		quiet     = fl.Bool("q", false, "no summary line")
		drivers   listFlag
		files     listFlag
		trust     listFlag
	)
	fl.Var(&drivers, "add-drivers", "extra modules (names or aliases, space or comma separated; repeatable)")
	fl.Var(&files, "add-file", "extra file SRC:DST (repeatable)")
	fl.Var(&trust, "trust", "ed25519 public key (PEM) initagent trusts: only txs it signed boot (repeatable)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	if *out == "" {
		return errors.New("-o OUT is required")
	}
	start := time.Now()

	o := initramfs.Options{
		Init:             *initPath,
		KVer:             *kver,
		KModDir:          *kmoddir,
		Drivers:          drivers,
		NoDefaultDrivers: *noDefault,
		Trust:            trust,
	}
	if o.Init == "" {
		p, err := findInit()
		if err != nil {
			return err
		}
		o.Init = p
	}
	if o.KVer == "" {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return fmt.Errorf("uname: %w", err)
		}
		o.KVer = unix.ByteSliceToString(u.Release[:])
	}
	for _, f := range files {
		fs, err := initramfs.ParseFileSpec(f)
		if err != nil {
			return err
		}
		o.Files = append(o.Files, fs)
	}
	epoch, err := initramfs.EpochFromEnv()
	if err != nil {
		return err
	}
	o.SourceDateEpoch = epoch

	res, size, err := initramfs.Build(*out, o)
	if err != nil {
		return err
	}
	if !*quiet {
		fmt.Printf("mkinitramfs: %s: kernel %s, %d modules, %d bytes (%d uncompressed), %d ms\n",
			*out, o.KVer, len(res.Modules), size, res.Uncompressed, time.Since(start).Milliseconds())
	}
	return nil
}

// findInit looks for bin/initagent (a checkout's build output), then for
// initagent next to this program.
func findInit() (string, error) {
	cands := []string{filepath.Join("bin", "initagent")}
	if exe, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(exe), "initagent"))
	}
	for _, c := range cands {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", fmt.Errorf("no initagent found (looked for %s); give --init", strings.Join(cands, ", "))
}
