package etcstate

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestMerge3: each rule of the 3-way merge, with the conffile
// cases first. want is the whole merged tree; conflicts the paths
// listed, "PATH>" when the tx's version went beside.
func TestMerge3(t *testing.T) {
	needRoot(t)
	conf := func(v string) e { return f("nginx/nginx.conf", v) }
	for _, tc := range []struct {
		name               string
		base, ours, theirs []e
		want               []e
		conflicts          []string
		reason             string // in the first conflict's reason
		noBase             bool
	}{
		{name: "edited conffile meets a new package version: yours kept, the new one beside",
			base: []e{conf("v1")}, ours: []e{conf("v1 admin")}, theirs: []e{conf("v2")},
			want:      []e{conf("v1 admin"), f("nginx/nginx.conf.txboot-new", "v2")},
			conflicts: []string{"nginx/nginx.conf>"}, reason: "edited here, edited in the tx's new /etc; yours kept, the tx's beside it as nginx.conf.txboot-new"},
		{name: "untouched conffile is updated",
			base: []e{conf("v1")}, ours: []e{conf("v1")}, theirs: []e{conf("v2")}, want: []e{conf("v2")}},
		{name: "removed conffile stays removed",
			base: []e{conf("v1"), f("other", "o")}, ours: []e{d("nginx"), f("other", "o")}, theirs: []e{conf("v1"), f("other", "o")},
			want: []e{d("nginx"), f("other", "o")}},
		{name: "removed conffile the package changed stays removed, the new one beside",
			base: []e{conf("v1")}, ours: []e{d("nginx")}, theirs: []e{conf("v2")},
			want: []e{d("nginx"), f("nginx/nginx.conf.txboot-new", "v2")}, conflicts: []string{"nginx/nginx.conf>"}, reason: "removed here, edited"},
		{name: "admin's edit, package unchanged", base: []e{conf("v1")}, ours: []e{conf("mine")}, theirs: []e{conf("v1")}, want: []e{conf("mine")}},
		{name: "same change on both sides", base: []e{conf("v1")}, ours: []e{conf("v2")}, theirs: []e{conf("v2")}, want: []e{conf("v2")}},
		{name: "added on each side",
			base: []e{}, ours: []e{f("mine", "m")}, theirs: []e{f("pkg.conf", "p"), f("pkg.d/x", "x")},
			want: []e{f("mine", "m"), f("pkg.conf", "p"), f("pkg.d/x", "x")}},
		{name: "added on both sides differently",
			base: []e{}, ours: []e{f("x", "mine")}, theirs: []e{f("x", "theirs")},
			want: []e{f("x", "mine"), f("x.txboot-new", "theirs")}, conflicts: []string{"x>"}, reason: "added here, added"},
		{name: "package removes an untouched file", base: []e{f("old.conf", "o")}, ours: []e{f("old.conf", "o")}, theirs: []e{}, want: []e{}},
		{name: "package removes an edited file: yours kept",
			base: []e{f("old.conf", "o")}, ours: []e{f("old.conf", "edited")}, theirs: []e{},
			want: []e{f("old.conf", "edited")}, conflicts: []string{"old.conf"}, reason: "edited here, removed in the tx's new /etc"},
		{name: "package turns an untouched directory into a file",
			base: []e{f("x.d/a", "a"), f("x.d/b", "b")}, ours: []e{f("x.d/a", "a"), f("x.d/b", "b")}, theirs: []e{f("x.d", "file")},
			want: []e{f("x.d", "file")}},
		{name: "package turns a directory with your edits inside into a file: yours kept",
			base: []e{f("x.d/a", "a")}, ours: []e{f("x.d/a", "mine")}, theirs: []e{f("x.d", "file")},
			want: []e{f("x.d/a", "mine"), f("x.d.txboot-new", "file")}, conflicts: []string{"x.d>"}, reason: "changed inside here, replaced by a file"},
		{name: "package turns a file into a directory",
			base: []e{f("x", "f")}, ours: []e{f("x", "f")}, theirs: []e{f("x/a", "a")}, want: []e{f("x/a", "a")}},
		{name: "you turned a file into a directory the package then changed: yours kept",
			base: []e{f("x", "f")}, ours: []e{f("x/a", "a")}, theirs: []e{f("x", "f2")},
			want: []e{f("x/a", "a"), f("x.txboot-new", "f2")}, conflicts: []string{"x>"}},
		{name: "you replaced a directory the package changed by a file: no beside for a directory",
			base: []e{f("x/a", "a")}, ours: []e{f("x", "mine")}, theirs: []e{f("x/a", "a2")},
			want: []e{f("x", "mine")}, conflicts: []string{"x"}, reason: "the tx's is a directory"},
		{name: "symlink retargeted by the package",
			base: []e{l("localtime", "/a")}, ours: []e{l("localtime", "/a")}, theirs: []e{l("localtime", "/b")}, want: []e{l("localtime", "/b")}},
		{name: "symlink retargeted on both sides",
			base: []e{l("localtime", "/a")}, ours: []e{l("localtime", "/mine")}, theirs: []e{l("localtime", "/b")},
			want: []e{l("localtime", "/mine"), l("localtime.txboot-new", "/b")}, conflicts: []string{"localtime>"}, reason: "pointed elsewhere"},
		{name: "file replaced by a symlink by the package", base: []e{f("x", "f")}, ours: []e{f("x", "f")}, theirs: []e{l("x", "y")}, want: []e{l("x", "y")}},
		{name: "xattr added by the package",
			base: []e{f("x", "f")}, ours: []e{f("x", "f")}, theirs: []e{f("x", "f").xa("user.a", "1").xab("security.capability", capNetRaw())},
			want: []e{f("x", "f").xa("user.a", "1").xab("security.capability", capNetRaw())}},
		{name: "xattr and ACL of yours kept",
			base: []e{f("x", "f")}, ours: []e{f("x", "f").xab("system.posix_acl_access", acl())}, theirs: []e{f("x", "f")},
			want: []e{f("x", "f").xab("system.posix_acl_access", acl())}},
		{name: "your mode change meets a content change: a conflict",
			base: []e{f("x", "f")}, ours: []e{f("x", "f").mod(0o600)}, theirs: []e{f("x", "f2")},
			want: []e{f("x", "f").mod(0o600), f("x.txboot-new", "f2")}, conflicts: []string{"x>"}, reason: "mode 644→600 here, edited"},
		{name: "owner and setuid from the package",
			base: []e{f("x", "f")}, ours: []e{f("x", "f")}, theirs: []e{f("x", "f").own(5, 6).mod(0o4750)},
			want: []e{f("x", "f").own(5, 6).mod(0o4750)}},
		{name: "directory mode from the package, contents merged",
			base: []e{f("d/a", "a")}, ours: []e{f("d/a", "a"), f("d/mine", "m")}, theirs: []e{d("d").mod(0o750), f("d/a", "a2")},
			want: []e{d("d").mod(0o750), f("d/a", "a2"), f("d/mine", "m")}},
		{name: "directory mode changed on both sides",
			base: []e{d("d")}, ours: []e{d("d").mod(0o700)}, theirs: []e{d("d").mod(0o750)},
			want: []e{d("d").mod(0o700)}, conflicts: []string{"d"}, reason: "directory mode 755→700 here, mode 755→750"},
		{name: "an old .txboot-new is replaced",
			base: []e{f("x", "1")}, ours: []e{f("x", "mine"), f("x.txboot-new", "older")}, theirs: []e{f("x", "3")},
			want: []e{f("x", "mine"), f("x.txboot-new", "3")}, conflicts: []string{"x>"}},
		{name: "FIFO from the package", base: []e{}, ours: []e{}, theirs: []e{{p: "initctl", typ: 'p'}}, want: []e{{p: "initctl", typ: 'p'}}},
		{name: "markers are ignored",
			base: []e{f(MarkerName, "1\n")}, ours: []e{f(MarkerName, "2\n"), f("a", "a")}, theirs: []e{f(MarkerName, "3\n"), f("a", "a")},
			want: []e{f("a", "a")}},
		{name: "no base: same on both sides is no conflict, a difference is", noBase: true,
			ours: []e{f("same", "s"), f("x", "mine")}, theirs: []e{f("same", "s"), f("x", "pkg")},
			want: []e{f("same", "s"), f("x", "mine"), f("x.txboot-new", "pkg")}, conflicts: []string{"x>"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			base := filepath.Join(tmp, "base")
			if !tc.noBase {
				build(t, base, tc.base...)
			}
			ours := build(t, filepath.Join(tmp, "ours"), tc.ours...)
			theirs := build(t, filepath.Join(tmp, "theirs"), tc.theirs...)
			dst := filepath.Join(tmp, "dst")
			cs, err := Merge3(base, ours, theirs, dst)
			if err != nil {
				t.Fatal(err)
			}
			want := build(t, filepath.Join(tmp, "want"), tc.want...)
			if got, w := dump(t, dst), dump(t, want); got != w {
				t.Errorf("merged:\n%s\nwant:\n%s", got, w)
			}
			var got []string
			for _, c := range cs {
				p := c.Path
				if c.Beside != "" {
					p += ">"
					if c.Beside != c.Path+BesideSuffix {
						t.Errorf("conflict %+v: beside %q", c, c.Beside)
					}
				}
				got = append(got, p)
			}
			if !reflect.DeepEqual(got, tc.conflicts) {
				t.Errorf("conflicts %q (%+v), want %q", got, cs, tc.conflicts)
			}
			if tc.reason != "" && (len(cs) == 0 || !strings.Contains(cs[0].Reason, tc.reason)) {
				t.Errorf("reason %+v lacks %q", cs, tc.reason)
			}
			// Deterministic: the same inputs give the same tree and list.
			dst2 := filepath.Join(tmp, "dst2")
			cs2, err := Merge3(base, ours, theirs, dst2)
			if err != nil || !reflect.DeepEqual(cs, cs2) || dump(t, dst) != dump(t, dst2) {
				t.Errorf("a second merge differs: %+v %v", cs2, err)
			}
		})
	}
}

// Merge3 refuses an existing destination and a missing ours or theirs.
func TestMerge3Refuses(t *testing.T) {
	tmp := t.TempDir()
	a := build(t, filepath.Join(tmp, "a"), f("x", "1"))
	if _, err := Merge3(a, a, a, a); err == nil {
		t.Error("merged onto an existing dst")
	}
	if _, err := Merge3(a, filepath.Join(tmp, "missing"), a, filepath.Join(tmp, "d1")); err == nil {
		t.Error("merged a missing ours")
	}
	if _, err := os.Lstat(filepath.Join(tmp, "d1")); err == nil {
		t.Error("a failed merge left its destination")
	}
}
