package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/sign"
)

// TestPullVerb: bootctl pull from a repository publish wrote, served over
// HTTP: the tx arrives with its version, list/status/show say so, and the
// usual refusals have their exit codes.
func TestPullVerb(t *testing.T) {
	src := t.TempDir()
	mustRun(t, "--root", src, "commit", tree(t), "--summary", "base")
	privPEM, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := sign.ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(t.TempDir(), "repo.pem")
	if err := os.WriteFile(pub, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(t.TempDir(), "repo")
	s, err := txstore.Open(src, txstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Publish(s, repoDir, []uint64{1}, repo.PublishOptions{Key: priv, Version: "2026.1"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	srv := httptest.NewServer(http.FileServer(http.Dir(repoDir)))
	defer srv.Close()

	dst := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"untrusted", []string{"pull", srv.URL}, ExitFail, "--insecure"},
		{"no such version", []string{"pull", srv.URL, "--trust", pub, "--tx", "9.9"}, ExitNotFound, "no such tx"},
		{"bad digest", []string{"pull", srv.URL, "--trust", pub, "--tx", "sha256:xyz"}, ExitUsage, "bad hash"},
		{"bad URL", []string{"pull", "ftp://example/repo", "--insecure"}, ExitUsage, "http"},
		{"no URL", []string{"pull"}, ExitUsage, "one repository URL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, errs := run(t, append([]string{"--root", dst}, c.args...)...)
			if code != c.code || !strings.Contains(errs, c.msg) || strings.Count(errs, "\n") != 1 {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errs, c.code, c.msg)
			}
		})
	}
	if n := txCount(t, dst); n != 0 {
		t.Fatalf("refused pulls left %d txs", n)
	}

	out := mustRun(t, "--root", dst, "--json", "pull", srv.URL, "--trust", pub)
	var res struct {
		Tx    txstore.Tx     `json:"tx"`
		Stats repo.PullStats `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if res.Tx.Version != "2026.1" || res.Tx.Origin != srv.URL || res.Stats.Fetched == 0 || res.Stats.Fetched != res.Stats.Objects || len(res.Tx.Signatures) != 1 {
		t.Fatalf("pull --json: %s", out)
	}
	for _, verb := range []string{"list", "status", "show 1"} {
		out := mustRun(t, append([]string{"--root", dst}, strings.Fields(verb)...)...)
		if !strings.Contains(out, "2026.1") || !strings.Contains(out, strings.TrimPrefix(res.Tx.Digest, "sha256:")[:12]) {
			t.Fatalf("%s does not show the version and digest:\n%s", verb, out)
		}
	}
	// Again: nothing fetched, nothing committed.
	out = mustRun(t, "--root", dst, "pull", srv.URL, "--trust", pub)
	if !strings.Contains(out, "nothing fetched") || txCount(t, dst) != 1 {
		t.Fatalf("second pull: %s", out)
	}
}
