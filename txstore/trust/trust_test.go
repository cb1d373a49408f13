package trust

import (
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/testtree"
)

type key struct {
	id  string
	pem string
}

func newKey(t *testing.T) key {
	t.Helper()
	_, pub, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k, err := sign.ParsePublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return key{id: sign.KeyID(k), pem: string(pub)}
}

// Under one temporary directory: ROOT is root/, the store ROOT/.txboot,
// the booted tree tree/.
const (
	etc     = "root/" + EtcDir + "/"
	store   = "root/.txboot/" + KeysDir + "/"
	revoked = "root/.txboot/" + RevokedDir + "/"
	inTree  = "tree/" + TreeDir + "/"
)

func TestLoad(t *testing.T) {
	site, rotated, vendor, other := newKey(t), newKey(t), newKey(t), newKey(t)
	file := func(p, data string) testtree.File { return testtree.File{Path: p, Data: data, Mode: 0o644} }
	tests := []struct {
		name      string
		files     []testtree.File
		booted    bool     // pass tree/ as the booted good tree
		wantIDs   []string // in order
		wantFiles []string // relative to the temporary directory, sorted
		wantErr   error
		errText   string
	}{
		{name: "nothing: no keys"},
		{name: "all three sources, in order",
			files:     []testtree.File{file(etc+"site.pem", site.pem), file(store+rotated.id+".pem", rotated.pem), file(inTree+"vendor.pem", vendor.pem)},
			booted:    true,
			wantIDs:   []string{site.id, rotated.id, vendor.id},
			wantFiles: []string{store + rotated.id + ".pem", etc + "site.pem", inTree + "vendor.pem"}},
		{name: "the tree's keys only when the caller passes it (booted and good)",
			files:   []testtree.File{file(etc+"site.pem", site.pem), file(inTree+"vendor.pem", vendor.pem)},
			wantIDs: []string{site.id}, wantFiles: []string{etc + "site.pem"}},
		{name: "a key in two sources is carried once, from the first",
			files:   []testtree.File{file(etc+"b.pem", site.pem), file(etc+"a.pem", site.pem), file(inTree+"dup.pem", site.pem)},
			booted:  true,
			wantIDs: []string{site.id}, wantFiles: []string{etc + "a.pem"}},
		{name: "revoked keys are left out of every source",
			files: []testtree.File{file(etc+"site.pem", site.pem), file(store+"r.pem", rotated.pem), file(inTree+"vendor.pem", vendor.pem),
				file(etc+"other.pem", other.pem), file(revoked+site.id, ""), file(revoked+rotated.id, ""), file(revoked+vendor.id, "")},
			booted:  true,
			wantIDs: []string{other.id}, wantFiles: []string{etc + "other.pem"}},
		{name: "other files are ignored",
			files:   []testtree.File{file(etc+"README", "x"), file(etc+"site.pem", site.pem)},
			wantIDs: []string{site.id}, wantFiles: []string{etc + "site.pem"}},
		{name: "a symlinked key is refused",
			files:   []testtree.File{file("real.pem", site.pem), {Path: etc + "site.pem", Link: "../../../real.pem"}},
			wantErr: ErrTrustFile, errText: "site.pem: trusted key file cannot be used: not a regular file"},
		{name: "a symlinked store key is refused",
			files:   []testtree.File{file("real.pem", site.pem), {Path: store + "k.pem", Link: "/etc/passwd"}},
			wantErr: ErrTrustFile, errText: KeysDir + "/k.pem"},
		{name: "a symlinked key in the booted tree is refused",
			files:   []testtree.File{file("real.pem", site.pem), {Path: inTree + "k.pem", Link: "/etc/passwd"}},
			booted:  true,
			wantErr: ErrTrustFile, errText: TreeDir + "/k.pem"},
		{name: "a symlinked directory is not followed",
			files:   []testtree.File{file("real/site.pem", site.pem), {Path: "root/etc/txboot", Link: "../real"}},
			wantErr: ErrTrustFile, errText: "not a directory"},
		{name: "a symlinked revocation directory is an error, not no revocations",
			files:   []testtree.File{file(etc+"site.pem", site.pem), {Dir: true, Path: "elsewhere", Mode: 0o755}, {Path: "root/.txboot/trust/revoked", Link: "../../../elsewhere"}},
			wantErr: ErrTrustFile, errText: RevokedDir},
		{name: "a file that is no key names its path",
			files:   []testtree.File{file(store+"bad.pem", "not a key")},
			wantErr: sign.ErrKey, errText: KeysDir + "/bad.pem"},
		{name: "a private key is not a trusted key",
			files:   []testtree.File{file(etc+"priv.pem", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB\n-----END PRIVATE KEY-----\n")},
			wantErr: sign.ErrKey, errText: "priv.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := testtree.Write(dir, tt.files, time.Unix(7, 0)); err != nil {
				t.Fatal(err)
			}
			tree := ""
			if tt.booted {
				tree = filepath.Join(dir, "tree")
			}
			root := filepath.Join(dir, "root")
			set, err := Load(root, filepath.Join(root, ".txboot"), tree)
			if tt.wantErr != nil || tt.errText != "" {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(fmtErr(err), tt.errText) {
					t.Fatalf("Load = %v, want %v / %q", err, tt.wantErr, tt.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := set.IDs(); !slices.Equal(got, tt.wantIDs) {
				t.Errorf("keys %q, want %q", got, tt.wantIDs)
			}
			var want []string
			for _, f := range tt.wantFiles {
				want = append(want, filepath.Join(dir, f))
			}
			if !slices.Equal(set.Files, want) {
				t.Errorf("files %q, want %q", set.Files, want)
			}
			if len(set.Files) != len(set.Keys) {
				t.Errorf("%d files for %d keys", len(set.Files), len(set.Keys))
			}
		})
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestLoadLenient: status shows what it can; a bad file is a warning and
// the other keys stay, unreadable revocations trust nothing.
func TestLoadLenient(t *testing.T) {
	site, rotated := newKey(t), newKey(t)
	tests := []struct {
		name     string
		files    []testtree.File
		wantIDs  []string
		warnings int
	}{
		{name: "a bad file is warned about, the rest read",
			files: []testtree.File{{Path: etc + "bad.pem", Data: "x", Mode: 0o644}, {Path: etc + "site.pem", Data: site.pem, Mode: 0o644},
				{Path: store + "r.pem", Data: rotated.pem, Mode: 0o644}},
			wantIDs: []string{site.id, rotated.id}, warnings: 1},
		{name: "unreadable revocations: nothing is trusted",
			files:    []testtree.File{{Path: etc + "site.pem", Data: site.pem, Mode: 0o644}, {Path: "root/.txboot/trust/revoked", Link: "/"}},
			warnings: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := testtree.Write(dir, tt.files, time.Unix(7, 0)); err != nil {
				t.Fatal(err)
			}
			root := filepath.Join(dir, "root")
			var warns []error
			set := LoadLenient(root, filepath.Join(root, ".txboot"), "", func(err error) { warns = append(warns, err) })
			if got := set.IDs(); !slices.Equal(got, tt.wantIDs) {
				t.Errorf("keys %q, want %q", got, tt.wantIDs)
			}
			if len(warns) != tt.warnings {
				t.Errorf("warnings %v, want %d", warns, tt.warnings)
			}
		})
	}
}

func TestFiles(t *testing.T) {
	k := newKey(t)
	dir := t.TempDir()
	if err := testtree.Write(dir, []testtree.File{{Path: "d/b.pem", Data: k.pem, Mode: 0o644}, {Path: "d/a.pem", Data: k.pem, Mode: 0o644}}, time.Unix(7, 0)); err != nil {
		t.Fatal(err)
	}
	got, err := Files(dir, "d")
	if want := []string{filepath.Join(dir, "d/a.pem"), filepath.Join(dir, "d/b.pem")}; err != nil || !slices.Equal(got, want) {
		t.Errorf("Files = %q, %v; want %q", got, err, want)
	}
	if got, err := Files(dir, "missing/d"); err != nil || got != nil {
		t.Errorf("missing directory: %q, %v", got, err)
	}
}

// TestLoadExpired: a certified key whose Expires header has passed is not
// trusted, even while its file is still there.
func TestLoadExpired(t *testing.T) {
	root, store := t.TempDir(), t.TempDir()
	_, pubPEM, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(pubPEM)
	dir := filepath.Join(store, KeysDir)
	os.MkdirAll(dir, 0o700)
	for name, exp := range map[string]string{"old.pem": "2001-01-01T00:00:00Z", "new.pem": "2999-01-01T00:00:00Z"} {
		_, other, _ := sign.GenerateKey()
		if name == "old.pem" {
			other = pubPEM
		}
		ob, _ := pem.Decode(other)
		ob.Headers = map[string]string{"Expires": exp, "Role": "online"}
		os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(ob), 0o644)
	}
	set, err := Load(root, store, "")
	if err != nil {
		t.Fatal(err)
	}
	old, _ := sign.ParsePublicKey(pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes}))
	if len(set.Keys) != 1 || set.Keys[0].ID == sign.KeyID(old) {
		t.Fatalf("keys %v: want only the unexpired one", set.IDs())
	}
}
