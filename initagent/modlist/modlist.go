// Package modlist is the contract between mkinitramfs, which writes the
// initramfs's module load list, and initagent/kmod, which reads it: the
// list's file name and which files are modules. It is pure so either side
// can import it.
package modlist

import "strings"

// ListFile is the load list's name inside lib/modules/<kver>: one module
// path per line, relative to that directory, dependencies first.
const ListFile = "txboot.modules"

// Compressions are the module compression suffixes, after ".ko".
var compressions = [...]string{".zst", ".xz", ".gz"}

// Compressions returns the compression suffixes a module may have after
// ".ko" (a fresh slice).
func Compressions() []string { return append([]string(nil), compressions[:]...) }

// Exts returns the module file extensions: ".ko" and ".ko" + each
// compression (a fresh slice).
func Exts() []string {
	out := []string{".ko"}
	for _, c := range compressions {
		out = append(out, ".ko"+c)
	}
	return out
}

// CutExt returns name without its module extension, and whether it had one
// with something in front of it.
func CutExt(name string) (stem string, ok bool) {
	for _, ext := range Exts() {
		if s, ok := strings.CutSuffix(name, ext); ok && s != "" {
			return s, true
		}
	}
	return name, false
}
