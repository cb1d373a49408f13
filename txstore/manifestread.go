package txstore

import (
	"fmt"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/manifestio"
	"github.com/txboot/txboot/txstore/manifest"
)

func manifestKey(hexhash string) (cas.Key, error) {
	h, err := cas.ParseHash(hexhash)
	if err != nil {
		return cas.Key{}, fmt.Errorf("%w: manifest reference %q", ErrCorrupt, hexhash)
	}
	return cas.NewKey(h, 0o444, 0, 0), nil
}

// Manifest loads and checks tx t's manifest: the object must hash to its
// name and the decompressed manifest to the tx digest.
func (s *Store) Manifest(t *Tx) (*manifest.Manifest, error) {
	k, err := manifestKey(t.Manifest)
	if err != nil {
		return nil, err
	}
	// Bounded by the record's entry count: a small tree's manifest cannot
	// take the bytes and lines of a large one.
	raw, err := manifestio.Text(s.objects, k, t.Entries)
	if err != nil {
		return nil, fmt.Errorf("tx %d manifest: %w", t.ID, err)
	}
	// Hash and parse at once (both are on the boot path); a parse is only
	// used once the digest matched.
	digest := make(chan string, 1)
	go func() { digest <- manifest.Digest(raw) }()
	m, err := manifest.DecodeOwned(raw) // raw is ours and never written again
	if d := <-digest; d != t.Digest {
		return nil, fmt.Errorf("tx %d manifest: %w: %s, want %s", t.ID, ErrDigest, d, t.Digest)
	}
	if err != nil {
		return nil, fmt.Errorf("tx %d manifest: %w", t.ID, err)
	}
	return m, nil
}
