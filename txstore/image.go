package txstore

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/verity"
)

// ErrImageMismatch: the image built here from a pulled tx's manifest is
// not the one the repository's index names (another builder, or a hostile
// index); the tx is not recorded.
var ErrImageMismatch = errors.New("sealed image differs from the repository's")

// imageOutcome is what building a tx's image gave, for its record.
type imageOutcome struct {
	digest string // "" when none was built
	sealed bool   // every object and the image have fs-verity
	note   string // why not sealed
}

// apply puts the outcome in a new record t, with o's image signatures and
// its own (o.SignImage) when there is an image.
func (im imageOutcome) apply(t *Tx, o CommitOptions) {
	t.Image, t.Sealed, t.SealNote = im.digest, im.sealed, im.note
	if im.digest == "" {
		return
	}
	t.ImageSignatures = slices.Clip(o.ImageSignatures)
	if o.SignImage != nil {
		t.ImageSignatures = append(t.ImageSignatures, o.SignImage(t.Digest, im.digest)...)
	}
}

// buildImage is the commit step that writes the tx's sealed image beside
// the tree's usr/ (work/tree/image.erofs), durable, so that trees/<id>
// never appears without it. No image is no failure: the record says why
// (Seal tries again). An image other than the repository's (o.Image)
// refuses the tx.
func (j *commitJob) buildImage() error {
	start := time.Now()
	z := newSealer(j.objs, j.s.opts.Workers)
	z.known = j.verity
	d, sealed, size, err := z.makeImage(j.m, j.work, filepath.Join(j.work, "tree"))
	j.st.Image, j.st.ImageSize = time.Since(start), size
	if err != nil {
		j.img = imageOutcome{note: "no image: " + err.Error()}
		return inject(j.fp.imaged)
	}
	j.img = imageOutcome{digest: d.String(), sealed: z.sealed(sealed)}
	if !j.img.sealed {
		j.img.note = z.note(j.s.Dir)
	}
	if j.o.Image != "" && j.o.Image != j.img.digest {
		return fmt.Errorf("commit %s: %w: the repository names image %s, built here %s", j.name, ErrImageMismatch, j.o.Image, j.img.digest)
	}
	return inject(j.fp.imaged)
}

// makeImage seals m's objects where it can, builds m's image and puts it
// at dir/image.erofs through a temp file in tmpDir; it returns the
// image's digest, whether the image has fs-verity, and its size.
func (z *sealer) makeImage(m *manifest.Manifest, tmpDir, dir string) (verity.Sum, bool, int64, error) {
	sums, err := z.digests(fileKeys(m), true)
	if err != nil {
		return verity.Sum{}, false, 0, err
	}
	img, d, err := buildImage(m, sums)
	if err != nil {
		return verity.Sum{}, false, 0, err
	}
	sealed, err := z.placeImage(img, d, tmpDir, dir)
	return d, sealed, int64(len(img)), err
}
