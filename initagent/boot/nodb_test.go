package boot

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testtree"
)

// TestChooseWithoutDatabase: with store.db damaged, the tx the command line
// names is booted by its pinned digest from its tree and manifest object —
// verified, no try recorded, boot counting off — and without a pin nothing
// is trusted.
func TestChooseWithoutDatabase(t *testing.T) {
	pin := func(tx uint64, digest string) Request {
		return Request{Tx: tx, Digest: digest, Verify: txstore.VerifyFast, LoaderTriesLeft: -1}
	}
	cases := []struct {
		name    string
		damage  string
		prepare func(t *testing.T, s *txstore.Store)
		req     func(d map[uint64]string) Request
		want    uint64 // 0: nothing bootable
		why     string // substring of the failure when nothing is bootable
	}{
		{name: "pinned tx boots", damage: testtree.DamageGarbage,
			req: func(d map[uint64]string) Request { return pin(2, d[2]) }, want: 2},
		{name: "empty database", damage: testtree.DamageEmpty,
			req: func(d map[uint64]string) Request { return pin(3, d[3]) }, want: 3},
		{name: "page damage, full verify", damage: testtree.DamageDataPages,
			req: func(d map[uint64]string) Request { r := pin(1, d[1]); r.Verify = txstore.VerifyFull; return r }, want: 1},
		{name: "verify off", damage: testtree.DamageGarbage,
			req: func(d map[uint64]string) Request { r := pin(2, d[2]); r.Verify = txstore.VerifyOff; return r }, want: 2},
		{name: "no digest pinned: refused", damage: testtree.DamageGarbage,
			req: func(d map[uint64]string) Request { return pin(2, "") }, why: "no txboot.digest="},
		{name: "malformed digest: refused", damage: testtree.DamageGarbage,
			req: func(d map[uint64]string) Request { r := pin(2, ""); r.DigestInvalid = true; return r }, why: "malformed"},
		{name: "no tx named: refused", damage: testtree.DamageGarbage,
			req: func(d map[uint64]string) Request { return pin(0, d[3]) }, why: "names no tx"},
		{name: "unknown digest", damage: testtree.DamageGarbage,
			req: func(d map[uint64]string) Request { return pin(2, "sha256:"+strings.Repeat("a", 64)) }, why: "no manifest"},
		{name: "tree is another tx's content", damage: testtree.DamageGarbage,
			req: func(d map[uint64]string) Request { return pin(2, d[3]) }, why: "verification found"},
		{name: "damaged tree is not booted", damage: testtree.DamageGarbage,
			prepare: func(t *testing.T, s *txstore.Store) {
				p := filepath.Join(s.TreeDir(2), "share", "marker")
				os.Chmod(filepath.Dir(p), 0o755)
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
			},
			req: func(d map[uint64]string) Request { return pin(2, d[2]) }, why: "share/marker"},
		// Reads work, writes do not: the try cannot be recorded, so the
		// chosen tx boots with boot counting off instead of not at all.
		{name: "writes fail", damage: testtree.DamageFreelist,
			req: func(d map[uint64]string) Request { return pin(3, d[3]) }, want: 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := store3(t, false)
			all, err := s.List()
			if err != nil {
				t.Fatal(err)
			}
			digests := map[uint64]string{}
			for _, x := range all {
				digests[x.ID] = x.Digest
			}
			if c.prepare != nil {
				c.prepare(t, s)
			}
			db := filepath.Join(s.Dir, "store.db")
			if err := testtree.DamageDB(db, c.damage); err != nil {
				t.Fatal(err)
			}
			damaged, _ := os.ReadFile(db)
			var logs []string
			logf := func(level int, format string, args ...any) {
				logs = append(logs, strings.TrimSpace(fmt.Sprintf(format, args...)))
			}
			asm := &dirAssembler{}
			res, err := Choose(s, c.req(digests), asm, logf)
			if c.want == 0 {
				if !errors.Is(err, ErrNothingBootable) || len(res.Failures) == 0 || !strings.Contains(res.Failures[len(res.Failures)-1].Reason, c.why) {
					t.Fatalf("want ErrNothingBootable because %q, got %v (failures %+v)", c.why, err, res.Failures)
				}
				if asm.tree != "" {
					t.Fatalf("%s is still mounted", asm.tree)
				}
			} else {
				if err != nil {
					t.Fatalf("Choose: %v (failures %+v)\n%s", err, res.Failures, strings.Join(logs, "\n"))
				}
				if res.Tx.ID != c.want || res.Tx.Digest != digests[c.want] || asm.tree != s.TreeDir(c.want) {
					t.Fatalf("booted %+v from %s, want tx %d", res.Tx, asm.tree, c.want)
				}
				if res.NoDatabase == "" || res.OnTrial {
					t.Fatalf("boot counting not off: NoDatabase %q, on trial %v", res.NoDatabase, res.OnTrial)
				}
				if !strings.Contains(strings.Join(logs, "\n"), "BOOT COUNTING IS OFF") {
					t.Fatalf("not said loudly:\n%s", strings.Join(logs, "\n"))
				}
			}
			if now, _ := os.ReadFile(db); !bytes.Equal(now, damaged) {
				t.Fatalf("the damaged store.db was written to")
			}
		})
	}
}
