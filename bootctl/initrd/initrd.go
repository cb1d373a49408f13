// Package initrd builds the initrd bootctl keeps in the store for a tx's
// kernel (txstore's boot/<id>/initrd.img), with mkinitramfs, from the tx's
// own modules and the keys the system trusts.
//
// A tx is data until it has booted: nothing in its tree is ever executed
// on the host, and none of its keys is trusted because it ships them. The
// initrd is built by the running system's own mkinitramfs and initagent
// (FindTool) and carries the system's trust store (trust.Load), which the
// caller loads: only it knows which tx booted and whether it is good.
package initrd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/trust"
)

var (
	// ErrTrustFile is a trusted-key file that cannot be used.
	ErrTrustFile = trust.ErrTrustFile
	// ErrNoTool: mkinitramfs or initagent was found nowhere.
	ErrNoTool = errors.New("mkinitramfs or initagent was not found")
	// ErrNoTrust: Build was given no trust set (a caller's bug: an initrd
	// without keys would boot unsigned txs).
	ErrNoTrust = errors.New("no trust set to build the initrd with")
)

// Build builds the initrd for tx t's newest kernel into s.InitrdPath(t.ID)
// and fsyncs its directory. mkinitramfs and initagent are the flags' paths
// ("" to look them up with FindTool, never in the tx); ts is the trust
// store the initrd carries. A tx without a kernel needs none.
func Build(s *txstore.Store, t *txstore.Tx, mkinitramfs, initagent string, ts *trust.Set) error {
	if len(t.Kernels) == 0 {
		return nil
	}
	if ts == nil {
		return fmt.Errorf("build initrd for tx %d: %w", t.ID, ErrNoTrust)
	}
	kver := t.Kernels[len(t.Kernels)-1]
	tree := s.TreeDir(t.ID)
	mk, ia := FindTool(mkinitramfs, "mkinitramfs"), FindTool(initagent, "initagent")
	if mk == "" || ia == "" {
		return fmt.Errorf("tx %d has kernel %s but %w (pass --mkinitramfs and --initagent)", t.ID, kver, ErrNoTool)
	}
	out := s.InitrdPath(t.ID)
	if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
		return err
	}
	args := []string{"--kver", kver, "--kmoddir", tree, "--init", ia, "-o", out, "-q"}
	// The tx's busybox is data for the initrd (mkinitramfs only reads it):
	// added only when it is a regular file reached without a symlink, so
	// a link cannot put a host file into an image on the ESP.
	if bb := filepath.Join(tree, "bin/busybox"); regularNoFollow(tree, "bin", "busybox") {
		args = append(args, "--add-file", bb+":/bin/busybox")
	}
	args = append(args, TrustArgs(ts)...)
	if outb, err := exec.Command(mk, args...).CombinedOutput(); err != nil {
		// Trimmed: callers append to this line ("; done: …").
		return fmt.Errorf("build initrd for tx %d: %w: %s", t.ID, err, bytes.TrimSpace(outb))
	}
	return fsx.SyncDir(filepath.Dir(out))
}

// regularNoFollow reports whether base/dir/name is a regular file and
// base/dir a directory, neither a symlink.
func regularNoFollow(base, dir, name string) bool {
	d, err := os.Lstat(filepath.Join(base, dir))
	if err != nil || !d.IsDir() {
		return false
	}
	f, err := os.Lstat(filepath.Join(base, dir, name))
	return err == nil && f.Mode().IsRegular()
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// FindTool picks one of the running system's tools: the flag's value (the
// administrator's), then the one beside the running binary, then $PATH;
// "" if none. Never a tx's own copy: a tx is data until it has booted.
func FindTool(flagVal, name string) string {
	if flagVal != "" {
		return flagVal
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), name); exists(p) {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

// TrustArgs is the mkinitramfs --trust arguments for the keys of ts.
func TrustArgs(ts *trust.Set) []string {
	var args []string
	for _, f := range ts.Files {
		args = append(args, "--trust", f)
	}
	return args
}
