package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/testkit"
)

// TestSealUnsupportedHere: this host's kernel has no fs-verity, so the real
// Store.Seal cannot seal: every tx says so with what to run, and the verb
// exits 0 (a state, not a failure); an unknown id is exit 4 before
// anything is sealed; a bad id is a usage error.
func TestSealUnsupportedHere(t *testing.T) {
	root := storeWith(t, "one", "two")
	code, out, _ := run(t, "--root", root, "seal")
	if code != ExitOK && strings.Contains(out, "not implemented") {
		testkit.Skip(t, "Store.Seal is still a stub (txstore/seal.go)")
	}
	tests := []struct {
		args  []string
		code  int
		lines []string // each line of stdout has this prefix, in order
		errs  string
	}{
		{nil, ExitOK, []string{"tx 1: not sealed: fs-verity unsupported on ", "tx 2: not sealed: fs-verity unsupported on "}, ""},
		{[]string{"2"}, ExitOK, []string{"tx 2: not sealed: fs-verity unsupported on "}, ""},
		{[]string{"2", "9"}, ExitNotFound, nil, "9"},
		{[]string{"x"}, ExitUsage, nil, "not a transaction id"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errs := run(t, append([]string{"--root", root, "seal"}, tt.args...)...)
			if code != tt.code || !strings.Contains(errs, tt.errs) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errs, tt.code, tt.errs)
			}
			got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(tt.lines) == 0 && out == "" {
				return
			}
			if len(got) != len(tt.lines) {
				t.Fatalf("stdout %q, want %d lines", out, len(tt.lines))
			}
			for i, want := range tt.lines {
				if !strings.HasPrefix(got[i], want) || !strings.Contains(got[i], "tune2fs -O verity") {
					t.Errorf("line %q, want %q… naming tune2fs -O verity", got[i], want)
				}
			}
		})
	}
}

// TestSealFake: the paths this host cannot take, through a fake Seal:
// sealed (with counts, the image, built or not), sealed but booting
// unsealed (kernel too old), unsealable, a failing tx (exit 1, the others
// still sealed), and --json.
func TestSealFake(t *testing.T) {
	root := storeWith(t, "one", "two", "three")
	old := sealTx
	defer func() { sealTx = old }()
	img := "sha256:" + strings.Repeat("ab", 32)
	results := map[uint64]func() (*txstore.SealResult, error){
		1: func() (*txstore.SealResult, error) {
			return &txstore.SealResult{ID: 1, Image: img, Enabled: 412, Already: 8263, Sealed: true}, nil
		},
		2: func() (*txstore.SealResult, error) {
			return &txstore.SealResult{ID: 2, Image: img, Built: true, Note: "usr/x has trusted.overlay.redirect: unsealable"}, nil
		},
		3: func() (*txstore.SealResult, error) {
			return nil, errors.New("seal tx 3: read objects/ab/cd: input/output error")
		},
	}
	sealTx = func(s *txstore.Store, id uint64) (*txstore.SealResult, error) { return results[id]() }
	tests := []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"1"}, ExitOK, []string{"tx 1: sealed (412 files sealed now, 8263 already; image " + img + "); boots unsealed: "}}, // the fake records nothing
		{[]string{"2"}, ExitOK, []string{"tx 2: not sealed: usr/x has trusted.overlay.redirect: unsealable"}},
		{nil, ExitFail, []string{"tx 1: sealed", "tx 2: not sealed", "tx 3: failed: seal tx 3: read objects/ab/cd: input/output error"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.args), func(t *testing.T) {
			code, out, errs := run(t, append([]string{"--root", root, "seal"}, tt.args...)...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tt.code, out, errs)
			}
			got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(got) != len(tt.want) {
				t.Fatalf("stdout %q, want %d lines", out, len(tt.want))
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("line %q, want %q…", got[i], tt.want[i])
				}
			}
			if code == ExitFail && !strings.Contains(errs, "1 of 3 transaction(s) could not be sealed") {
				t.Errorf("stderr %q", errs)
			}
		})
	}
	// Unsupported: the store's note (what to run) as it is, a state.
	note := "fs-verity unsupported on ext4 (/dev/vda2): run tune2fs -O verity /dev/vda2 (ext4) on a 5.4+ kernel with CONFIG_FS_VERITY"
	results[1] = func() (*txstore.SealResult, error) { return &txstore.SealResult{ID: 1, Image: img, Note: note}, nil }
	if out := mustRun(t, "--root", root, "seal", "1"); out != "tx 1: not sealed: "+note+"\n" {
		t.Errorf("unsupported: %q", out)
	}
	var js []sealOut
	if err := json.Unmarshal([]byte(mustRun(t, "--root", root, "--json", "seal", "1", "2")), &js); err != nil || len(js) != 2 {
		t.Fatalf("--json: %v %v", js, err)
	}
	if !js[0].Unsupported || js[0].Note != note || js[1].Unsupported || !js[1].Built || js[1].Note == "" {
		t.Errorf("--json: %+v", js)
	}
}
