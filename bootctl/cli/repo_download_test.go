package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
)

// TestPullDownloadApplyVerb: pull --download-only from a file:// repository
// stores the tx without committing it, gc keeps it, pull --apply commits it
// without the repository, and a second --apply finds nothing (exit 4).
func TestPullDownloadApplyVerb(t *testing.T) {
	src := t.TempDir()
	mustRun(t, "--root", src, "commit", tree(t), "--summary", "base")
	repoDir := filepath.Join(t.TempDir(), "repo")
	s, err := txstore.Open(src, txstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Publish(s, repoDir, []uint64{1}, repo.PublishOptions{Version: "2026.2"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	url := "file://" + repoDir

	dst := t.TempDir()
	if code, _, errs := run(t, "--root", dst, "pull", "--apply"); code != ExitNotFound || !strings.Contains(errs, "store") {
		t.Fatalf("apply without a store: exit %d %q", code, errs)
	}
	out := mustRun(t, "--root", dst, "--json", "pull", url, "--insecure", "--download-only")
	var res struct {
		Download txstore.Download `json:"download"`
		Stats    repo.PullStats   `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if res.Download.Version != "2026.2" || res.Download.Origin != url || res.Stats.Fetched == 0 {
		t.Fatalf("download --json: %s", out)
	}
	if n := txCount(t, dst); n != 0 {
		t.Fatalf("download-only committed %d txs", n)
	}
	mustRun(t, "--root", dst, "gc")
	out = mustRun(t, "--root", dst, "pull", "--apply")
	if !strings.Contains(out, "applied tx 1") || !strings.Contains(out, "2026.2") {
		t.Fatalf("apply: %s", out)
	}
	if n := txCount(t, dst); n != 1 {
		t.Fatalf("%d txs after apply", n)
	}
	mustRun(t, "--root", dst, "verify", "--full", "1")
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"pull", "--apply"}, ExitNotFound, "nothing was downloaded"},
		{[]string{"pull", "--apply", "--tx", "2026.2"}, ExitNotFound, "no such download"},
		{[]string{"pull", "--apply", url}, ExitUsage, "no URL"},
		{[]string{"pull", "--apply", "--discard"}, ExitUsage, "exclude"},
		{[]string{"pull", "--download-only", "--apply"}, ExitUsage, "exclude"},
		{[]string{"pull", "file://relative", "--insecure"}, ExitUsage, "file:///"},
	} {
		code, _, errs := run(t, append([]string{"--root", dst}, c.args...)...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errs, c.code, c.msg)
		}
	}

	// Download-only of what the store has: nothing fetched.
	out = mustRun(t, "--root", dst, "pull", url, "--insecure", "--download-only")
	if !strings.Contains(out, "nothing fetched") {
		t.Fatalf("download of a committed tx: %s", out)
	}

	// --discard drops the record; gc then frees the objects.
	dst2 := t.TempDir()
	mustRun(t, "--root", dst2, "pull", url, "--insecure", "--download-only")
	if out := mustRun(t, "--root", dst2, "pull", "--discard"); !strings.Contains(out, "discarded") {
		t.Fatalf("discard: %s", out)
	}
	if code, _, _ := run(t, "--root", dst2, "pull", "--apply"); code != ExitNotFound {
		t.Fatalf("apply after discard: exit %d", code)
	}
	if out := mustRun(t, "--root", dst2, "gc"); !strings.Contains(out, "removed") || strings.Contains(out, "removed 0") {
		t.Fatalf("gc after discard: %s", out)
	}
}
