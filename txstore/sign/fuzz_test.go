package sign

import (
	"os"
	"testing"
)

// FuzzParsePublicKey: key files come from trust directories and initramfs
// images; parsing never panics and accepts only 32-byte ed25519 keys.
func FuzzParsePublicKey(f *testing.F) {
	for _, n := range []string{"testdata/vendor.pem", "testdata/other.pem", "testdata/ec.pem", "testdata/vendor.key"} {
		if b, err := os.ReadFile(n); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePublicKey(data)
		if err == nil && len(k) != 32 {
			t.Fatalf("accepted a %d-byte key", len(k))
		}
		if _, err := ParsePrivateKey(data); err != nil {
			return
		}
	})
}
