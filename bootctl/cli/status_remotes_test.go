package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
)

// TestStatusRepositories: status shows, per repository, the sequence this
// device accepted, when, and until when it is valid; a frozen device (no
// fresh index since the expiry) shows STALE.
func TestStatusRepositories(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	mustRun(t, "--root", src, "commit", tree(t), "--summary", "base")
	dir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "--root", src, "publish", "--repo", dir, "--expires", "2h")
	url := "file://" + dir
	mustRun(t, "--root", dst, "pull", url, "--insecure")
	out := mustRun(t, "--root", dst, "status")
	if !strings.Contains(out, url+" (repository ") || !strings.Contains(out, "sequence 1, seen ") || !strings.Contains(out, "unverified; fresh, valid until") {
		t.Fatalf("status:\n%s", out)
	}
	var st struct {
		Repositories []struct {
			Sequence uint64    `json:"sequence"`
			Expires  time.Time `json:"expires"`
			Fresh    bool      `json:"fresh"`
		} `json:"repositories"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--root", dst, "--json", "status")), &st); err != nil || len(st.Repositories) != 1 ||
		!st.Repositories[0].Fresh || time.Until(st.Repositories[0].Expires) > 2*time.Hour {
		t.Fatalf("status --json: %v %+v", err, st)
	}
	// Age the accepted index past its expiry, as if no fresh one came.
	rs, err := repo.LoadRemotes(filepath.Join(dst, txstore.DirName))
	if err != nil || len(rs) != 1 {
		t.Fatal(rs, err)
	}
	p := filepath.Join(dst, txstore.DirName, repo.RemotesDir, rs[0].Repository+".json")
	data, _ := os.ReadFile(p)
	old := rs[0].Expires.Format(time.RFC3339Nano)
	aged := strings.Replace(string(data), old, time.Now().Add(-3*time.Hour).UTC().Format(time.RFC3339Nano), 1)
	if aged == string(data) {
		t.Fatalf("expiry %s not in %s", old, data)
	}
	os.WriteFile(p, []byte(aged), 0o600)
	if out := mustRun(t, "--root", dst, "status"); !strings.Contains(out, "STALE: expired") {
		t.Fatalf("status of a frozen device:\n%s", out)
	}
}
