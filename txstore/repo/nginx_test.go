package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testkit"
	"github.com/txboot/txboot/txstore/testtree"
	"golang.org/x/sys/unix"
)

// nginxServer is a real nginx serving a repository directory on two
// ports: fast, and slow (limit_rate per connection), each with its own
// access log.
type nginxServer struct {
	fast, slow       string // base URLs
	fastLog, slowLog string
	stop             func() // kills nginx (also at the test's end)
}

// needNginx finds nginx, or skips (fails under CI=true: testkit.Skip).
func needNginx(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr == nil {
			return "/usr/sbin/nginx"
		}
		testkit.Skipf(t, "missing requirement: nginx: %v (scripts/install-deps.sh installs nginx-light)", err)
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNginx runs nginx in the foreground with a config of its own in a
// temp prefix; t.Cleanup kills it and waits for it.
func startNginx(t *testing.T, root string, rate string) *nginxServer {
	t.Helper()
	bin := needNginx(t)
	prefix := t.TempDir()
	fastPort, slowPort := freePort(t), freePort(t)
	user := ""
	if os.Geteuid() == 0 {
		user = "user root root;" // workers must read the test's 0700 temp dirs
	}
	ns := &nginxServer{
		fast: fmt.Sprintf("http://127.0.0.1:%d/", fastPort), slow: fmt.Sprintf("http://127.0.0.1:%d/", slowPort),
		fastLog: filepath.Join(prefix, "access-fast.log"), slowLog: filepath.Join(prefix, "access-slow.log"),
	}
	conf := fmt.Sprintf(`%s
worker_processes 1;
pid %[2]s/nginx.pid;
lock_file %[2]s/nginx.lock;
error_log %[2]s/error.log info;
events { worker_connections 256; }
http {
	default_type application/octet-stream;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	keepalive_requests 100000;
	server {
		listen 127.0.0.1:%[3]d;
		root %[4]s;
		access_log %[5]s;
	}
	server {
		listen 127.0.0.1:%[6]d;
		root %[4]s;
		access_log %[7]s;
		limit_rate %[8]s;
	}
}
`, user, prefix, fastPort, root, ns.fastLog, slowPort, ns.slowLog, rate)
	cf := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// Output to a file, not a pipe: Wait must not wait for the worker
	// processes' copies of it.
	out, err := os.Create(filepath.Join(prefix, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bin, "-e", filepath.Join(prefix, "error.log"), "-c", cf, "-p", prefix, "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true} // master and workers: one group to kill
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var once sync.Once
	ns.stop = func() {
		once.Do(func() {
			unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
			<-exited
		})
	}
	t.Cleanup(ns.stop)
	logs := func() string {
		o, _ := os.ReadFile(filepath.Join(prefix, "stdout"))
		el, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
		return string(o) + string(el)
	}
	// Ready when both ports answer (bounded: a broken config exits).
	// A client with a timeout: a listening nginx that never answers must
	// fail the test, not hang it.
	hc := &http.Client{Timeout: 2 * time.Second}
	for _, u := range []string{ns.fast, ns.slow} {
		for i := 0; ; i++ {
			resp, err := hc.Get(u + ConfigPath)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			select {
			case err := <-exited:
				t.Fatalf("nginx exited: %v\n%s", err, logs())
			case <-time.After(50 * time.Millisecond):
			}
			if i > 400 {
				t.Fatalf("nginx does not answer on %s: %v\n%s", u, err, logs())
			}
		}
	}
	return ns
}

// objectGets counts "GET /objects/" lines in an nginx access log.
func objectGets(t *testing.T, log string) int {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(data), `"GET /objects/`)
}

// randomFiles are n files of size bytes of incompressible content.
func randomFiles(prefix string, n, size int, seed uint64) map[string]string {
	rng := rand.New(rand.NewPCG(seed, 7))
	out := map[string]string{}
	b := make([]byte, size)
	for i := 0; i < n; i++ {
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		out[fmt.Sprintf("%s/f%04d", prefix, i)] = string(b)
	}
	return out
}

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	var fs []testtree.File
	for p, d := range files {
		fs = append(fs, testtree.File{Path: p, Data: d, Mode: 0o644})
	}
	fs = append(fs, testtree.File{Path: "bin/tool", Data: "#!/bin/sh\necho tool\n", Mode: 0o755},
		testtree.File{Path: "share/doc/readme", Data: strings.Repeat("read me please\n", 200), Mode: 0o644})
	if err := testtree.Write(dir, fs, time.Unix(1000, 0)); err != nil {
		t.Fatal(err)
	}
}

// hashesOf is the set of distinct non-empty contents of a tx.
func hashesOf(t *testing.T, s *txstore.Store, tx *txstore.Tx) map[cas.Hash]bool {
	t.Helper()
	m, err := s.Manifest(tx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[cas.Hash]bool{}
	for _, n := range needed(m, nil) {
		out[n.hash] = true
	}
	return out
}

// casHashes is the set of contents in a store's CAS (any mode).
func casHashes(t *testing.T, root string) map[cas.Hash]bool {
	t.Helper()
	out := map[cas.Hash]bool{}
	filepath.WalkDir(filepath.Join(root, txstore.DirName, "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if k, err := cas.ParseName(d.Name()); err == nil {
				out[k.Hash] = true
			}
		}
		return nil
	})
	return out
}

// buildBootctl builds bootctl into a temp dir (the pull that is killed
// midway runs as a child process).
func buildBootctl(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building bootctl needs go in PATH: %v", err)
	}
	out := filepath.Join(t.TempDir(), "bootctl")
	cmd := exec.Command(gobin, "build", "-o", out, "github.com/txboot/txboot/bootctl")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build bootctl: %v\n%s", err, b)
	}
	return out
}

func withStore(t *testing.T, root string, fn func(s *txstore.Store)) {
	t.Helper()
	s, err := txstore.Open(root, txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fn(s)
}

// TestPullNginx: the real publish writes a repository, a real nginx serves
// it, and pull brings it into a second store: the same digest, both verify
// full; an update fetches only its new objects; a pull SIGKILLed midway
// leaves no tx, and its re-run fetches only the rest (counted in nginx's
// access logs).
func TestPullNginx(t *testing.T) {
	needNginx(t)
	testkit.SkipShort(t, "builds bootctl and runs nginx")
	privPEM, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := sign.ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	keyDir := t.TempDir()
	pubFile := filepath.Join(keyDir, "repo.pem")
	if err := os.WriteFile(pubFile, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	trusted, err := sign.LoadTrustDirs(keyDir)
	if err != nil {
		t.Fatal(err)
	}
	srcRoot, dstRoot, repoDir := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "repo")
	files := randomFiles("lib/data", 40, 3000, 1)
	commitPublish := func(files map[string]string) *txstore.Tx {
		t.Helper()
		d := t.TempDir()
		writeTree(t, d, files)
		var tx *txstore.Tx
		withStore(t, srcRoot, func(s *txstore.Store) {
			var err error
			if tx, _, err = s.Commit(d, txstore.CommitOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := Publish(s, repoDir, []uint64{tx.ID}, PublishOptions{Key: priv, Version: fmt.Sprintf("v%d", tx.ID)}); err != nil {
				t.Fatal(err)
			}
		})
		return tx
	}
	srcHashes := func(tx *txstore.Tx) (h map[cas.Hash]bool) {
		withStore(t, srcRoot, func(s *txstore.Store) { h = hashesOf(t, s, tx) })
		return h
	}
	tx1 := commitPublish(files)
	ns := startNginx(t, repoDir, "8k")
	pullFast := func() (*txstore.Tx, *PullStats) {
		t.Helper()
		var tx *txstore.Tx
		var st *PullStats
		withStore(t, dstRoot, func(s *txstore.Store) {
			f, err := NewHTTPFetcher(ns.fast, 8)
			if err != nil {
				t.Fatal(err)
			}
			defer f.CloseIdle()
			if tx, st, err = Pull(context.Background(), s, f, ns.fast, PullOptions{Trusted: trusted, Workers: 8}); err != nil {
				t.Fatal(err)
			}
			if probs, err := s.Verify(tx.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
				t.Fatalf("pulled tx %d: verify full: %v %v", tx.ID, probs, err)
			}
		})
		withStore(t, srcRoot, func(s *txstore.Store) {
			for _, x := range mustList(t, s) {
				if probs, err := s.Verify(x.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
					t.Fatalf("source tx %d: verify full: %v %v", x.ID, probs, err)
				}
			}
		})
		return tx, st
	}

	// 1. The first pull fetches every object once.
	got1, st1 := pullFast()
	if got1.Digest != tx1.Digest || got1.Version != "v1" {
		t.Fatalf("pulled %s %q, want %s v1", got1.Digest, got1.Version, tx1.Digest)
	}
	want1 := len(srcHashes(tx1))
	if n := objectGets(t, ns.fastLog); n != want1 || st1.Fetched != want1 {
		t.Fatalf("first pull: %d GET /objects/ in the access log, %d fetched; want %d", n, st1.Fetched, want1)
	}

	// 2. An update changing a few files fetches only those.
	files2 := map[string]string{}
	for p, d := range files {
		files2[p] = d
	}
	for p, d := range randomFiles("lib/data", 3, 2500, 2) { // replaces f0000..f0002
		files2[p] = d
	}
	for p, d := range randomFiles("lib/added", 2, 4000, 3) {
		files2[p] = d
	}
	tx2 := commitPublish(files2)
	h1, h2 := srcHashes(tx1), srcHashes(tx2)
	newObjs := 0
	for h := range h2 {
		if !h1[h] {
			newObjs++
		}
	}
	if newObjs != 5 {
		t.Fatalf("update has %d new objects, want 5", newObjs)
	}
	before := objectGets(t, ns.fastLog)
	got2, st2 := pullFast()
	if got2.Digest != tx2.Digest {
		t.Fatalf("pulled %s, want %s", got2.Digest, tx2.Digest)
	}
	if n := objectGets(t, ns.fastLog) - before; n != newObjs || st2.Fetched != newObjs || st2.Present != len(h2)-newObjs {
		t.Fatalf("update pull: %d GET /objects/, stats %+v; want %d fetched", n, st2, newObjs)
	}
	// The update's manifest came as a delta against tx1: neither its whole
	// manifest nor its object table was fetched.
	hex1, hex2 := strings.TrimPrefix(tx1.Digest, "sha256:"), strings.TrimPrefix(tx2.Digest, "sha256:")
	if st2.Delta != "used" || logGets(t, ns.fastLog, "/manifests/"+hex2) != 0 || logGets(t, ns.fastLog, "/txs/"+hex2) != 0 ||
		logGets(t, ns.fastLog, "/deltas/"+hex2+"-"+hex1+".zst") != 1 {
		t.Fatalf("update pull: delta %q; GETs: manifest %d, table %d, delta %d", st2.Delta, logGets(t, ns.fastLog, "/manifests/"+hex2),
			logGets(t, ns.fastLog, "/txs/"+hex2), logGets(t, ns.fastLog, "/deltas/"+hex2))
	}

	// 3. A big update pulled from the slow port by bootctl, SIGKILLed once
	// some of its objects are in the store, then pulled again.
	files3 := map[string]string{}
	for p, d := range files2 {
		files3[p] = d
	}
	for p, d := range randomFiles("lib/big", 120, 24<<10, 4) {
		files3[p] = d
	}
	tx3 := commitPublish(files3)
	h3 := srcHashes(tx3)
	bootctl := buildBootctl(t)
	var txsBefore int
	withStore(t, dstRoot, func(s *txstore.Store) { txsBefore = len(mustList(t, s)) })
	baseline := len(casHashes(t, dstRoot))
	child := exec.Command(bootctl, "--root", dstRoot, "pull", ns.slow, "--trust", pubFile)
	var childOut bytes.Buffer
	child.Stdout, child.Stderr = &childOut, &childOut
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	// Midway: some fetched objects published into the CAS (pull publishes
	// a batch every 2 s), most of the transfer still to come.
	for i := 0; ; i++ {
		if n := len(casHashes(t, dstRoot)) - baseline; n >= 10 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the slow pull ended before it could be killed midway (%v):\n%s", err, childOut.String())
		case <-time.After(20 * time.Millisecond):
		}
		if i > 3000 {
			t.Fatalf("no object of the slow pull reached the store in 60 s:\n%s", childOut.String())
		}
	}
	child.Process.Signal(unix.SIGKILL)
	if err := <-done; err == nil {
		t.Fatalf("killed pull exited 0:\n%s", childOut.String())
	}
	present := 0
	have := casHashes(t, dstRoot)
	for h := range h3 {
		if have[h] {
			present++
		}
	}
	if present >= len(h3) {
		t.Fatalf("the killed pull had every object already (%d): not midway", present)
	}
	withStore(t, dstRoot, func(s *txstore.Store) { // a writer's open cleans staging
		txs := mustList(t, s)
		if len(txs) != txsBefore {
			t.Fatalf("the killed pull left %d txs, want %d", len(txs), txsBefore)
		}
		for _, x := range txs {
			if probs, err := s.Verify(x.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
				t.Fatalf("tx %d after the kill: %v %v", x.ID, probs, err)
			}
		}
		ents, err := os.ReadDir(filepath.Join(s.Dir, "staging"))
		if err != nil || len(ents) != 0 {
			t.Fatalf("staging after the next open: %v %v", ents, err)
		}
	})
	before = objectGets(t, ns.fastLog)
	out, err := exec.Command(bootctl, "--root", dstRoot, "--json", "pull", ns.fast, "--trust", pubFile).CombinedOutput()
	if err != nil {
		t.Fatalf("re-run: %v\n%s", err, out)
	}
	var res struct {
		Tx    txstore.Tx `json:"tx"`
		Stats PullStats  `json:"stats"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("re-run output: %v\n%s", err, out)
	}
	if res.Tx.Digest != tx3.Digest || res.Tx.Version != fmt.Sprintf("v%d", tx3.ID) || res.Tx.Origin != ns.fast {
		t.Fatalf("re-run record %+v", res.Tx)
	}
	rest := len(h3) - present
	if n := objectGets(t, ns.fastLog) - before; n != rest || res.Stats.Fetched != rest || res.Stats.Present != present {
		t.Fatalf("re-run: %d GET /objects/ in the access log, stats %+v; want %d fetched, %d present (killed after %d slow GETs)",
			n, res.Stats, rest, present, objectGets(t, ns.slowLog))
	}
	withStore(t, dstRoot, func(s *txstore.Store) {
		if probs, err := s.Verify(res.Tx.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
			t.Fatalf("tx %d: verify full: %v %v", res.Tx.ID, probs, err)
		}
	})
	t.Logf("killed midway with %d of the %d objects in the store; the re-run fetched %d", present, len(h3), rest)

	// 4. An update downloaded only (bootctl pull --download-only): the
	// delta and only the new objects are fetched, nothing is committed;
	// gc loses none of it; pull --apply commits it with no network.
	files4 := map[string]string{}
	for p, d := range files3 {
		files4[p] = d
	}
	for p, d := range randomFiles("lib/data", 2, 2000, 5) {
		files4[p] = d
	}
	tx4 := commitPublish(files4)
	h4 := srcHashes(tx4)
	new4 := 0
	for h := range h4 {
		if !h3[h] {
			new4++
		}
	}
	before = objectGets(t, ns.fastLog)
	hex3, hex4 := strings.TrimPrefix(tx3.Digest, "sha256:"), strings.TrimPrefix(tx4.Digest, "sha256:")
	out, err = exec.Command(bootctl, "--root", dstRoot, "pull", ns.fast, "--trust", pubFile, "--download-only").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "pull --apply") {
		t.Fatalf("download-only: %v\n%s", err, out)
	}
	if n := objectGets(t, ns.fastLog) - before; n != new4 || logGets(t, ns.fastLog, "/manifests/"+hex4) != 0 ||
		logGets(t, ns.fastLog, "/txs/"+hex4) != 0 || logGets(t, ns.fastLog, "/deltas/"+hex4+"-"+hex3+".zst") != 1 {
		t.Fatalf("download-only: %d GET /objects/ (want %d), manifest %d, table %d, delta %d GETs", n, new4,
			logGets(t, ns.fastLog, "/manifests/"+hex4), logGets(t, ns.fastLog, "/txs/"+hex4), logGets(t, ns.fastLog, "/deltas/"+hex4))
	}
	withStore(t, dstRoot, func(s *txstore.Store) {
		if txs := mustList(t, s); len(txs) != txsBefore+1 {
			t.Fatalf("download-only committed: %d txs", len(txs))
		}
	})
	if out, err := exec.Command(bootctl, "--root", dstRoot, "gc").CombinedOutput(); err != nil {
		t.Fatalf("gc: %v\n%s", err, out)
	}
	ns.stop() // apply needs no network
	out, err = exec.Command(bootctl, "--root", dstRoot, "--json", "pull", "--apply").CombinedOutput()
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	var applied struct {
		Tx txstore.Tx `json:"tx"`
	}
	if err := json.Unmarshal(out, &applied); err != nil || applied.Tx.Digest != tx4.Digest || applied.Tx.Origin != ns.fast {
		t.Fatalf("apply output: %v\n%s", err, out)
	}
	withStore(t, dstRoot, func(s *txstore.Store) {
		if probs, err := s.Verify(applied.Tx.ID, txstore.VerifyFull); err != nil || len(probs) != 0 {
			t.Fatalf("applied tx %d: verify full: %v %v", applied.Tx.ID, probs, err)
		}
		if def, _ := s.Default(); def != applied.Tx.ID {
			t.Fatalf("default %d, want the applied %d", def, applied.Tx.ID)
		}
	})

	// 5. The same repository as a directory (file://), into a fresh store.
	fileRoot := t.TempDir()
	out, err = exec.Command(bootctl, "--root", fileRoot, "--json", "pull", "file://"+repoDir, "--trust", pubFile).CombinedOutput()
	if err != nil {
		t.Fatalf("file:// pull: %v\n%s", err, out)
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Tx.Digest != tx4.Digest || res.Stats.Fetched != len(h4) {
		t.Fatalf("file:// pull: %v\n%s", err, out)
	}

	// 6. A hostile mirror replays the index of step 4, validly signed,
	// after the device saw a newer one: refused, naming both sequences.
	oldIndex, _ := os.ReadFile(filepath.Join(repoDir, IndexPath))
	oldSig, _ := os.ReadFile(filepath.Join(repoDir, SigPath))
	commitPublish(randomFiles("lib/data", 40, 3000, 5))
	ns = startNginx(t, repoDir, "8k")
	if out, err := exec.Command(bootctl, "--root", dstRoot, "pull", ns.fast, "--trust", pubFile).CombinedOutput(); err != nil {
		t.Fatalf("pull of tx 5: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(repoDir, SigPath), oldSig, 0o644)
	os.WriteFile(filepath.Join(repoDir, IndexPath), oldIndex, 0o644)
	out, err = exec.Command(bootctl, "--root", dstRoot, "pull", ns.fast, "--trust", pubFile, "--tx", "v3", "--allow-downgrade").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "rollback refused: index sequence") || !strings.Contains(string(out), "older than sequence") {
		t.Fatalf("replayed index: %v\n%s", err, out)
	}
}

// logGets counts GETs of paths starting with prefix in an nginx access log.
func logGets(t *testing.T, log, prefix string) int {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(data), `"GET `+prefix)
}

func mustList(t *testing.T, s *txstore.Store) []*txstore.Tx {
	t.Helper()
	txs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	return txs
}
