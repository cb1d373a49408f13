package txstore

import (
	"fmt"
	"strconv"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/layout"
	"github.com/txboot/txboot/txstore/internal/safefs"
	"golang.org/x/sys/unix"
)

// ErrDamaged: a path in the store is not what the layout says (a symlink
// or non-directory where a directory belongs, or a damaged object). It was
// left alone, neither followed nor removed; the error names it.
var ErrDamaged = cas.ErrDamaged

// openTree opens trees/<id> without following a symlink at trees or
// trees/<id>; what it finds instead is returned as the verify problem.
func (s *Store) openTree(id uint64) (int, *Problem) {
	name := strconv.FormatUint(id, 10)
	dfd, err := layout.Open(s.Dir)
	if err != nil {
		return -1, &Problem{Path: "usr", Reason: fmt.Sprintf("tree missing: %v", err)}
	}
	defer unix.Close(dfd)
	tfd, err := safefs.OpenDir(dfd, "trees")
	if err != nil {
		if safefs.IsNotDir(err) {
			return -1, &Problem{Path: ".", Reason: fmt.Sprintf("the store's trees directory is %s, not a directory (not followed)", safefs.Describe(dfd, "trees"))}
		}
		return -1, &Problem{Path: "usr", Reason: fmt.Sprintf("tree missing: %v", err)}
	}
	defer unix.Close(tfd)
	fd, err := safefs.OpenDir(tfd, name)
	if err != nil {
		if safefs.IsNotDir(err) {
			return -1, &Problem{Path: ".", Reason: fmt.Sprintf("trees/%s is %s, not a directory (not followed)", name, safefs.Describe(tfd, name))}
		}
		return -1, &Problem{Path: "usr", Reason: fmt.Sprintf("tree missing: %v", err)}
	}
	return fd, nil
}

// layout is the store directory's layout checks and clean-up.
func (s *Store) layout() layout.Dir { return layout.Dir(s.Dir) }
