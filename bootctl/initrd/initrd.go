// Package initrd builds the initrd bootctl keeps in the store for a tx's
// kernel (txstore's boot/<id>/initrd.img), with mkinitramfs, from the tx's
// own modules and the keys the system trusts.
package initrd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/sign"
)

// Where trusted keys live: a tx ships its vendor's keys in its own /usr,
// the system adds its own in /etc. Both go into every initrd Build makes
// (mkinitramfs --trust).
const (
	TreeTrustDir = "lib/txboot/trusted.d" // inside a tx's /usr
	EtcTrustDir  = "etc/txboot/trusted.d" // under the system root
)

var (
	// ErrTrustFile is a trusted-key file that cannot be used.
	ErrTrustFile = errors.New("trusted key file cannot be used")
	// ErrNoTool: mkinitramfs or initagent was found nowhere.
	ErrNoTool = errors.New("mkinitramfs or initagent was not found")
)

// Build builds the initrd for tx t's newest kernel into s.InitrdPath(t.ID)
// and fsyncs its directory. mkinitramfs and initagent are the flags' paths
// ("" to look them up with FindTool). A tx without a kernel needs none.
func Build(s *txstore.Store, t *txstore.Tx, mkinitramfs, initagent string) error {
	if len(t.Kernels) == 0 {
		return nil
	}
	kver := t.Kernels[len(t.Kernels)-1]
	tree := s.TreeDir(t.ID)
	mk := FindTool(mkinitramfs, "mkinitramfs", filepath.Join(tree, "lib/txboot/mkinitramfs"))
	ia := FindTool(initagent, "initagent", filepath.Join(tree, "lib/txboot/initagent"))
	if mk == "" || ia == "" {
		return fmt.Errorf("tx %d has kernel %s but %w (pass --mkinitramfs and --initagent)", t.ID, kver, ErrNoTool)
	}
	out := s.InitrdPath(t.ID)
	if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
		return err
	}
	args := []string{"--kver", kver, "--kmoddir", tree, "--init", ia, "-o", out, "-q"}
	if bb := filepath.Join(tree, "bin/busybox"); exists(bb) {
		args = append(args, "--add-file", bb+":/bin/busybox")
	}
	trust, err := TrustArgs(s, t)
	if err != nil {
		return fmt.Errorf("build initrd for tx %d: %w", t.ID, err)
	}
	args = append(args, trust...)
	if outb, err := exec.Command(mk, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("build initrd for tx %d: %w: %s", t.ID, err, outb)
	}
	return fsx.SyncDir(filepath.Dir(out))
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// FindTool picks a tool: the flag's value, then the tx's own copy
// (inTree), then one next to the running binary, then $PATH; "" if none.
func FindTool(flagVal, name, inTree string) string {
	if flagVal != "" {
		return flagVal
	}
	if inTree != "" && exists(inTree) {
		return inTree
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

// TrustArgs is the --trust arguments for tx t's initrd: the tx's own
// keys, then the system's.
func TrustArgs(s *txstore.Store, t *txstore.Tx) ([]string, error) {
	own, err := TrustFiles(s.TreeDir(t.ID), TreeTrustDir)
	if err != nil {
		return nil, fmt.Errorf("tx %d: %w", t.ID, err)
	}
	sys, err := TrustFiles(s.Root, EtcTrustDir)
	if err != nil {
		return nil, err
	}
	var args []string
	for _, f := range append(own, sys...) {
		args = append(args, "--trust", f)
	}
	return args, nil
}

// TrustFiles lists base/rel/*.pem without following a symlink anywhere
// beneath base: a tx's tree is resolved against the host's root by the
// kernel, so a link there would read a host file as the tx's key. A
// missing directory holds no keys; a symlink, a non-regular *.pem or one
// that is not an ed25519 public key is an error naming the path.
func TrustFiles(base, rel string) ([]string, error) {
	p := base
	for _, c := range strings.Split(rel, "/") {
		p = filepath.Join(p, c)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("trusted keys: %s: %w: not a directory (symlinks are not followed)", p, ErrTrustFile)
		}
	}
	ents, err := os.ReadDir(p)
	if err != nil {
		return nil, fmt.Errorf("trusted keys: %w", err)
	}
	var out []string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".pem") {
			continue // the convention sign.LoadTrustDirs follows
		}
		f := filepath.Join(p, e.Name())
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("trusted keys: %s: %w: not a regular file (symlinks are not followed)", f, ErrTrustFile)
		}
		if _, err := sign.LoadPublicKey(f); err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		out = append(out, f)
	}
	sort.Strings(out)
	return out, nil
}
