package txstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/dbio"
	"github.com/txboot/txboot/txstore/internal/layout"
	"github.com/txboot/txboot/txstore/internal/manifestio"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/records"
	"go.etcd.io/bbolt"
)

// ErrNoDownload: no pending download matches the request.
var ErrNoDownload = errors.New("no such download")

// Download is a tx fetched from a repository but not committed (see
// package records).
type Download = records.Download

// StoreDownload records a download of the tx whose manifest is m, with
// canonical encoding raw (d.Manifest may name its manifest object when the
// caller stored it, see ManifestObject). Every object m names must already be published
// in the CAS (Import.Flush); they are not checked here (ApplyDownload's
// commit checks them). Order: the manifest object (staged, syncfs, renamed,
// syncfs again so every earlier rename is durable too), then the record in
// one bbolt transaction: a power cut leaves either no record or a complete
// one whose objects are all on disk. d's Digest, Manifest, Kernels, Entries
// and Bytes are set from m; an existing record of that digest is replaced.
func (s *Store) StoreDownload(m *manifest.Manifest, raw []byte, d Download) (*Download, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	digest := manifest.Digest(raw)
	if len(m.Entries) == 0 {
		return nil, fmt.Errorf("download %s: %w: no entries", digest, ErrBadManifest)
	}
	if enc := m.Encode(); !bytes.Equal(enc, raw) {
		return nil, fmt.Errorf("download %s: %w: the manifest is not its encoding", digest, ErrDigest)
	}
	key, err := records.DownloadKey(digest)
	if err != nil {
		return nil, err
	}
	if err := s.layout().CheckAll("staging", "objects"); err != nil {
		return nil, fmt.Errorf("download %s: %w", digest, err)
	}
	work, err := os.MkdirTemp(filepath.Join(s.Dir, "staging"), "download-")
	if err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	defer layout.RemoveTree(work)
	objs := &cas.Store{Dir: s.objects.Dir, TmpDir: work}
	defer objs.Close()
	// A caller that staged the manifest object itself (ManifestObject)
	// names it in d.Manifest: no second encoding. ApplyDownload and GC
	// check the object against the digest either way.
	var zbytes []byte
	var mkey cas.Key
	has := false
	if d.Manifest != "" {
		if mkey, err = manifestKey(d.Manifest); err != nil {
			return nil, err
		}
		if has, err = objs.Has(mkey); err != nil {
			return nil, fmt.Errorf("download %s: %w", digest, err)
		}
	}
	if !has {
		zbytes, mkey = ManifestObject(raw)
		if has, err = objs.Has(mkey); err != nil {
			return nil, fmt.Errorf("download %s: %w", digest, err)
		}
	}
	if !has {
		tmp, err := objs.StageBytes(zbytes, mkey)
		if err != nil {
			return nil, fmt.Errorf("download %s: %w", digest, err)
		}
		// One file: fsync it rather than the whole filesystem.
		if err := dbio.Fsync(tmp); err != nil {
			return nil, fmt.Errorf("download %s: %w", digest, err)
		}
		if err := objs.Publish(tmp, mkey); err != nil {
			return nil, fmt.Errorf("download %s: %w", digest, err)
		}
	}
	if err := cas.Syncfs(s.Dir); err != nil {
		return nil, err
	}
	d.Digest, d.Manifest, d.Kernels = digest, mkey.Hash.String(), m.Kernels()
	d.Entries, d.Bytes = m.Stats()
	if d.Created.IsZero() {
		d.Created = time.Now().UTC()
	}
	val, err := json.Marshal(&d)
	if err != nil {
		return nil, err
	}
	err = s.update(func(tx *bbolt.Tx) error {
		_, meta, events, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		if err := meta.Put(key, val); err != nil {
			return err
		}
		detail := fmt.Sprintf("%s, %d entries", digest, d.Entries)
		if d.Origin != "" {
			detail += ", from " + d.Origin
		}
		return records.AppendEvent(events, Event{Kind: "download", Detail: detail})
	})
	if err != nil {
		return nil, fmt.Errorf("download %s: record: %w", digest, err)
	}
	return &d, nil
}

// ManifestObject is the CAS object a manifest with canonical bytes raw is
// stored as (zstd, mode 0444, root): its bytes and key. A puller can stage
// it with the objects it imports (Import.AddFile), so that one Flush makes
// both durable and StoreDownload finds it in place.
func ManifestObject(raw []byte) ([]byte, cas.Key) {
	z := encoder().EncodeAll(raw, nil)
	return z, cas.NewKey(sha256.Sum256(z), 0o444, 0, 0)
}

// Downloads lists the pending downloads, oldest first.
func (s *Store) Downloads() ([]*Download, error) {
	var out []*Download
	err := s.view(func(tx *bbolt.Tx) error {
		_, meta, _, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		c := meta.Cursor()
		pre := []byte(records.DownloadPrefix)
		for k, v := c.Seek(pre); k != nil && bytes.HasPrefix(k, pre); k, v = c.Next() {
			var d Download
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("%w: download record %s: %w", ErrCorrupt, k, err)
			}
			if want, err := records.DownloadKey(d.Digest); err != nil || !bytes.Equal(want, k) {
				return fmt.Errorf("%w: download record %s names digest %q", ErrCorrupt, k, d.Digest)
			}
			out = append(out, &d)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].Digest < out[j].Digest
	})
	return out, nil
}

// FindDownload picks a pending download: "" or "latest" (the newest),
// "sha256:<hex>" (a digest), else a version (the newest with it).
func (s *Store) FindDownload(want string) (*Download, error) {
	ds, err := s.Downloads()
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(want, "sha256:") {
		if _, err := records.DownloadKey(want); err != nil {
			return nil, err
		}
	}
	for i := len(ds) - 1; i >= 0; i-- {
		d := ds[i]
		if want == "" || want == "latest" || d.Digest == want || d.Version == want {
			return d, nil
		}
	}
	if want == "" || want == "latest" {
		return nil, fmt.Errorf("%w: nothing was downloaded (pull URL --download-only first)", ErrNoDownload)
	}
	return nil, fmt.Errorf("%w: %q", ErrNoDownload, want)
}

// RemoveDownload drops the record of the download with digest (its
// objects stay until GC finds nothing that uses them). Missing is no error.
func (s *Store) RemoveDownload(digest string) error {
	key, err := records.DownloadKey(digest)
	if err != nil {
		return err
	}
	return s.update(func(tx *bbolt.Tx) error {
		_, meta, _, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		return meta.Delete(key)
	})
}

// ManifestBytes reads the manifest object with CAS hash manifestHex and
// returns its canonical bytes, checked against digest.
func (s *Store) ManifestBytes(manifestHex, digest string) ([]byte, error) {
	k, err := manifestKey(manifestHex)
	if err != nil {
		return nil, err
	}
	// No entry count here: bounded by the manifest limits alone.
	raw, err := manifestio.Text(s.objects, k, 0)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", digest, err)
	}
	if d := manifest.Digest(raw); d != digest {
		return nil, fmt.Errorf("manifest objects/%s: %w: %s, want %s", k.RelPath(), ErrDigest, d, digest)
	}
	return raw, nil
}

// ApplyDownload commits download d (CommitManifest from the CAS alone, no
// network) with d's version, origin, signatures and image pin, then drops
// its record. A store that already has a tx with d's digest (an earlier
// apply cut off before the record was dropped) returns that tx and
// existed = true. An object gone missing fails with ErrMissingObject
// naming it, an image other than d.Image with ErrImageMismatch; nothing
// is recorded then.
func (s *Store) ApplyDownload(d *Download, o CommitOptions) (tx *Tx, existed bool, err error) {
	txs, err := s.List()
	if err != nil {
		return nil, false, err
	}
	for _, t := range txs {
		if t.Digest == d.Digest {
			return t, true, s.RemoveDownload(d.Digest)
		}
	}
	raw, err := s.ManifestBytes(d.Manifest, d.Digest)
	if err != nil {
		return nil, false, fmt.Errorf("apply %s: %w", d.Digest, err)
	}
	m, err := manifest.Decode(raw)
	if err != nil {
		return nil, false, fmt.Errorf("apply %s: %w", d.Digest, err)
	}
	o.Version, o.Origin, o.Signatures = d.Version, d.Origin, d.Signatures
	// The repository's image pin holds at apply as at a direct pull
	// (ErrImageMismatch, nothing recorded).
	o.Image, o.ImageSignatures = d.Image, d.ImageSignatures
	t, err := s.CommitManifest(m, raw, o)
	if err != nil {
		return nil, false, fmt.Errorf("apply %s: %w", d.Digest, err)
	}
	if err := s.RemoveDownload(d.Digest); err != nil {
		return t, false, fmt.Errorf("apply %s: committed tx %d but could not drop the download record: %w", d.Digest, t.ID, err)
	}
	return t, false, nil
}

// downloadRefs adds to ref the manifest object of every pending download
// and every object its manifest names: GC roots, so a gc between download
// and apply loses nothing. A download whose manifest cannot be read stops
// GC (as an unreadable tx manifest does): better to remove nothing.
func (s *Store) downloadRefs(ref map[cas.Key]bool) error {
	ds, err := s.Downloads()
	if err != nil {
		return err
	}
	for _, d := range ds {
		mk, err := manifestKey(d.Manifest)
		if err != nil {
			return err
		}
		ref[mk] = true
		raw, err := s.ManifestBytes(d.Manifest, d.Digest)
		if err == nil {
			var m *manifest.Manifest
			if m, err = manifest.DecodeOwned(raw); err == nil {
				for i := range m.Entries {
					if e := &m.Entries[i]; e.Type == manifest.File && e.Size > 0 {
						ref[e.Key().Ident()] = true
					}
				}
				continue
			}
		}
		return fmt.Errorf("pending download %s: %w (bootctl pull --discard --tx %s drops it)", d.Digest, err, d.Digest)
	}
	return nil
}
