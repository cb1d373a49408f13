package repo

import (
	"bytes"
	"testing"

	"github.com/txboot/txboot/txstore/sign"
)

// FuzzParseSig: index.sig comes from the network; ParseSig never panics,
// and what it accepts re-encodes to something it accepts again, equal.
func FuzzParseSig(f *testing.F) {
	good, _ := EncodeSig([]sign.Signature{{KeyID: "00112233445566778899aabbccddeeff", Sig: bytes.Repeat([]byte{7}, 64)}})
	for _, s := range [][]byte{good, []byte(`[]`), []byte(`[{"key_id":"x","sig":"AAAA"}]`), []byte(`null`), []byte(`[{}]`), {}} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sigs, err := ParseSig(data)
		if err != nil {
			return
		}
		again, err := EncodeSig(sigs)
		if err != nil {
			t.Fatalf("accepted signatures do not encode: %v", err)
		}
		back, err := ParseSig(again)
		if err != nil || len(back) != len(sigs) {
			t.Fatalf("round trip: %v, %d vs %d", err, len(back), len(sigs))
		}
		for i := range sigs {
			if back[i].KeyID != sigs[i].KeyID || !bytes.Equal(back[i].Sig, sigs[i].Sig) {
				t.Fatalf("round trip changed signature %d", i)
			}
		}
	})
}
