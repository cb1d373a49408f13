package txstore

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/txboot/txboot/txstore/internal/layout"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/sealimg"
	"github.com/txboot/txboot/txstore/sign"
	"github.com/txboot/txboot/txstore/verity"
)

// ImagePath is where tx id's sealed metadata image lives.
func (s *Store) ImagePath(id uint64) string {
	return filepath.Join(filepath.Dir(s.TreeDir(id)), sealimg.FileName)
}

// ObjectsDir is the store's objects/ directory: the data-only layer a
// sealed /usr reads content from.
func (s *Store) ObjectsDir() string { return filepath.Join(s.Dir, "objects") }

// ErrNoImage: the tx has no sealed image (bootctl seal builds one).
var ErrNoImage = errors.New("tx has no sealed image")

// SealResult is what Seal did to one tx.
type SealResult struct {
	ID      uint64
	Image   string // the image's fs-verity digest ("" when none could be built)
	Built   bool   // the image was (re)built
	Enabled int    // files fs-verity was turned on for now
	Already int    // files that had it
	Sealed  bool
	Note    string // why not sealed
	// Replaced is the digest the record named before, when the rebuilt
	// image differs from it (its ImageSignatures were dropped: they sign
	// the old pair).
	Replaced string
}

// Seal gives tx id an image if it has none (or one whose digest is not
// the record's) and turns fs-verity on for every object it names and for
// its image, recording Image, Sealed and SealNote (event "seal", only when
// something changed). A filesystem or kernel without fs-verity is not an
// error: the result says so in Note and the tx boots unsealed; neither is
// an image that cannot be built (Note: "no image: …"). Idempotent; after a
// crash some files are sealed and the next Seal finishes.
func (s *Store) Seal(id uint64) (*SealResult, error) {
	t, m, err := s.sealable(id)
	if err != nil {
		return nil, err
	}
	z := newSealer(s.objects, s.opts.Workers)
	res := &SealResult{ID: id, Image: t.Image}
	if s.imageCurrent(t) {
		err = s.sealCurrent(z, t, m, res)
	} else {
		err = s.rebuildImage(z, m, res)
	}
	if err != nil {
		return nil, fmt.Errorf("seal tx %d: %w", id, err)
	}
	res.Enabled, res.Already = int(z.enabled.Load()), int(z.already.Load())
	if !res.Sealed && res.Note == "" {
		res.Note = z.note(s.Dir)
	}
	return res, s.recordSeal(t, res)
}

// sealable checks Seal may run on tx id and loads it and its manifest.
func (s *Store) sealable(id uint64) (*Tx, *manifest.Manifest, error) {
	if err := s.writable(); err != nil {
		return nil, nil, err
	}
	if err := s.layout().CheckAll("staging", "objects", "trees"); err != nil {
		return nil, nil, fmt.Errorf("seal tx %d: %w", id, err)
	}
	t, err := s.Get(id)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.Manifest(t)
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Dir(s.TreeDir(id))
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
		return nil, nil, fmt.Errorf("seal tx %d: %s is missing or not a directory (bootctl verify --repair rebuilds it)", id, dir)
	}
	return t, m, nil
}

// imageCurrent reports whether tx t's image file is there with the
// digest its record names.
func (s *Store) imageCurrent(t *Tx) bool {
	p := s.ImagePath(t.ID)
	if fi, err := os.Lstat(p); t.Image == "" || err != nil || !fi.Mode().IsRegular() {
		return false
	}
	d, err := verity.DigestPath(p)
	return err == nil && d.String() == t.Image
}

// sealCurrent seals the objects and the image of a tx whose image is
// current.
func (s *Store) sealCurrent(z *sealer, t *Tx, m *manifest.Manifest, res *SealResult) error {
	if _, err := z.digests(fileKeys(m), false); err != nil {
		return err
	}
	want, err := verity.ParseSum(t.Image)
	if err != nil {
		return err
	}
	imgSealed, err := z.sealImage(s.ImagePath(t.ID), want)
	res.Sealed = z.sealed(imgSealed)
	return err
}

// rebuildImage builds the image again (through staging/seal-*) and
// replaces trees/<id>/image.erofs atomically. A build that fails leaves
// the tx without an image, saying why.
func (s *Store) rebuildImage(z *sealer, m *manifest.Manifest, res *SealResult) error {
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "seal-")
	if err != nil {
		return err
	}
	defer layout.RemoveTree(work)
	d, imgSealed, _, err := z.makeImage(m, work, filepath.Dir(s.TreeDir(res.ID)))
	if err != nil {
		res.Image, res.Note = "", "no image: "+err.Error()
		return nil
	}
	res.Image, res.Built, res.Sealed = d.String(), true, z.sealed(imgSealed)
	return nil
}

// recordSeal records res in tx t's record (event "seal") when it changes
// anything.
func (s *Store) recordSeal(t *Tx, res *SealResult) error {
	if t.Image != res.Image && t.Image != "" && res.Image != "" {
		res.Replaced = t.Image
	}
	if !res.Built && res.Enabled == 0 && t.Image == res.Image && t.Sealed == res.Sealed && t.SealNote == res.Note {
		return nil
	}
	detail := fmt.Sprintf("image %s: %d files sealed now, %d already; sealed", res.Image, res.Enabled, res.Already)
	if !res.Sealed {
		detail = fmt.Sprintf("image %s: %d files sealed now, %d already; not sealed: %s", res.Image, res.Enabled, res.Already, res.Note)
	}
	_, err := s.Update(t.ID, Event{Kind: "seal", Detail: detail}, func(r *Tx) error {
		if r.Image != res.Image {
			r.ImageSignatures = nil // they sign the old pair
		}
		r.Image, r.Sealed, r.SealNote = res.Image, res.Sealed, res.Note
		return nil
	})
	if err != nil {
		return fmt.Errorf("seal tx %d: record: %w", t.ID, err)
	}
	return nil
}

// SignImage signs the pair (tx id's digest, its image's) with priv into
// the record's ImageSignatures (replacing one by the same key), after
// checking the image file is the one the record names: bootctl sign.
// ErrNoImage when the tx has none (or its file differs: bootctl seal).
func (s *Store) SignImage(id uint64, priv ed25519.PrivateKey) (*Tx, error) {
	t, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	if t.Image == "" || !s.imageCurrent(t) {
		return nil, fmt.Errorf("sign the image of tx %d: %w (or it is not the one recorded): run bootctl seal %d", id, ErrNoImage, id)
	}
	sig := sign.SignImage(priv, t.Digest, t.Image)
	image := t.Image
	return s.Update(id, Event{Kind: "sign", Detail: "image " + image + " signed by key " + sig.KeyID}, func(r *Tx) error {
		if r.Image != image {
			return fmt.Errorf("sign the image of tx %d: it changed meanwhile", id)
		}
		r.ImageSignatures = slices.DeleteFunc(slices.Clone(r.ImageSignatures), func(g sign.Signature) bool { return g.KeyID == sig.KeyID })
		r.ImageSignatures = append(r.ImageSignatures, sig)
		return nil
	})
}
