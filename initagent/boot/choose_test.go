package boot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
	"github.com/txboot/txboot/txstore/verity"
)

// dirAssembler stands in for the bind mount (the real one is exercised by
// the QEMU tests): it checks init inside the tree it was given.
type dirAssembler struct{ tree string }

func (d *dirAssembler) Mount(tree string) error { d.tree = tree; return nil }
func (d *dirAssembler) Unmount() error          { d.tree = ""; return nil }

// MeasureImage computes the digest (the host has no fs-verity);
// MountSealed stands the image's tree in for it.
func (d *dirAssembler) MeasureImage(image string) (verity.Sum, error) {
	return verity.DigestPath(image)
}
func (d *dirAssembler) MountSealed(image, _ string) error {
	d.tree = filepath.Join(filepath.Dir(image), "usr")
	return nil
}
func (d *dirAssembler) FindInit(c []string) (string, error) {
	for _, p := range c {
		rel := strings.TrimPrefix(strings.TrimPrefix(p, "/usr"), "/")
		if fi, err := os.Stat(filepath.Join(d.tree, rel)); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("no init")
}

// store3 builds a store with txs 1..3; tx 2 optionally lacks an init.
func store3(t *testing.T, noInit2 bool) *txstore.Store {
	t.Helper()
	s, err := txstore.Open(t.TempDir(), txstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for i := 1; i <= 3; i++ {
		files := append(testtree.Sample(), testtree.File{Path: "share/marker", Data: fmt.Sprint(i), Mode: 0o644})
		if !(noInit2 && i == 2) {
			files = append(files, testtree.File{Path: "sbin/init", Data: "#!init", Mode: 0o755})
		}
		d := t.TempDir()
		if err := testtree.Write(d, files, time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Commit(d, txstore.CommitOptions{Tries: 2}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func noLog(int, string, ...any) {}

func req(tx uint64) Request {
	return Request{Tx: tx, Verify: txstore.VerifyFast, LoaderTriesLeft: -1}
}

func TestChoose(t *testing.T) {
	cases := []struct {
		name         string
		noInit2      bool
		prepare      func(t *testing.T, s *txstore.Store)
		req          Request
		want         uint64
		failed       string // substring of the first failure
		badAfter     []uint64
		order        []uint64 // txs tried, in order, when all fail
		reblitted    bool
		leftAfter    int    // tries left on the booted tx afterwards (checked for "bootloader…" cases)
		defaultAfter uint64 // 0: unchecked
	}{
		{name: "default is newest", req: req(0), want: 3},
		{name: "explicit", req: req(1), want: 1},
		{name: "unknown id falls back to newest older", req: req(9), want: 3, failed: "not in the store"},
		{name: "digest mismatch", req: Request{Tx: 3, Digest: "sha256:" + strings.Repeat("0", 64), Verify: txstore.VerifyFast, LoaderTriesLeft: -1}, want: 2, failed: "digest mismatch"},
		{name: "malformed digest", req: Request{Tx: 3, DigestInvalid: true, Verify: txstore.VerifyFast, LoaderTriesLeft: -1}, want: 2, failed: "malformed"},
		{name: "bad tx refused", prepare: func(t *testing.T, s *txstore.Store) {
			s.Update(3, txstore.Event{}, func(x *txstore.Tx) error { x.MarkBad("broken"); return nil })
		}, req: req(3), want: 2, failed: "marked bad"},
		{name: "bad tx forced", prepare: func(t *testing.T, s *txstore.Store) {
			s.Update(3, txstore.Event{}, func(x *txstore.Tx) error { x.MarkBad("broken"); return nil })
		}, req: Request{Tx: 3, Force: true, Verify: txstore.VerifyFast, LoaderTriesLeft: -1}, want: 3},
		{name: "out of tries becomes bad", prepare: func(t *testing.T, s *txstore.Store) {
			s.Update(3, txstore.Event{}, func(x *txstore.Tx) error { x.TriesLeft = 0; return nil })
		}, req: req(3), want: 2, failed: "no boot tries left", badAfter: []uint64{3}},
		// systemd-boot already spent this boot's try: +0 means "last try, now".
		{name: "bootloader counter: last try is this boot", req: Request{Tx: 3, LoaderTx: 3, LoaderTriesLeft: 0, Verify: txstore.VerifyFast}, want: 3, leftAfter: 0},
		{name: "bootloader counter lower than the store's", req: Request{Tx: 3, LoaderTx: 3, LoaderTriesLeft: 1, Verify: txstore.VerifyFast}, want: 3, leftAfter: 1},
		{name: "bootloader counter higher is not a refund", prepare: func(t *testing.T, s *txstore.Store) {
			s.Update(3, txstore.Event{}, func(x *txstore.Tx) error { x.TriesLeft = 1; return nil })
		}, req: Request{Tx: 3, LoaderTx: 3, LoaderTriesLeft: 5, Verify: txstore.VerifyFast}, want: 3, leftAfter: 0},
		{name: "a trial out of tries that the bootloader skipped is marked bad", prepare: func(t *testing.T, s *txstore.Store) {
			s.Update(3, txstore.Event{}, func(x *txstore.Tx) error { x.State, x.TriesLeft, x.Tries = txstore.StateTrying, 0, 2; return nil })
			s.Update(2, txstore.Event{}, func(x *txstore.Tx) error { x.MarkGood(); return nil })
		}, req: req(2), want: 2, badAfter: []uint64{3}, defaultAfter: 2},
		{name: "good fallback preferred", prepare: func(t *testing.T, s *txstore.Store) {
			s.Update(1, txstore.Event{}, func(x *txstore.Tx) error { x.MarkGood(); return nil })
			os.RemoveAll(filepath.Join(s.Dir, "objects"))
		}, req: req(3), want: 0, failed: "manifest", badAfter: []uint64{3, 2, 1}, order: []uint64{3, 1, 2}},
		{name: "tree missing is re-blitted", prepare: func(t *testing.T, s *txstore.Store) {
			os.RemoveAll(filepath.Dir(s.TreeDir(3)))
		}, req: req(3), want: 3, reblitted: true},
		{name: "verify off still re-blits a missing tree", prepare: func(t *testing.T, s *txstore.Store) {
			os.RemoveAll(filepath.Dir(s.TreeDir(3)))
		}, req: Request{Tx: 3, Verify: txstore.VerifyOff, LoaderTriesLeft: -1}, want: 3, reblitted: true},
		// Damage in the CAS itself: a re-blit would link the same objects,
		// so it is skipped and the fallback is immediate.
		{name: "corrupted object, full verify: no useless re-blit", prepare: func(t *testing.T, s *txstore.Store) {
			p := filepath.Join(s.TreeDir(3), "share", "marker") // a hardlink of tx 3's unique object
			os.Chmod(p, 0o644)
			if err := os.WriteFile(p, []byte("X"), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, 0o444)
		}, req: Request{Tx: 3, Verify: txstore.VerifyFull, LoaderTriesLeft: -1}, want: 2, failed: "cannot repair", badAfter: []uint64{3}},
		{name: "no init falls back and marks bad", noInit2: true, req: req(2), want: 1, failed: "no init", badAfter: []uint64{2}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := store3(t, c.noInit2)
			if c.prepare != nil {
				c.prepare(t, s)
			}
			res, err := Choose(s, c.req, &dirAssembler{}, noLog)
			if c.want == 0 {
				if !errors.Is(err, ErrNothingBootable) {
					t.Fatalf("want ErrNothingBootable, got %v", err)
				}
			} else {
				if err != nil {
					t.Fatalf("Choose: %v (failures %+v)", err, res.Failures)
				}
				if res.Tx.ID != c.want {
					t.Fatalf("booted %d, want %d (failures %+v)", res.Tx.ID, c.want, res.Failures)
				}
				// The try was spent durably before returning.
				got, _ := s.Get(c.want)
				if got.State != txstore.StateBad && got.State != txstore.StateGood && got.Tries != 1 {
					t.Fatalf("try not recorded: %+v", got.Boot)
				}
			}
			if c.failed != "" && (len(res.Failures) == 0 || !strings.Contains(res.Failures[0].Reason, c.failed)) {
				t.Fatalf("failures %+v, want %q", res.Failures, c.failed)
			}
			if c.order != nil {
				var got []uint64
				for _, f := range res.Failures {
					got = append(got, f.Tx)
				}
				if fmt.Sprint(got) != fmt.Sprint(c.order) {
					t.Fatalf("tried %v, want %v (good before untested)", got, c.order)
				}
			}
			if c.defaultAfter != 0 {
				if d, _ := s.Default(); d != c.defaultAfter {
					t.Fatalf("default %d, want %d", d, c.defaultAfter)
				}
			}
			if c.want != 0 && c.leftAfter >= 0 && strings.HasPrefix(c.name, "bootloader") {
				if x, _ := s.Get(c.want); x.TriesLeft != c.leftAfter {
					t.Fatalf("tries left %d, want %d", x.TriesLeft, c.leftAfter)
				}
			}
			if res.Reblitted != c.reblitted {
				t.Fatalf("reblitted %v", res.Reblitted)
			}
			for _, id := range c.badAfter {
				if x, _ := s.Get(id); x.State != txstore.StateBad || x.LastFailure == "" {
					t.Fatalf("tx %d not recorded bad: %+v", id, x.Boot)
				}
			}
		})
	}
}

func TestResolveIn(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/sbin/init"), []byte("x"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/sbin/noexec"), []byte("x"), 0o644)
	os.Symlink("usr/sbin", filepath.Join(root, "sbin"))
	os.Symlink("/usr/sbin/init", filepath.Join(root, "abs-init"))
	os.Symlink("../../../../etc/passwd", filepath.Join(root, "usr/sbin/escape"))
	os.Symlink("loop", filepath.Join(root, "loop"))
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"/sbin/init", "usr/sbin/init", true},
		{"/abs-init", "usr/sbin/init", true},
		{"/usr/sbin/../sbin/./init", "usr/sbin/init", true},
		{"/usr/sbin/escape", "etc/passwd", false}, // clamped inside root, and absent
		{"/loop", "", false},
	}
	for _, c := range cases {
		got, err := ResolveIn(root, c.in)
		if (err == nil) != c.ok || (c.ok && got != filepath.Join(root, c.want)) {
			t.Errorf("ResolveIn(%q) = %q, %v", c.in, got, err)
		}
		if err == nil && !strings.HasPrefix(got, root) {
			t.Errorf("ResolveIn(%q) escaped the root: %q", c.in, got)
		}
	}
	if init, err := FindInitIn(root, []string{"/usr/sbin/noexec", "/sbin/init"}); err != nil || init != "/sbin/init" {
		t.Errorf("FindInitIn: %q %v", init, err)
	}
}
