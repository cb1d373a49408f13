package repo

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"time"
)

// DefaultExpires is how long a published index stays valid unless
// PublishOptions.Expires says otherwise: a device that sees no fresher
// index within it refuses to pull (TUF's indefinite freeze).
const DefaultExpires = 7 * 24 * time.Hour

// MaxExpires bounds PublishOptions.Expires (a year): an index valid for
// longer gives a frozen device no way to notice.
const MaxExpires = 366 * 24 * time.Hour

// nextIndex makes ix the next index: format 2, the repository's identity
// (new at its first format-2 publish), the next sequence number, updated
// now and valid for o.Expires.
func nextIndex(ix *Index, o PublishOptions) error {
	exp := o.Expires
	if exp == 0 {
		exp = DefaultExpires
	}
	if exp < time.Minute || exp > MaxExpires {
		return fmt.Errorf("expires %v: want 1m..%v", exp, MaxExpires)
	}
	if ix.Repository == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		ix.Repository = hex.EncodeToString(b[:])
	}
	ix.Format = FormatVersion
	ix.Sequence++
	ix.Updated = o.Now().UTC()
	ix.Expires = ix.Updated.Add(exp)
	return nil
}

// pinAll pins the metadata files of every entry that has no pins yet (an
// index of format 1, written before pins existed), from the files in the
// repository: a delta only if it is there.
func (r *repo) pinAll(ix *Index) error {
	for i := range ix.Txs {
		t := &ix.Txs[i]
		if t.Manifest != nil {
			continue
		}
		hx, err := DigestHex(t.Digest)
		if err != nil {
			return err
		}
		mp, _ := ManifestPath(hx)
		if t.Manifest, err = r.pin(r.manifests, filepath.Base(mp), true); err != nil {
			return err
		}
		tp, _ := TablePath(hx)
		if t.Table, err = r.pin(r.txs, filepath.Base(tp), true); err != nil {
			return err
		}
		if t.Parent == "" {
			continue
		}
		phx, err := DigestHex(t.Parent)
		if err != nil {
			return err
		}
		dp, _ := DeltaPath(hx, phx)
		if t.Delta, err = r.pin(r.deltas, filepath.Base(dp), false); err != nil {
			return err
		}
	}
	return nil
}

// pin reads d/name and pins it; a missing file is an error when required,
// else no pin.
func (r *repo) pin(d rdir, name string, required bool) (*FileRef, error) {
	z, err := readSmall(d, name, MaxMetaFile)
	if err != nil {
		return nil, err
	}
	if z == nil {
		if required {
			return nil, fmt.Errorf("%s: %w: missing (the index names it)", d.join(name), ErrDamaged)
		}
		return nil, nil
	}
	text, err := decompress(z, MaxMetaFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", d.join(name), ErrDamaged, err)
	}
	return NewFileRef(z, len(text)), nil
}
