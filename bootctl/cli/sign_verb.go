package cli

import (
	"crypto/ed25519"
	"flag"
	"fmt"
	"slices"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/sign"
)

// signVerb signs a tx that exists: its digest and, when it has one, its
// sealed image (the pair a sealed boot checks), into its record; a later
// publish carries both into the index.
func signVerb() *verb {
	var keyPath string
	var key ed25519.PrivateKey
	var id uint64
	return &verb{name: "sign", args: "ID --key KEY",
		help: "sign a tx's digest and its sealed image (when it has one) with KEY into its record",
		pos:  oneIDArg, store: storeWrite,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&keyPath, "key", "", "ed25519 private key (PEM)")
		},
		check: func(e *env, args []string) (err error) {
			if keyPath == "" {
				return usagef("sign needs --key KEY")
			}
			if id, err = parseID(args[0]); err != nil {
				return err
			}
			key, err = sign.LoadPrivateKey(keyPath)
			return err
		},
		exec: func(e *env, s *txstore.Store, args []string) error { return signTx(e, s, id, key) }}
}

// signResult is sign's JSON output.
type signResult struct {
	ID     uint64 `json:"id"`
	Digest string `json:"digest"`
	KeyID  string `json:"key_id"`
	Image  string `json:"image,omitempty"` // the image signed ("": none)
}

// signTx is the sign verb after check: the digest first (a tx without an
// image is signed all the same), then the image, which must be the one
// the record names (Store.SignImage checks the file).
func signTx(e *env, s *txstore.Store, id uint64, key ed25519.PrivateKey) error {
	t, err := s.Get(id)
	if err != nil {
		return err
	}
	sig := sign.SignTx(key, t.Digest)
	t, err = s.Update(id, txstore.Event{Kind: "sign", Detail: "signed by key " + sig.KeyID}, func(r *txstore.Tx) error {
		r.Signatures = append(slices.DeleteFunc(slices.Clone(r.Signatures), func(g sign.Signature) bool { return g.KeyID == sig.KeyID }), sig)
		return nil
	})
	if err != nil {
		return fmt.Errorf("sign tx %d: %w", id, err)
	}
	if t.Image != "" {
		if t, err = s.SignImage(id, key); err != nil {
			return err
		}
	}
	res := signResult{ID: t.ID, Digest: t.Digest, KeyID: sig.KeyID, Image: t.Image}
	if e.json {
		return e.printJSON(res)
	}
	fmt.Fprintf(e.stdout, "tx %d %s signed by key %s\n", t.ID, t.Digest, sig.KeyID)
	if t.Image == "" {
		fmt.Fprintf(e.stdout, "  no image to sign%s (bootctl seal %d builds one; then sign again)\n", noteSuffix(t.SealNote), t.ID)
		return nil
	}
	fmt.Fprintf(e.stdout, "  image %s signed by key %s\n", t.Image, sig.KeyID)
	return nil
}

func noteSuffix(note string) string {
	if note == "" {
		return ""
	}
	return ": " + printable(note)
}

// printShowImage is show's image line: the digest and whether a key of
// the system's trust store signed it.
func printShowImage(e *env, s *txstore.Store, t *txstore.Tx) {
	if t.Image == "" {
		fmt.Fprintf(e.stdout, "  image:    none%s\n", noteSuffix(t.SealNote))
		return
	}
	var keys []sign.PublicKey
	if len(t.ImageSignatures) > 0 {
		keys = knownKeys(e, s)
	}
	state, by := imageSignatureState(keys, t)
	fmt.Fprintf(e.stdout, "  image:    %s (%s)\n", t.Image, imageNote(t, state, by))
}
