package bls

import "path"

// globMatch is systemd-boot's glob as path.Match approximates it. (The name
// grammar's own tests are in txstore/loader.)
func globMatch(pattern, s string) bool {
	ok, err := path.Match(pattern, s)
	return err == nil && ok
}
