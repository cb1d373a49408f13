package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/txboot/txboot/txstore/etcstate"
)

// statusEtc is status's /etc section: whose /etc is live, where the
// switch into it kept the administrator's version, and the package
// versions kept beside files in /etc (by the switch, dpkg or ucf).
type statusEtc struct {
	Owner uint64 `json:"owner"` // the tx whose /etc is live; 0: none named yet
	// Conflicts of the owner's switch (etcstate.Conflicts), paths
	// relative to /etc.
	Conflicts []etcstate.Conflict `json:"conflicts"`
	// KeptBeside: *.txboot-new, *.dpkg-dist, *.dpkg-new, *.ucf-dist in
	// the live /etc, relative to /etc.
	KeptBeside []string `json:"kept_beside"`
	// ThisBoot: what initagent did to /etc at this boot (boot.json).
	ThisBoot string `json:"this_boot,omitempty"`
	// Problems reading any of it; the rest is still shown.
	Problems []string `json:"problems,omitempty"`
}

// etcStatus reads the /etc section under root; nil when root has no /etc
// (a store on its own, as in tests).
func etcStatus(root string, bi *bootInfo) *statusEtc {
	owner, ok, err := etcstate.Owner(root)
	if errors.Is(err, etcstate.ErrNoEtc) {
		return nil
	}
	st := &statusEtc{Conflicts: []etcstate.Conflict{}, KeptBeside: []string{}}
	if bi != nil {
		st.ThisBoot = bi.Etc
	}
	if err != nil {
		st.Problems = append(st.Problems, err.Error())
	}
	if ok {
		st.Owner = owner
		cs, err := etcstate.Conflicts(root, owner)
		if err != nil {
			st.Problems = append(st.Problems, err.Error())
		}
		st.Conflicts = append(st.Conflicts, cs...)
	}
	kb, err := etcstate.KeptBeside(root)
	if err != nil {
		st.Problems = append(st.Problems, err.Error())
	}
	st.KeptBeside = append(st.KeptBeside, kb...)
	return st
}

// printEtcStatus is the /etc section in text.
func printEtcStatus(w io.Writer, st *statusEtc) {
	if st == nil {
		return
	}
	if st.Owner != 0 {
		fmt.Fprintf(w, "/etc:     tx %d's\n", st.Owner)
	} else {
		fmt.Fprintln(w, "/etc:     no tx named yet (the next boot makes it the booted tx's)")
	}
	if st.ThisBoot != "" {
		fmt.Fprintf(w, "          this boot: %s\n", printable(st.ThisBoot))
	}
	for _, c := range st.Conflicts {
		fmt.Fprintf(w, "          conflict /etc/%s: %s\n", printable(c.Path), printable(c.Reason))
	}
	for _, p := range st.KeptBeside {
		fmt.Fprintf(w, "          kept beside: /etc/%s\n", printable(p))
	}
	for _, p := range st.Problems {
		fmt.Fprintf(w, "          cannot tell: %s\n", printable(p))
	}
}
