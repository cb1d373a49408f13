// Package initramfs builds txboot's initramfs: initagent as /init, the
// kernel modules needed to reach the root device (with dependencies, in
// load order), and extra files, as a reproducible zstd-compressed newc
// cpio archive.
package initramfs

import (
	"bytes"
	"crypto/x509"
	"debug/elf"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/txboot/txboot/initagent/modlist"
	"github.com/txboot/txboot/txstore/sign"
)

// ListFile is the load list inside lib/modules/<kver>; initagent/kmod
// reads it (kmod.ListFile).
const ListFile = modlist.ListFile

// DefaultDrivers are carried when the kernel has them as modules (names
// the kernel has built in or lacks are skipped silently): virtual and
// common disk controllers, the filesystems of root and ESP, the QEMU
// watchdog, crc32c for ext4's metadata checksums, and overlayfs and erofs
// for a sealed /usr.
var DefaultDrivers = []string{
	// VMs
	"virtio_pci", "virtio_blk", "virtio_scsi", "virtio_mmio",
	// disks
	"sd_mod", "ahci", "ata_piix", "nvme", "mmc_block", "sdhci_pci",
	"xhci_pci", "ehci_pci", "usb_storage", "uas",
	// filesystems
	"ext4", "vfat", "nls_cp437", "nls_iso8859_1", "nls_ascii", "nls_utf8",
	"crc32c_generic", "crc32c_intel",
	// watchdog (QEMU's i6300esb), for a tx on trial
	"i6300esb",
	// systemd-boot's counter (LoaderBootCountPath) lives in EFI variables;
	// Debian builds efivarfs as a module
	"efivarfs",
	// overlayfs, for bootctl run's working copy and a sealed /usr: loaded
	// at boot, since a tx need not carry its kernel's modules in /usr
	"overlay",
	// a sealed tx's metadata image (erofs, mounted from its file)
	"erofs",
}

// TrustDir is where Options.Trust keys go in the image, as <key id>.pem;
// initagent reads it (boot.TrustDir).
const TrustDir = "/etc/txboot/trusted.d"

// Sentinel errors, for errors.Is.
var (
	ErrDynamicInit = errors.New("init is dynamically linked")
	ErrBadEpoch    = errors.New("bad SOURCE_DATE_EPOCH")
)

// FileSpec is an extra file: Src on the host, Dst in the image.
type FileSpec struct {
	Src, Dst string
}

// ParseFileSpec parses SRC:DST (split at the last colon).
func ParseFileSpec(s string) (FileSpec, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 || i == len(s)-1 {
		return FileSpec{}, fmt.Errorf("add-file %q: want SRC:DST", s)
	}
	fs := FileSpec{Src: s[:i], Dst: s[i+1:]}
	if _, err := cleanPath(fs.Dst); err != nil {
		return FileSpec{}, fmt.Errorf("add-file %q: %w", s, err)
	}
	return fs, nil
}

// Options describe an image.
type Options struct {
	Init             string   // the initagent binary, stored as /init
	KVer             string   // kernel release, e.g. 6.1.0-56-amd64
	KModDir          string   // root holding lib/modules/<KVer>; "" means "/"
	Drivers          []string // extra module names or aliases; all must exist (or be built in)
	NoDefaultDrivers bool     // leave out DefaultDrivers
	Files            []FileSpec
	// Trust: public key files (ed25519 PEM) initagent is to trust; only
	// txs signed by one of them boot. A file that is not such a key is an
	// error, never skipped.
	Trust []string
	// SourceDateEpoch is every mtime in the image (SOURCE_DATE_EPOCH).
	SourceDateEpoch uint64
}

// Result says what went into an image.
type Result struct {
	Modules      []Module // in load order
	Builtin      []string // requested drivers built into the kernel
	Missing      []string // default drivers this kernel has neither as module nor built in
	Uncompressed int64    // bytes of file contents
}

// EpochFromEnv reads SOURCE_DATE_EPOCH (default 0).
func EpochFromEnv() (uint64, error) {
	v, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 32) // newc mtimes are 32-bit
	if err != nil {
		return 0, fmt.Errorf("%w %q: %w", ErrBadEpoch, v, err)
	}
	return n, nil
}

// ModuleDir is lib/modules/<kver> under the options' root.
func (o Options) ModuleDir() string {
	root := o.KModDir
	if root == "" {
		root = "/"
	}
	return filepath.Join(root, "lib", "modules", o.KVer)
}

// MakeTree gathers everything for the image into a Tree.
func MakeTree(o Options) (*Tree, Result, error) {
	var res Result
	t := NewTree()
	// The mount points initagent uses, and /dev/console: the kernel opens
	// it for init's stdio before init can mount devtmpfs.
	for _, d := range []string{"/dev", "/proc", "/sys", "/run", "/tmp", "/sysroot", "/bin"} {
		if err := t.Dir(d); err != nil {
			return nil, res, err
		}
	}
	if err := t.CharDev("/dev/console", 0o600, 5, 1); err != nil {
		return nil, res, err
	}

	if o.Init == "" {
		return nil, res, errors.New("no init binary given")
	}
	initData, err := os.ReadFile(o.Init)
	if err != nil {
		return nil, res, fmt.Errorf("init: %w", err)
	}
	if err := checkStatic(o.Init, initData); err != nil {
		return nil, res, err
	}
	if err := t.File("/init", initData, 0o755); err != nil {
		return nil, res, err
	}

	if o.KVer == "" || o.KVer == "." || o.KVer == ".." || strings.ContainsAny(o.KVer, "/\x00") {
		return nil, res, fmt.Errorf("kernel version %q: want a release name like 6.1.0-56-amd64", o.KVer)
	}
	ix, err := OpenIndex(o.ModuleDir())
	if err != nil {
		return nil, res, err
	}
	// Default drivers are looked up by module name only: one this kernel
	// lacks must not cost a scan of every module for aliases.
	var want []string
	if !o.NoDefaultDrivers {
		for _, d := range DefaultDrivers {
			switch mod, builtin := ix.Has(d); {
			case mod:
				want = append(want, d)
			case builtin:
				res.Builtin = append(res.Builtin, NormalizeName(d))
			default:
				res.Missing = append(res.Missing, NormalizeName(d))
			}
		}
	}
	for _, d := range o.Drivers {
		want = append(want, strings.FieldsFunc(d, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })...)
	}
	r, err := ix.Resolve(want)
	if err != nil {
		return nil, res, fmt.Errorf("kernel %s: %w", o.KVer, err)
	}
	if len(r.Missing) > 0 {
		return nil, res, fmt.Errorf("kernel %s (%s): %w: %s", o.KVer, ix.Dir, ErrModuleNotFound, strings.Join(r.Missing, ", "))
	}
	res.Modules = r.Modules
	res.Builtin = append(res.Builtin, r.Builtin...)

	modBase := path.Join("/lib/modules", o.KVer)
	if err := t.Dir(modBase); err != nil {
		return nil, res, err
	}
	var list bytes.Buffer
	list.WriteString("# txboot module load list: dependencies first\n")
	for _, m := range r.Modules {
		data, err := ReadModule(filepath.Join(ix.Dir, filepath.FromSlash(m.Path)))
		if err != nil {
			return nil, res, err
		}
		rel := uncompressedPath(m.Path)
		if err := t.File(path.Join(modBase, rel), data, 0o644); err != nil {
			return nil, res, err
		}
		list.WriteString(rel + "\n")
	}
	if err := t.File(path.Join(modBase, ListFile), list.Bytes(), 0o644); err != nil {
		return nil, res, err
	}

	for _, f := range o.Files {
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, res, fmt.Errorf("add-file: %w", err)
		}
		st, err := os.Stat(f.Src)
		if err != nil {
			return nil, res, fmt.Errorf("add-file: %w", err)
		}
		// Only "executable or not" is kept: the host's umask must not
		// change the image.
		perm := uint64(0o644)
		if st.Mode().Perm()&0o111 != 0 {
			perm = 0o755
		}
		if err := t.File(f.Dst, data, perm); err != nil {
			return nil, res, fmt.Errorf("add-file %s: %w", f.Src, err)
		}
	}
	if err := addTrust(t, o.Trust); err != nil {
		return nil, res, err
	}
	res.Uncompressed = t.Size()
	return t, res, nil
}

// addTrust puts each key at TrustDir/<key id>.pem, re-encoded from the
// parsed key: the image depends on the keys, not on the files' comments,
// line ends or order, and a key given twice is carried once.
func addTrust(t *Tree, files []string) error {
	seen := map[string]bool{}
	for _, f := range files {
		k, err := sign.LoadPublicKey(f)
		if err != nil {
			return fmt.Errorf("trust: %w", err)
		}
		if seen[k.ID] {
			continue
		}
		seen[k.ID] = true
		der, err := x509.MarshalPKIXPublicKey(k.Key)
		if err != nil {
			return fmt.Errorf("trust: %s: %w", f, err)
		}
		data := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		if err := t.File(path.Join(TrustDir, k.ID+".pem"), data, 0o644); err != nil {
			return fmt.Errorf("trust %s: %w", f, err)
		}
	}
	return nil
}

// checkStatic refuses a dynamically linked ELF /init: the initramfs has no
// loader or libc, and the kernel's "No working init found" would not say why.
func checkStatic(name string, data []byte) error {
	ef, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil // not ELF (e.g. a script): the caller's business
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(io.LimitReader(p.Open(), 256))
			return fmt.Errorf("%s: %w (interpreter %s); build it with CGO_ENABLED=0",
				name, ErrDynamicInit, strings.TrimRight(string(interp), "\x00"))
		}
	}
	return nil
}

// Write builds the image into w.
func Write(w io.Writer, o Options) (Result, error) {
	t, res, err := MakeTree(o)
	if err != nil {
		return res, err
	}
	return res, t.WriteImage(w, o.SourceDateEpoch)
}

// Build writes the image to out durably: a temporary file in the same
// directory, fsync, rename over out, fsync of the directory. It returns
// the image size in bytes.
func Build(out string, o Options) (Result, int64, error) {
	dir := filepath.Dir(out)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return Result{}, 0, fmt.Errorf("create temp in %s: %w", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	res, err := Write(tmp, o)
	if err != nil {
		return res, 0, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return res, 0, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return res, 0, fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	st, err := tmp.Stat()
	if err != nil {
		return res, 0, fmt.Errorf("stat %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return res, 0, fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return res, 0, fmt.Errorf("rename to %s: %w", out, err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return res, st.Size(), fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return res, st.Size(), fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return res, st.Size(), nil
}
