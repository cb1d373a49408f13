package repo

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txboot/txboot/txstore/sign"
)

const (
	hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseIndexValid(t *testing.T) {
	data := readTestdata(t, "index.json")
	ix, err := ParseIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(ix.Txs) != 2 || ix.Txs[1].Parent != ix.Txs[0].Digest || ix.Txs[0].Kernels[0] != "6.1.0-57-cloud-amd64" {
		t.Fatalf("parsed %+v", ix)
	}
	if len(ix.Txs[1].Signatures) != 1 || len(ix.Txs[1].Signatures[0].Sig) != 64 {
		t.Fatalf("signatures %+v", ix.Txs[1].Signatures)
	}
	out, err := EncodeIndex(ix)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, data) {
		t.Fatalf("re-encoded index differs:\n%s\nwant\n%s", out, data)
	}
	if ix.Find(ix.Txs[1].Digest) != &ix.Txs[1] || ix.Find("sha256:"+hexA) != nil {
		t.Fatal("Find")
	}
}

func TestParseIndexInvalid(t *testing.T) {
	good := string(readTestdata(t, "index.json"))
	d0 := "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	d1 := "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	cases := []struct{ name, from, to string }{
		{"format 2", `"format": 1`, `"format": 2`},
		{"no format", `"format": 1,`, ``},
		{"unknown field", `"format": 1,`, `"format": 1, "extra": 1,`},
		{"uppercase digest", d0 + `",` + "\n      \"version\": \"one\"", strings.ToUpper(d0) + `", "version": "one"`},
		{"short digest", d1 + `",` + "\n      \"version\"", "sha256:22\", \"version\""},
		{"md5 digest", `"digest": "` + d0, `"digest": "md5:` + d0[7:]},
		{"bad parent", `"parent": "` + d0, `"parent": "sha256:../../x`},
		{"self parent", `"parent": "` + d0, `"parent": "` + d1},
		{"duplicate", d1 + "\",\n      \"version\": \"two\",\n      \"parent\": \"" + d0 + "\"", d0 + "\", \"version\": \"two\""},
		{"out of order", `"created": "2026-12-01T22:00:00Z"`, `"created": "2020-01-01T00:00:00Z"`},
		{"negative size", `"size": 123456`, `"size": -1`},
		{"huge size", `"size": 123456`, `"size": 1125899906842625`},
		{"negative stored", `"stored": 98765`, `"stored": -5`},
		{"zero entries", `"entries": 8675`, `"entries": 0`},
		{"not UTC", `"created": "2026-12-01T22:00:00Z"`, `"created": "2026-12-01T23:00:00+01:00"`},
		{"no created", `"created": "2026-12-01T22:00:00Z",`, ``},
		{"kernel with slash", `"6.1.0-57-cloud-amd64"`, `"../../etc"`},
		{"kernel dotdot", `"6.1.0-57-cloud-amd64"`, `".."`},
		{"version newline", `"version": "one"`, `"version": "one\ntwo"`},
		{"empty version", `"version": "one"`, `"version": ""`},
		{"short sig", `"sig": "`, `"sig": "AAAA", "x": "`},
		{"bad key id", `"key_id": "`, `"key_id": "ZZ`},
		{"trailing data", "}\n", "}\n{}"},
		{"image in format 1", `"stored": 4000`, `"stored": 4000, "image": "sha256:` + strings.Repeat("3", 64) + `"`},
		{"trailing bracket", "}\n", "}]"},
		{"not json", "{", "<"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := strings.Replace(good, c.from, c.to, 1)
			if bad == good {
				t.Fatalf("case does not change the fixture (%q not found)", c.from)
			}
			_, err := ParseIndex([]byte(bad))
			if !errors.Is(err, ErrBadIndex) {
				t.Fatalf("ParseIndex = %v, want ErrBadIndex", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

func TestEncodeIndexSorts(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 3600))
	ix := &Index{Format: 1, Updated: t0, Txs: []IndexTx{
		{Digest: "sha256:" + hexB, Version: "b", Created: t0, Entries: 1},
		{Digest: "sha256:" + hexA, Version: "a", Created: t0, Entries: 1},
		{Digest: "sha256:" + hexB[:63] + "0", Version: "c", Created: t0.Add(-time.Second), Entries: 1},
	}}
	b, err := EncodeIndex(ix)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tx := range back.Txs {
		got = append(got, tx.Version)
	}
	if strings.Join(got, ",") != "c,a,b" {
		t.Fatalf("order %v, want c,a,b", got)
	}
	ix.Txs[0].Digest = "sha256:XYZ"
	if _, err := EncodeIndex(ix); !errors.Is(err, ErrBadIndex) {
		t.Fatalf("EncodeIndex of a bad digest = %v", err)
	}
}

func TestSigRoundTrip(t *testing.T) {
	priv, _, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k, err := sign.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	s := sign.SignIndex(k, []byte("x"))
	b, err := EncodeSig([]sign.Signature{s})
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseSig(b)
	if err != nil || len(back) != 1 || !bytes.Equal(back[0].Sig, s.Sig) || back[0].KeyID != s.KeyID {
		t.Fatalf("ParseSig = %v, %v", back, err)
	}
	for _, bad := range []string{"[]", "{}", "null", `[{"key_id":"00","sig":""}]`, string(b) + "x"} {
		if _, err := ParseSig([]byte(bad)); !errors.Is(err, ErrBadIndex) {
			t.Errorf("ParseSig(%q) = %v, want ErrBadIndex", bad, err)
		}
	}
}

func TestTableRoundTrip(t *testing.T) {
	data := readTestdata(t, "table.txt")
	es, err := ParseTable(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 3 || !es[1].Compressed || es[0].Compressed || es[1].Stored != 600 {
		t.Fatalf("parsed %+v", es)
	}
	// Encode sorts whatever order it is given.
	rev := []TableEntry{es[2], es[0], es[1]}
	out, err := EncodeTable(rev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, data) {
		t.Fatalf("EncodeTable = %q, want %q", out, data)
	}
	if es, err := ParseTable(nil); err != nil || len(es) != 0 {
		t.Fatalf("empty table: %v %v", es, err)
	}
	if _, err := EncodeTable([]TableEntry{es[0], es[0]}); !errors.Is(err, ErrBadTable) {
		t.Fatalf("duplicate: %v", err)
	}
}

func TestParseTableInvalid(t *testing.T) {
	line := hexA + " 1000 z 600\n"
	lineB := hexB + " 10 r 10\n"
	cases := map[string]string{
		"no newline":        strings.TrimSuffix(line, "\n"),
		"unsorted":          lineB + line,
		"duplicate":         line + line,
		"uppercase":         strings.ToUpper(hexA) + " 10 r 10\n",
		"short hash":        "aa 10 r 10\n",
		"kind":              hexA + " 10 x 10\n",
		"raw size mismatch": hexA + " 10 r 9\n",
		"zst not smaller":   hexA + " 10 z 10\n",
		"zero size":         hexA + " 0 r 0\n",
		"leading zero":      hexA + " 010 r 010\n",
		"sign":              hexA + " +10 r +10\n",
		"negative":          hexA + " -1 r -1\n",
		"huge":              hexA + " 99999999999999999 r 99999999999999999\n",
		"extra field":       hexA + " 10 r 10 x\n",
		"double space":      hexA + "  10 r 10\n",
		"crlf":              hexA + " 10 r 10\r\n",
		"empty line":        "\n",
		"long line":         hexA + " 10 r 10" + strings.Repeat(" ", 200) + "\n",
		"path":              "../../../../etc/passwd 10 r 10\n",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseTable([]byte(in)); !errors.Is(err, ErrBadTable) {
				t.Fatalf("ParseTable(%q) = %v, want ErrBadTable", in, err)
			}
		})
	}
}

func TestPaths(t *testing.T) {
	p, err := ObjectPath(hexA, false)
	if err != nil || p != "objects/aa/"+hexA {
		t.Fatalf("ObjectPath = %q %v", p, err)
	}
	if p, _ := ObjectPath(hexA, true); p != "objects/aa/"+hexA+".zst" {
		t.Fatalf("ObjectPath zst = %q", p)
	}
	if p, _ := ManifestPath(hexB); p != "manifests/"+hexB+".zst" {
		t.Fatalf("ManifestPath = %q", p)
	}
	if p, _ := TablePath(hexB); p != "txs/"+hexB+".objects.zst" {
		t.Fatalf("TablePath = %q", p)
	}
	for _, bad := range []string{"", "..", "../" + hexA[3:], hexA[:63] + "/", strings.ToUpper(hexA), hexA + "a", "sha256:" + hexA} {
		if _, err := ObjectPath(bad, false); !errors.Is(err, ErrBadHash) {
			t.Errorf("ObjectPath(%q) = %v", bad, err)
		}
		if _, err := ManifestPath(bad); !errors.Is(err, ErrBadHash) {
			t.Errorf("ManifestPath(%q) = %v", bad, err)
		}
		if _, err := TablePath(bad); !errors.Is(err, ErrBadHash) {
			t.Errorf("TablePath(%q) = %v", bad, err)
		}
	}
	if h, err := DigestHex("sha256:" + hexA); err != nil || h != hexA {
		t.Fatalf("DigestHex = %q %v", h, err)
	}
	if _, err := DigestHex(hexA); !errors.Is(err, ErrBadHash) {
		t.Fatalf("DigestHex without prefix = %v", err)
	}
	if err := ParseConfig([]byte(ConfigMarker)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "txboot-repo 1", "txboot-repo 2\n", "ostree"} {
		if err := ParseConfig([]byte(bad)); !errors.Is(err, ErrNotRepo) {
			t.Errorf("ParseConfig(%q) = %v", bad, err)
		}
	}
}

func FuzzParseIndex(f *testing.F) {
	f.Add(readTestdata(f, "index.json"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := ParseIndex(data)
		if err != nil {
			if !errors.Is(err, ErrBadIndex) {
				t.Fatalf("error without ErrBadIndex: %v", err)
			}
			return
		}
		// What parses re-encodes, and the encoding is a fixed point.
		b, err := EncodeIndex(ix)
		if err != nil {
			t.Fatalf("accepted index does not encode: %v", err)
		}
		ix2, err := ParseIndex(b)
		if err != nil {
			t.Fatalf("encoded index does not parse: %v", err)
		}
		b2, err := EncodeIndex(ix2)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding not stable: %v", err)
		}
		for _, tx := range ix.Txs {
			h, err := DigestHex(tx.Digest)
			if err != nil {
				t.Fatal(err)
			}
			p, err := ManifestPath(h)
			if err != nil || strings.Contains(p[len("manifests/"):], "/") || strings.Contains(p, "..") {
				t.Fatalf("path %q %v", p, err)
			}
		}
	})
}

func FuzzParseTable(f *testing.F) {
	f.Add(readTestdata(f, "table.txt"))
	f.Fuzz(func(t *testing.T, data []byte) {
		es, err := ParseTable(data)
		if err != nil {
			if !errors.Is(err, ErrBadTable) {
				t.Fatalf("error without ErrBadTable: %v", err)
			}
			return
		}
		// Strict: only the canonical text is accepted.
		b, err := EncodeTable(es)
		if err != nil || !bytes.Equal(b, data) {
			t.Fatalf("accepted non-canonical table %q (re-encoded %q, %v)", data, b, err)
		}
		for _, e := range es {
			p, err := e.Path()
			if err != nil || strings.Contains(p, "..") || strings.Count(p, "/") != 2 {
				t.Fatalf("path %q %v", p, err)
			}
		}
	})
}

// TestParseIndexV2 pins format 2's encoding (testdata/index-v2.json):
// repository, sequence, expiry and the pins of every metadata file.
func TestParseIndexV2(t *testing.T) {
	data := readTestdata(t, "index-v2.json")
	ix, err := ParseIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Format != 2 || ix.Sequence != 42 || ix.Repository != "00112233445566778899aabbccddeeff" ||
		!ix.Expires.Equal(ix.Updated.Add(7*24*time.Hour)) || ix.Txs[0].Delta != nil || ix.Txs[1].Delta.Size != 200 ||
		ix.Txs[0].Manifest.Length != 11 || !ix.Txs[0].Manifest.Matches([]byte("manifestone")) || ix.Txs[0].Manifest.Matches([]byte("manifestonf")) ||
		ix.Txs[0].Image != "" || ix.Txs[1].Image != "sha256:"+strings.Repeat("3", 64) || len(ix.Txs[1].ImageSignatures) != 1 || len(ix.Txs[1].ImageSignatures[0].Sig) != 64 {
		t.Fatalf("parsed %+v", ix)
	}
	out, err := EncodeIndex(ix)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, data) {
		t.Fatalf("re-encoded index differs:\n%s\nwant\n%s", out, data)
	}
	good := string(data)
	cases := []struct{ name, from, to string }{
		{"no repository", `"repository": "00112233445566778899aabbccddeeff",`, ``},
		{"repository not hex", `"repository": "00112233445566778899aabbccddeeff"`, `"repository": "../../../../etc/passwd/xxxxxxxxxx"`},
		{"sequence 0", `"sequence": 42`, `"sequence": 0`},
		{"no expiry", `"expires": "2026-12-09T08:00:00Z",`, ``},
		{"expires before updated", `"expires": "2026-12-09T08:00:00Z"`, `"expires": "2026-12-01T08:00:00Z"`},
		{"expires in 2036", `"expires": "2026-12-09T08:00:00Z"`, `"expires": "2036-12-09T08:00:00Z"`},
		{"expiry not UTC", `"expires": "2026-12-09T08:00:00Z"`, `"expires": "2026-12-09T08:00:00+01:00"`},
		{"manifest not pinned", `"manifest": {
        "length": 11,`, `"manifesto": {
        "length": 11,`},
		{"pin length 0", `"length": 11,`, `"length": 0,`},
		{"pin hash short", `"sha256": "ac760992b81baef48dede667e0c5499f2d820dbae303b2c790301f2b9eb9c8eb"`, `"sha256": "ac76"`},
		{"pin size huge", `"size": 1000`, `"size": 1099511627776`},
		{"delta without parent", `"parent": "sha256:1111111111111111111111111111111111111111111111111111111111111111",`, ``},
		{"format 1 with a sequence", `"format": 2`, `"format": 1`},
		{"image not a digest", `"image": "sha256:3333`, `"image": "sha256:../3333`},
		{"image uppercase", `"image": "sha256:3333`, `"image": "SHA256:3333`},
		{"image empty with signatures", `"image": "sha256:3333333333333333333333333333333333333333333333333333333333333333"`, `"image": ""`},
		{"image signatures without image", `"image": "sha256:3333333333333333333333333333333333333333333333333333333333333333",`, ``},
		{"image signature short", `"sig": "SUlJ`, `"sig": "SUlJSUlJ", "x": "`},
		{"image not a string", `"image": "sha256:3333333333333333333333333333333333333333333333333333333333333333"`, `"image": 3`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := strings.Replace(good, c.from, c.to, 1)
			if bad == good {
				t.Fatalf("case does not apply: %q", c.from)
			}
			if _, err := ParseIndex([]byte(bad)); !errors.Is(err, ErrBadIndex) {
				t.Fatalf("ParseIndex = %v, want ErrBadIndex", err)
			}
		})
	}
}
