package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
)

// statusRemote is one repository in status: what this device last
// accepted from it, and whether that index is still fresh (a device that
// keeps seeing an old index shows up here as stale).
type statusRemote struct {
	*repo.Remote
	Fresh bool `json:"fresh"`
}

// remotes reads the repositories' states; a problem is a warning, status
// shows the rest.
func remotes(e *env, s *txstore.Store, now time.Time) []statusRemote {
	rs, err := repo.LoadRemotes(s.Dir)
	if err != nil {
		fmt.Fprintf(e.stderr, "bootctl: warning: %v\n", err)
	}
	out := []statusRemote{}
	for _, r := range rs {
		out = append(out, statusRemote{Remote: r, Fresh: r.Fresh(now)})
	}
	return out
}

// printRemotes is status's repository section.
func printRemotes(w io.Writer, rs []statusRemote, now time.Time) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintln(w, "\nRepositories (the newest index accepted from each):")
	for _, r := range rs {
		state := "fresh, valid until " + r.Expires.Format(time.RFC3339)
		if !r.Fresh {
			state = fmt.Sprintf("STALE: expired %s (%s ago); a pull refuses it until the repository is published again",
				r.Expires.Format(time.RFC3339), now.Sub(r.Expires).Round(time.Minute))
		}
		by := "unverified"
		if r.KeyID != "" {
			by = "key " + r.KeyID
		}
		fmt.Fprintf(w, "  %s (repository %s): sequence %d, seen %s, %s; %s\n", printable(r.Origin), r.Repository,
			r.Sequence, r.Checked.Format(time.RFC3339), by, state)
	}
}
