package initramfs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/txboot/txboot/initagent/modlist"
)

// Sentinel errors, for errors.Is.
var (
	ErrModuleNotFound  = errors.New("module not found")
	ErrDependencyCycle = errors.New("module dependency cycle")
	ErrNoModInfo       = errors.New("no .modinfo section")
	ErrTooLarge        = errors.New("module too large")
)

// maxModuleSize bounds a module read at build time, compressed and
// decompressed, so a hostile tree cannot exhaust memory: Debian's largest
// module (amdgpu) is about 20 MiB.
const maxModuleSize = 64 << 20

// NormalizeName gives the kernel's spelling of a module name or alias:
// '-' and '_' are the same to modprobe.
func NormalizeName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleName is the module name for a module file path.
func moduleName(p string) (string, bool) {
	if n, ok := modlist.CutExt(path.Base(p)); ok {
		return NormalizeName(n), true
	}
	return "", false
}

// uncompressedPath drops a compression suffix: modules are stored
// uncompressed because the whole archive is compressed.
func uncompressedPath(p string) string {
	for _, ext := range modlist.Compressions() {
		if s, ok := strings.CutSuffix(p, ".ko"+ext); ok {
			return s + ".ko"
		}
	}
	return p
}

// ModInfo is what a module's .modinfo section says about its needs.
type ModInfo struct {
	Depends []string // hard dependencies (module names), normalised
	SoftPre []string // softdep pre: names or aliases, normalised
	Aliases []string // normalised
}

// ParseModInfo parses a .modinfo section: NUL-separated key=value strings.
func ParseModInfo(data []byte) ModInfo {
	var mi ModInfo
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					mi.Depends = append(mi.Depends, NormalizeName(d))
				}
			}
		case "softdep":
			mi.SoftPre = append(mi.SoftPre, parseSoftdep(v)...)
		case "alias":
			mi.Aliases = append(mi.Aliases, NormalizeName(v))
		}
	}
	return mi
}

// parseSoftdep returns the "pre:" names of "pre: a b post: c".
func parseSoftdep(v string) []string {
	var pre []string
	in := false
	for _, f := range strings.Fields(v) {
		switch f {
		case "pre:":
			in = true
		case "post:":
			in = false
		default:
			if in {
				pre = append(pre, NormalizeName(f))
			}
		}
	}
	return pre
}

// Index knows the modules of one kernel: lib/modules/<kver> under a root.
type Index struct {
	Dir string // absolute lib/modules/<kver> directory

	paths   map[string]string   // name → path relative to Dir
	builtin map[string]bool     // built-in module names
	bAlias  map[string]bool     // aliases of built-in modules
	depFile map[string][]string // from modules.dep, if present
	softdep map[string][]string // from modules.softdep, if present

	aliases map[string][]string // from modules.alias, if present

	mu      sync.Mutex
	info    map[string]ModInfo             // cache of .modinfo by name
	scanned map[string]map[string][]string // alias maps by scan scope
}

// OpenIndex reads the module directory of a kernel. modules.dep,
// modules.alias and modules.softdep are used when present (depmod output);
// Debian's packages ship none of them, so otherwise the modules'
// .modinfo sections are read as needed.
func OpenIndex(dir string) (*Index, error) {
	ix := &Index{
		Dir:     dir,
		paths:   map[string]string{},
		builtin: map[string]bool{},
		bAlias:  map[string]bool{},
		info:    map[string]ModInfo{},
	}
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("module directory: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("module directory %s: not a directory", dir)
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		name, ok := moduleName(p)
		if !ok || !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if old, dup := ix.paths[name]; !dup || preferPath(rel, old) {
			ix.paths[name] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	if err := ix.readBuiltin(); err != nil {
		return nil, err
	}
	if err := ix.readDepmodFiles(); err != nil {
		return nil, err
	}
	return ix, nil
}

// preferPath mirrors depmod's default search order: updates/ beats other
// trees, which beat the kernel's own; ties go to the smaller path.
func preferPath(a, b string) bool {
	rank := func(p string) int {
		switch {
		case strings.HasPrefix(p, "updates/"):
			return 0
		case strings.HasPrefix(p, "kernel/"):
			return 2
		}
		return 1
	}
	if ra, rb := rank(a), rank(b); ra != rb {
		return ra < rb
	}
	return a < b
}

func (ix *Index) readBuiltin() error {
	p := filepath.Join(ix.Dir, "modules.builtin")
	data, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if name, ok := moduleName(strings.TrimSpace(line)); ok {
			ix.builtin[name] = true
		}
	}
	// modules.builtin.modinfo: "<module>.<key>=<value>\0" for built-ins.
	p = filepath.Join(ix.Dir, "modules.builtin.modinfo")
	data, err = os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		mod, key, ok := strings.Cut(k, ".")
		if !ok {
			continue
		}
		ix.builtin[NormalizeName(mod)] = true
		if key == "alias" {
			ix.bAlias[NormalizeName(v)] = true
		}
	}
	return nil
}

func (ix *Index) readDepmodFiles() error {
	read := func(name string, line func(string)) error {
		p := filepath.Join(ix.Dir, name)
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
		for sc.Scan() {
			line(sc.Text())
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		return nil
	}
	err := read("modules.dep", func(l string) {
		mod, deps, ok := strings.Cut(l, ":")
		name, isMod := moduleName(strings.TrimSpace(mod))
		if !ok || !isMod {
			return
		}
		if ix.depFile == nil {
			ix.depFile = map[string][]string{}
		}
		var ds []string
		for _, d := range strings.Fields(deps) {
			if n, ok := moduleName(d); ok {
				ds = append(ds, n)
			}
		}
		ix.depFile[name] = ds
	})
	if err != nil {
		return err
	}
	err = read("modules.alias", func(l string) {
		f := strings.Fields(l)
		// Only plain names: device patterns (pci:v*…) are for udev.
		if len(f) != 3 || f[0] != "alias" || strings.ContainsAny(f[1], "*?[") {
			return
		}
		if ix.aliases == nil {
			ix.aliases = map[string][]string{}
		}
		a := NormalizeName(f[1])
		ix.aliases[a] = append(ix.aliases[a], NormalizeName(f[2]))
	})
	if err != nil {
		return err
	}
	return read("modules.softdep", func(l string) {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "softdep" {
			return
		}
		if ix.softdep == nil {
			ix.softdep = map[string][]string{}
		}
		n := NormalizeName(f[1])
		ix.softdep[n] = append(ix.softdep[n], parseSoftdep(strings.Join(f[2:], " "))...)
	})
}

// ReadModule returns a module file's contents, decompressed: the image
// is compressed as a whole, and compressing each module first only makes
// it larger (README, "xz-compressed modules"). A module that decompresses
// to more than maxModuleSize is refused with ErrTooLarge.
func ReadModule(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	r, done, err := moduleReader(f, p)
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", p, err)
	}
	defer done()
	b, err := io.ReadAll(io.LimitReader(r, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(b) > maxModuleSize {
		return nil, fmt.Errorf("read %s: %w: more than %d bytes", p, ErrTooLarge, maxModuleSize)
	}
	return b, nil
}

// moduleReader returns the decompressing reader for a module file by its
// suffix, and what to call when done with it.
func moduleReader(f *os.File, p string) (io.Reader, func(), error) {
	nop := func() {}
	switch {
	case strings.HasSuffix(p, ".ko.zst"):
		// The memory bound also bounds the window a header can ask for.
		d, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxModuleSize))
		if err != nil {
			return nil, nop, err
		}
		return d, d.Close, nil
	case strings.HasSuffix(p, ".ko.gz"):
		z, err := gzip.NewReader(f)
		return z, nop, err
	case strings.HasSuffix(p, ".ko.xz"):
		// Read whole (xz's index is at the end); an xz module is
		// smaller than what it decompresses to.
		data, err := io.ReadAll(io.LimitReader(f, maxModuleSize+1))
		if err != nil {
			return nil, nop, err
		}
		if len(data) > maxModuleSize {
			return nil, nop, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, maxModuleSize)
		}
		r, err := newXZReader(data, maxModuleSize)
		return r, nop, err
	}
	return f, nop, nil
}

// readModInfo reads the .modinfo section of a module file. Uncompressed
// modules are read through ReaderAt: only the section headers and the
// section itself, not the whole file.
func readModInfo(p string) (ModInfo, error) {
	var ra io.ReaderAt
	if strings.HasSuffix(p, ".ko") {
		f, err := os.Open(p)
		if err != nil {
			return ModInfo{}, fmt.Errorf("open module: %w", err)
		}
		defer f.Close()
		ra = f
	} else {
		b, err := ReadModule(p)
		if err != nil {
			return ModInfo{}, err
		}
		ra = bytes.NewReader(b)
	}
	ef, err := elf.NewFile(ra)
	if err != nil {
		return ModInfo{}, fmt.Errorf("%s: %w", p, err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return ModInfo{}, fmt.Errorf("%s: %w", p, ErrNoModInfo)
	}
	data, err := sec.Data()
	if err != nil {
		return ModInfo{}, fmt.Errorf("%s: .modinfo: %w", p, err)
	}
	return ParseModInfo(data), nil
}

// modInfo returns the cached .modinfo of a module by name.
func (ix *Index) modInfo(name string) (ModInfo, error) {
	ix.mu.Lock()
	mi, ok := ix.info[name]
	ix.mu.Unlock()
	if ok {
		return mi, nil
	}
	rel, ok := ix.paths[name]
	if !ok {
		return ModInfo{}, fmt.Errorf("%s: %w", name, ErrModuleNotFound)
	}
	mi, err := readModInfo(filepath.Join(ix.Dir, filepath.FromSlash(rel)))
	if err != nil {
		return ModInfo{}, err
	}
	ix.mu.Lock()
	ix.info[name] = mi
	ix.mu.Unlock()
	return mi, nil
}

// deps returns a module's hard dependencies, sorted.
func (ix *Index) deps(name string) ([]string, error) {
	var ds []string
	if ix.depFile != nil {
		ds = append(ds, ix.depFile[name]...)
	} else {
		mi, err := ix.modInfo(name)
		if err != nil {
			return nil, err
		}
		ds = append(ds, mi.Depends...)
	}
	sort.Strings(ds)
	return ds, nil
}

// softPre returns a module's softdep pre: names, sorted.
func (ix *Index) softPre(name string) ([]string, error) {
	var ss []string
	if ix.softdep != nil {
		ss = append(ss, ix.softdep[name]...)
	}
	mi, err := ix.modInfo(name)
	if err != nil {
		return nil, err
	}
	ss = append(ss, mi.SoftPre...)
	sort.Strings(ss)
	return ss, nil
}

// aliasMap builds alias → modules from the .modinfo of every module whose
// path passes keep, once per scope, in parallel: a Debian kernel has ~4000
// modules and reading them all costs about a second.
func (ix *Index) aliasMap(scope string, keep func(rel string) bool) map[string][]string {
	if ix.aliases != nil { // depmod's modules.alias covers every scope
		return ix.aliases
	}
	if m, ok := ix.scanned[scope]; ok {
		return m
	}
	var names []string
	for n, rel := range ix.paths {
		if keep(rel) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	infos := make([]ModInfo, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	next := make(chan int)
	// I/O bound (cold page cache): more workers than CPUs.
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				infos[i], errs[i] = ix.modInfo(names[i])
			}
		}()
	}
	for i := range names {
		next <- i
	}
	close(next)
	wg.Wait()
	m := map[string][]string{}
	for i, n := range names {
		if errs[i] != nil {
			// One unreadable module should not hide every alias; it
			// fails loudly if it is itself needed.
			continue
		}
		for _, a := range infos[i].Aliases {
			m[a] = append(m[a], n)
		}
	}
	if ix.scanned == nil {
		ix.scanned = map[string]map[string][]string{}
	}
	ix.scanned[scope] = m
	return m
}

// isCryptoPath: crypto API providers (MODULE_ALIAS_CRYPTO, "crypto-…"
// aliases) live in crypto/, arch/*/crypto/ and drivers/crypto/.
func isCryptoPath(rel string) bool { return strings.Contains("/"+rel, "/crypto/") }

// lookup resolves a name or alias to module names. builtin is true when
// the kernel has it built in (nothing to load).
func (ix *Index) lookup(name string) (mods []string, builtin bool) {
	name = NormalizeName(name)
	if _, ok := ix.paths[name]; ok {
		return []string{name}, false
	}
	if ix.builtin[name] {
		return nil, true
	}
	var am map[string][]string
	if strings.HasPrefix(name, "crypto_") {
		// ext4's softdep "crypto-crc32c" and friends: scanning the
		// crypto directories is enough and ~20 times cheaper.
		am = ix.aliasMap("crypto", isCryptoPath)
	} else {
		am = ix.aliasMap("all", func(string) bool { return true })
	}
	for _, m := range am[name] {
		if _, ok := ix.paths[m]; ok {
			mods = append(mods, m)
		}
	}
	if len(mods) > 0 {
		sort.Strings(mods)
		return dedup(mods), false
	}
	return nil, ix.bAlias[name]
}

// Has reports whether the kernel has name as a loadable module (by module
// name, not alias) and whether it has it built in.
func (ix *Index) Has(name string) (module, builtin bool) {
	name = NormalizeName(name)
	_, module = ix.paths[name]
	return module, ix.builtin[name]
}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// Module is one module to carry, with its path relative to the module
// directory (as found, possibly compressed).
type Module struct {
	Name string
	Path string
}

// Resolution is the outcome of Resolve.
type Resolution struct {
	Modules []Module // load order: every module after its dependencies
	Builtin []string // requested names the kernel has built in
	Missing []string // requested names found neither as module nor built in
}

// Resolve finds the modules for the requested names (module names or
// aliases) and all their dependencies, in a deterministic load order that
// does not depend on the order of names. Soft "pre" dependencies are
// included when available and ordered first; a missing hard dependency is
// an error.
func (ix *Index) Resolve(names []string) (Resolution, error) {
	var res Resolution
	roots := append([]string(nil), names...)
	for i := range roots {
		roots[i] = NormalizeName(roots[i])
	}
	sort.Strings(roots)
	roots = dedup(roots)

	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(name string, hard bool, chain []string) error
	visit = func(name string, hard bool, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			if hard {
				return fmt.Errorf("%w: %s", ErrDependencyCycle, strings.Join(append(chain, name), " → "))
			}
			return nil // a soft cycle: order is best effort
		}
		state[name] = visiting
		chain = append(chain, name)
		ds, err := ix.deps(name)
		if err != nil {
			return err
		}
		for _, d := range ds {
			if _, ok := ix.paths[d]; !ok {
				if ix.builtin[d] {
					continue
				}
				return fmt.Errorf("%s needs %s: %w", name, d, ErrModuleNotFound)
			}
			if err := visit(d, true, chain); err != nil {
				return err
			}
		}
		soft, err := ix.softPre(name)
		if err != nil {
			return err
		}
		for _, s := range soft {
			mods, _ := ix.lookup(s)
			for _, m := range mods {
				if err := visit(m, false, chain); err != nil {
					return err
				}
			}
		}
		state[name] = done
		res.Modules = append(res.Modules, Module{Name: name, Path: ix.paths[name]})
		return nil
	}
	for _, r := range roots {
		mods, builtin := ix.lookup(r)
		switch {
		case len(mods) > 0:
		case builtin:
			res.Builtin = append(res.Builtin, r)
		default:
			res.Missing = append(res.Missing, r)
		}
		for _, m := range mods {
			if err := visit(m, true, nil); err != nil {
				return Resolution{}, err
			}
		}
	}
	return res, nil
}
