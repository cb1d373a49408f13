// Package kmod loads the kernel modules an initramfs carries, in the order
// mkinitramfs wrote to <moddir>/txboot.modules (dependencies first).
//
// One module failing never stops the others: a missing optional driver must
// not stop the boot, and the root device wait reports what is really
// missing. Everything goes into a Summary for the boot log.
//
// u-root's pkg/kmodule is not used: it resolves modules.dep itself (the
// initramfs has a precomputed list instead), never uses finit_module and
// leaks its zstd decoder.
package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/txboot/txboot/initagent/modlist"
)

// ListFile is the load list's name inside the module directory.
const ListFile = modlist.ListFile

// MaxModuleSize bounds a decompressed module, so a corrupt file cannot
// exhaust the initramfs's memory.
const MaxModuleSize = 256 << 20

// Sentinel errors, for errors.Is.
var (
	ErrBadListEntry           = errors.New("bad module list entry")
	ErrUnsupportedCompression = errors.New("unsupported module compression")
	ErrTooLarge               = errors.New("module too large")
)

// Status is the outcome for one module.
type Status int

// Outcomes. Skipped means the kernel already has the module (EEXIST:
// loaded before, or built in), which is success.
const (
	Loaded Status = iota
	Skipped
	Failed
)

func (s Status) String() string {
	switch s {
	case Loaded:
		return "loaded"
	case Skipped:
		return "already loaded"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Result is the outcome for one list entry.
type Result struct {
	Path   string // as listed, relative to the module directory
	Name   string // module name, e.g. "virtio_blk"
	Status Status
	Err    error // set when Status is Failed
}

// Summary is the outcome of a Load, in list order.
type Summary struct {
	Results                 []Result
	Loaded, Skipped, Failed int
}

// String is a one-line summary for the boot log.
func (s Summary) String() string {
	line := fmt.Sprintf("modules: %d loaded, %d already loaded, %d failed", s.Loaded, s.Skipped, s.Failed)
	if s.Failed > 0 {
		var names []string
		for _, r := range s.Results {
			if r.Status == Failed {
				names = append(names, r.Name)
			}
		}
		line += " (" + strings.Join(names, ", ") + ")"
	}
	return line
}

// Err joins the failures, or is nil if there were none.
func (s Summary) Err() error {
	var errs []error
	for _, r := range s.Results {
		if r.Status == Failed {
			errs = append(errs, r.Err)
		}
	}
	return errors.Join(errs...)
}

func (s *Summary) add(r Result) {
	s.Results = append(s.Results, r)
	switch r.Status {
	case Loaded:
		s.Loaded++
	case Skipped:
		s.Skipped++
	default:
		s.Failed++
	}
}

// ModuleName gives the kernel's name for a module file: the base name
// without .ko and compression suffix, with '-' as '_'.
func ModuleName(p string) string {
	b := path.Base(filepath.ToSlash(p))
	for _, ext := range modlist.Compressions() {
		b = strings.TrimSuffix(b, ext)
	}
	b = strings.TrimSuffix(b, ".ko")
	return strings.ReplaceAll(b, "-", "_")
}

// ParseList parses a load list: one path per line relative to the module
// directory, '#' comments and blank lines ignored. Bad lines (absolute,
// escaping the directory, not a .ko[.zst|.xz|.gz]) are returned as errors
// and left out; later duplicates are dropped silently.
func ParseList(data []byte) (paths []string, bad []error) {
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := checkEntry(line); err != nil {
			bad = append(bad, fmt.Errorf("line %d %q: %w", n, line, err))
			continue
		}
		if !seen[line] {
			seen[line] = true
			paths = append(paths, line)
		}
	}
	if err := sc.Err(); err != nil {
		bad = append(bad, fmt.Errorf("read list: %w", err))
	}
	return paths, bad
}

func checkEntry(p string) error {
	if path.IsAbs(p) || !filepath.IsLocal(p) || path.Clean(p) != p || strings.ContainsAny(p, "\x00\\") {
		return fmt.Errorf("%w: not a clean relative path", ErrBadListEntry)
	}
	if _, ok := modlist.CutExt(p); ok {
		return nil
	}
	return fmt.Errorf("%w: not a .ko file", ErrBadListEntry)
}

// ParamsFromCmdline collects module parameters from command line tokens
// of the form module.param=value, as modprobe does from /proc/cmdline
// (the kernel applies them only to built-in code). Names are normalised
// ('-' → '_'); values with spaces are re-quoted.
func ParamsFromCmdline(args []string) map[string]string {
	params := map[string]string{}
	for _, a := range args {
		key, val, hasVal := strings.Cut(a, "=")
		mod, param, ok := strings.Cut(key, ".")
		if !ok || mod == "" || param == "" {
			continue
		}
		p := param
		if hasVal {
			if strings.ContainsAny(val, " \t") {
				val = `"` + val + `"`
			}
			p += "=" + val
		}
		mod = strings.ReplaceAll(mod, "-", "_")
		if params[mod] != "" {
			params[mod] += " "
		}
		params[mod] += p
	}
	return params
}

// KernelRelease is uname -r, to find /lib/modules/<release>.
func KernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// Loader loads modules from one directory.
type Loader struct {
	Dir    string            // the module directory, /lib/modules/<release>
	Params map[string]string // parameters by module name

	// The syscalls, replaceable in tests.
	finit func(fd int, params string, flags int) error
	init  func(image []byte, params string) error

	zdec *zstd.Decoder
}

// LoadDir loads the modules listed in dir/txboot.modules. The error is
// non-nil only if the list cannot be read; per-module failures are in the
// Summary.
func LoadDir(dir string, params map[string]string) (Summary, error) {
	l := &Loader{Dir: dir, Params: params}
	return l.LoadList()
}

// LoadList loads the modules listed in l.Dir/txboot.modules.
func (l *Loader) LoadList() (Summary, error) {
	p := filepath.Join(l.Dir, ListFile)
	data, err := os.ReadFile(p)
	if err != nil {
		return Summary{}, fmt.Errorf("read module list %s: %w", p, err)
	}
	paths, bad := ParseList(data)
	s := l.Load(paths)
	for _, err := range bad {
		s.add(Result{Path: p, Name: ListFile, Status: Failed, Err: fmt.Errorf("%s: %w", p, err)})
	}
	return s, nil
}

// Load loads the given modules (paths relative to l.Dir) in order.
func (l *Loader) Load(paths []string) Summary {
	var s Summary
	defer func() {
		if l.zdec != nil {
			l.zdec.Close()
			l.zdec = nil
		}
	}()
	for _, p := range paths {
		r := Result{Path: p, Name: ModuleName(p)}
		switch err := l.loadOne(p, l.Params[r.Name]); {
		case err == nil:
			r.Status = Loaded
		case errors.Is(err, unix.EEXIST):
			r.Status = Skipped
		default:
			r.Status, r.Err = Failed, err
		}
		s.add(r)
	}
	return s
}

func (l *Loader) finitModule(fd int, params string, flags int) error {
	if l.finit != nil {
		return l.finit(fd, params, flags)
	}
	return unix.FinitModule(fd, params, flags)
}

func (l *Loader) initModule(image []byte, params string) error {
	if l.init != nil {
		return l.init(image, params)
	}
	return unix.InitModule(image, params)
}

func (l *Loader) loadOne(rel, params string) error {
	if err := checkEntry(rel); err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	p := filepath.Join(l.Dir, rel)
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("open module: %w", err)
	}
	defer f.Close()

	switch {
	case strings.HasSuffix(p, ".ko"):
		err := l.finitModule(int(f.Fd()), params, 0)
		if errors.Is(err, unix.ENOSYS) {
			// Kernels without finit_module: hand over the bytes.
			img, rerr := readAllLimited(f)
			if rerr != nil {
				return fmt.Errorf("read %s: %w", p, rerr)
			}
			err = l.initModule(img, params)
		}
		return wrap(p, err)
	case strings.HasSuffix(p, ".ko.zst"):
		if l.zdec == nil {
			// One decoder for all modules; single-threaded to keep the
			// initramfs's memory small.
			l.zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxModuleSize))
			if err != nil {
				return fmt.Errorf("zstd decoder for %s: %w", p, err)
			}
		}
		comp, err := readAllLimited(f)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		img, err := l.zdec.DecodeAll(comp, nil)
		if err != nil {
			return fmt.Errorf("decompress %s: %w", p, err)
		}
		return wrap(p, l.initModule(img, params))
	case strings.HasSuffix(p, ".ko.gz"):
		zr, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("decompress %s: %w", p, err)
		}
		img, err := readAllLimited(zr)
		if err != nil {
			return fmt.Errorf("decompress %s: %w", p, err)
		}
		return wrap(p, l.initModule(img, params))
	case strings.HasSuffix(p, ".ko.xz"):
		// No xz decoder in go.mod: let the kernel decompress it
		// (CONFIG_MODULE_DECOMPRESS, Linux 6.0+).
		err := l.finitModule(int(f.Fd()), params, unix.MODULE_INIT_COMPRESSED_FILE)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("load %s: %w: the kernel cannot decompress xz modules (%w); have mkinitramfs store it uncompressed", p, ErrUnsupportedCompression, err)
		}
		return wrap(p, err)
	}
	return fmt.Errorf("%s: %w", p, ErrUnsupportedCompression)
}

// wrap keeps EEXIST recognisable and names the file.
func wrap(p string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("load %s: %w", p, err)
}

func readAllLimited(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxModuleSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxModuleSize {
		return nil, fmt.Errorf("%w: over %d bytes", ErrTooLarge, MaxModuleSize)
	}
	return b, nil
}
