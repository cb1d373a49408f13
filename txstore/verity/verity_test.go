package verity

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txboot/txboot/txstore/testkit"
)

// pattern is deterministic content of n bytes (the golden digests below
// were made from the same bytes with fsverity-utils' `fsverity digest`).
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i*7 + n) % 251)
	}
	return b
}

// Sizes around block and hash-block boundaries: no data (all-zero root),
// one block (the root is the block's hash), two levels and three levels.
var golden = []struct {
	size int
	want string
}{
	{0, "sha256:3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"},
	{1, "sha256:4af995a62686da554d03ce169687e48b993f81ce8af86799b9e6641164f2ab11"},
	{4095, "sha256:6492a8ba5eb0c764988c1422bd94e6b18bc140977bc0e7daf5207a9e8e2e1867"},
	{4096, "sha256:38174ccf6c3c2a7e947191e240786f25327a5a3824218cc0b5d72f34f4017b5c"},
	{4097, "sha256:36827a6c2d1230dfec55dcfbc1e09bb16719d3a02519ec289cada723afa94071"},
	{128 * 4096, "sha256:48e3f707fc1c17aa30280f1efbc72aeec97d39ed5597e3e0816dfe236a2a53f9"},
	{128*4096 + 1, "sha256:dc67aa74a921c2d11239599c7bcb58ecb49b6b7d66733c3a706930517e004d11"},
	{733*4096 + 5, "sha256:d08781e40d327d3cd6818aff9fd6a7167355956d685fa934834e496d5143b407"},
}

func TestDigestGolden(t *testing.T) {
	for _, g := range golden {
		got, n, err := Digest(bytes.NewReader(pattern(g.size)))
		if err != nil || n != int64(g.size) || got.String() != g.want {
			t.Errorf("size %d: %s, %d, %v; want %s", g.size, got, n, err, g.want)
		}
		if d := DigestBytes(pattern(g.size)); d.String() != g.want {
			t.Errorf("DigestBytes(%d) = %s", g.size, d)
		}
	}
}

// TestDigestMatchesFsverity checks random-ish sizes against fsverity-utils
// (scripts/install-deps.sh installs it).
func TestDigestMatchesFsverity(t *testing.T) {
	if _, err := exec.LookPath("fsverity"); err != nil {
		testkit.Skip(t, "fsverity (Debian package fsverity) is not installed; make deps installs it")
	}
	dir := t.TempDir()
	var args []string
	want := map[string]string{}
	for _, n := range []int{2, 8191, 8192, 65537, 129 * 4096, 300000} {
		p := filepath.Join(dir, fmt.Sprintf("f%d", n))
		if err := os.WriteFile(p, pattern(n), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
		want[p] = DigestBytes(pattern(n)).String()
	}
	out, err := exec.Command("fsverity", append([]string{"digest"}, args...)...).Output()
	if err != nil {
		t.Fatalf("fsverity digest: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		d, p, _ := strings.Cut(line, " ")
		if want[p] != d {
			t.Errorf("%s: fsverity says %s, Digest %s", p, d, want[p])
		}
		delete(want, p)
	}
	if len(want) != 0 {
		t.Errorf("fsverity printed no digest for %v", want)
	}
}

func TestParseSum(t *testing.T) {
	good := golden[3].want
	for _, c := range []struct {
		in string
		ok bool
	}{
		{good, true},
		{strings.ToUpper(good[:7]) + good[7:], false},
		{"sha256:" + strings.ToUpper(good[7:]), false},
		{good[:len(good)-1], false},
		{good + "0", false},
		{"sha512:" + good[7:], false},
		{"", false},
		{"sha256:" + strings.Repeat("g", 64), false},
	} {
		s, err := ParseSum(c.in)
		if c.ok != (err == nil) || c.ok && s.String() != c.in {
			t.Errorf("ParseSum(%q) = %s, %v", c.in, s, err)
		}
		if !c.ok && !errors.Is(err, ErrBadSum) {
			t.Errorf("ParseSum(%q): %v is not ErrBadSum", c.in, err)
		}
	}
}

func FuzzParseSum(f *testing.F) {
	f.Add(golden[0].want)
	f.Add("sha256:")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseSum(s)
		if err == nil && d.String() != s {
			t.Fatalf("ParseSum(%q) round-trips to %q", s, d)
		}
	})
}

// TestEnableOnTmpfsIsUnsupported: tmpfs (t.TempDir is often tmpfs or the
// host's ext4 without the verity feature) refuses fs-verity; the error
// must be ErrUnsupported, which callers treat as "cannot seal here". The
// success path needs a kernel with CONFIG_FS_VERITY: QEMU tests
// (qemu-tests/seal_test.go) cover it.
func TestEnableUnsupportedHere(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, pattern(10), 0o444); err != nil {
		t.Fatal(err)
	}
	err := EnablePath(p)
	if err == nil {
		testkit.Skip(t, "this kernel and filesystem support fs-verity; the unsupported path is not reachable here")
	}
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("EnablePath: %v, want ErrUnsupported", err)
	}
	if _, err := MeasurePath(p); !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrNotEnabled) {
		t.Fatalf("MeasurePath: %v", err)
	}
	got, err := DigestPath(p)
	if err != nil || got != DigestBytes(pattern(10)) {
		t.Fatalf("DigestPath = %s, %v", got, err)
	}
}

// BenchmarkDigest against plain SHA-256 of the same bytes: what computing
// an object's fs-verity digest costs next to the content hash a commit
// already makes (the Merkle tree hashes each 4 KiB block, then 1/128 of
// that again per level).
func BenchmarkDigest(b *testing.B) {
	data := pattern(8 << 20)
	b.Run("verity", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			Digest(bytes.NewReader(data))
		}
	})
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			h := sha256.New()
			io.Copy(h, bytes.NewReader(data))
			h.Sum(nil)
		}
	})
}
