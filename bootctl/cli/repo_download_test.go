package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/repo"
	"github.com/txboot/txboot/txstore/testtree"
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

// TestListStatusDownloads: list and status name each pending download
// (pull --download-only) with the command that applies it, in text and in
// --json; once applied it is gone from both.
func TestListStatusDownloads(t *testing.T) {
	oldInfo, oldCmd := bootInfoPath, procCmdline
	t.Cleanup(func() { bootInfoPath, procCmdline = oldInfo, oldCmd })
	bootInfoPath = filepath.Join(t.TempDir(), "no-boot.json")
	procCmdline = filepath.Join(t.TempDir(), "no-cmdline")
	src := t.TempDir()
	mustRun(t, "--root", src, "commit", tree(t), "--summary", "base")
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "--root", src, "publish", "--repo", repoDir, "--version", "v2", "1")
	dst := t.TempDir()
	mustRun(t, "--root", dst, "commit", tree(t, testtree.File{Path: "lib/local", Data: "l", Mode: 0o644}))
	efi := t.TempDir()

	// None yet: no line, an empty list.
	for _, args := range [][]string{{"list"}, {"status", "--efivars", efi}} {
		if out := mustRun(t, append([]string{"--root", dst}, args...)...); strings.Contains(out, "downloaded") {
			t.Errorf("%s without downloads:\n%s", args[0], out)
		}
	}
	mustRun(t, "--root", dst, "pull", "file://"+repoDir, "--insecure", "--download-only")
	s, err := txstore.Open(dst, txstore.Options{ReadOnly: true, Timeout: txstore.DefaultTimeout})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := s.Downloads()
	s.Close()
	if err != nil || len(ds) != 1 {
		t.Fatalf("downloads %v %v", ds, err)
	}
	want := "downloaded, not applied: v2 " + ds[0].Digest + " (bootctl pull --apply --tx v2)\n"
	for _, args := range [][]string{{"list"}, {"status", "--efivars", efi}} {
		out := mustRun(t, append([]string{"--root", dst}, args...)...)
		if strings.Count(out, want) != 1 {
			t.Errorf("%s: want one line %q:\n%s", args[0], want, out)
		}
		out = mustRun(t, append([]string{"--root", dst, "--json"}, args...)...)
		var res struct {
			Downloads []txstore.Download `json:"downloads"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%s --json: %v\n%s", args[0], err, out)
		}
		if len(res.Downloads) != 1 || res.Downloads[0].Digest != ds[0].Digest || res.Downloads[0].Version != "v2" {
			t.Errorf("%s --json downloads %+v:\n%s", args[0], res.Downloads, out)
		}
	}
	mustRun(t, "--root", dst, "pull", "--apply", "--tx", "v2")
	for _, args := range [][]string{{"list"}, {"status", "--efivars", efi}} {
		if out := mustRun(t, append([]string{"--root", dst}, args...)...); strings.Contains(out, "downloaded") {
			t.Errorf("%s after apply:\n%s", args[0], out)
		}
		out := mustRun(t, append([]string{"--root", dst, "--json"}, args...)...)
		if !strings.Contains(out, `"downloads": []`) {
			t.Errorf("%s --json after apply: want an empty downloads list:\n%s", args[0], out)
		}
	}
}

// TestApplyArg: the --tx the list/status hint names picks that download:
// its version only when FindDownload would resolve it to this one.
func TestApplyArg(t *testing.T) {
	dg := func(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }
	ds := []*txstore.Download{
		{Digest: dg('a'), Version: "2.0"},        // a newer one has 2.0 too
		{Digest: dg('b'), Version: "2.0"},        // the newest 2.0
		{Digest: dg('c')},                        // no version
		{Digest: dg('d'), Version: "latest"},     // means the newest download
		{Digest: dg('e'), Version: "a b"},        // needs quoting
		{Digest: dg('f'), Version: "-x"},         // reads as a flag
		{Digest: dg('1'), Version: dg('2')},      // reads as a digest
		{Digest: dg('3'), Version: "v1.2+deb~1"}, // plain
	}
	want := []string{dg('a'), "2.0", dg('c'), dg('d'), dg('e'), dg('f'), dg('1'), "v1.2+deb~1"}
	for i := range ds {
		if got := applyArg(ds, i); got != want[i] {
			t.Errorf("download %d (version %q): --tx %s, want %s", i, ds[i].Version, got, want[i])
		}
	}
}
