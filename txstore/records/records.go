// Package records is store.db's schema: the tx records and events, their
// JSON encoding, the buckets and keys that hold them, and the helpers that
// read and write them inside a bbolt transaction. Every existing store
// holds records in this form (txstore's golden tests pin it): a change is
// a format change that needs a migration.
package records

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/internal/dbio"
	"github.com/txboot/txboot/txstore/internal/storeerr"
	"github.com/txboot/txboot/txstore/sign"
	"go.etcd.io/bbolt"
)

// ErrCorrupt: the database is damaged (txstore.ErrCorrupt is this error).
var ErrCorrupt = dbio.ErrCorrupt

// Tx is one transaction record as stored in bbolt (JSON-encoded).
type Tx struct {
	ID       uint64    `json:"id"`
	Digest   string    `json:"digest"` // "sha256:<64 hex>" of the canonical manifest
	Parent   uint64    `json:"parent,omitempty"`
	Created  time.Time `json:"created"`
	Summary  string    `json:"summary,omitempty"`
	Kernels  []string  `json:"kernels,omitempty"` // versions with usr/lib/modules/<v>/vmlinuz
	Entries  int       `json:"entries"`           // manifest entries
	Bytes    int64     `json:"bytes"`             // sum of regular file sizes
	Manifest string    `json:"manifest"`          // CAS object (hex sha256 of the zstd bytes)
	Pinned   bool      `json:"pinned,omitempty"`
	Updated  time.Time `json:"updated"`
	// Signatures over Digest (sign.SignTx): commit --sign, or carried from
	// the repository a tx was pulled from.
	Signatures []sign.Signature `json:"signatures,omitempty"`
	// Version and Origin: the version string and repository URL of a
	// pulled tx ("" for a local commit).
	Version string `json:"version,omitempty"`
	Origin  string `json:"origin,omitempty"`
	// PkgChanges: the packages the tx changed against its parent (a
	// bootctl run), in the order the caller gave them.
	PkgChanges []PkgChange `json:"pkg_changes,omitempty"`
	// Made says which local tool made the tx from this machine's own
	// trees ("install", "run"); "" for commit and pull. bootctl run
	// executes a source tx's programs only when it has booted or was made
	// so (a tx is data until it has booted).
	Made string `json:"made,omitempty"`
	// Image is the fs-verity digest ("sha256:<hex>") of the tx's sealed
	// metadata image, trees/<id>/image.erofs (sealimg); "" when it has none.
	Image string `json:"image,omitempty"`
	// ImageSignatures sign the pair (Digest, Image) (sign.SignImage); a
	// signed tx boots sealed only with one by a trusted key.
	ImageSignatures []sign.Signature `json:"image_signatures,omitempty"`
	// Sealed: every object the tx names and its image have fs-verity, so
	// the tx can boot sealed (txstore.BootMode).
	Sealed bool `json:"sealed,omitempty"`
	// SealNote says why the tx is not sealed ("" when sealed or not tried).
	SealNote string `json:"seal_note,omitempty"`
	bootstate.Boot
}

// PkgChange is one package a tx changed against its parent: Old == ""
// installed, New == "" removed, else upgraded or downgraded.
type PkgChange struct {
	Name string `json:"name"`
	Arch string `json:"arch"`
	Old  string `json:"old,omitempty"` // version before
	New  string `json:"new,omitempty"` // version after
}

// Event is one line of the store's event log (boot attempts, fallbacks, marks).
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // e.g. "commit", "boot", "fallback", "mark-good", "mark-bad", "prune"
	TxID   uint64    `json:"tx,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// MaxEvents bounds the event log.
const MaxEvents = 2000

// The buckets (tx records by id, settings, events by sequence) and the
// keys of the meta bucket. Settings are meta's "cfg/<name>" keys.
var (
	BucketTx     = []byte("tx")
	BucketMeta   = []byte("meta")
	BucketEvents = []byte("events")
	KeyNext      = []byte("next")    // the id the next commit takes
	KeyDefault   = []byte("default") // the default tx (absent: none)
	KeyVersion   = []byte("version") // the schema version, "1"
)

// Init makes the buckets and the schema version of a new database, with
// next as the next id.
func Init(tx *bbolt.Tx, next uint64) error {
	for _, b := range [][]byte{BucketTx, BucketMeta, BucketEvents} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	m := tx.Bucket(BucketMeta)
	if err := m.Put(KeyVersion, []byte("1")); err != nil {
		return err
	}
	return m.Put(KeyNext, Key(next))
}

// Buckets returns the three buckets, or ErrCorrupt if one is missing.
func Buckets(tx *bbolt.Tx) (txs, meta, events *bbolt.Bucket, err error) {
	txs, meta, events = tx.Bucket(BucketTx), tx.Bucket(BucketMeta), tx.Bucket(BucketEvents)
	if txs == nil || meta == nil || events == nil {
		return nil, nil, nil, fmt.Errorf("%w: store.db lacks its buckets", ErrCorrupt)
	}
	return txs, meta, events, nil
}

// Key is the 8-byte big-endian key of a tx id or event sequence (and the
// encoding of meta's numbers).
func Key(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// Uint reads a number stored under k in b; 0 when absent or malformed.
func Uint(b *bbolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// DecodeTx decodes the record v stored under key k; ErrCorrupt if it does
// not parse or names another id.
func DecodeTx(k, v []byte) (*Tx, error) {
	t := &Tx{}
	if err := json.Unmarshal(v, t); err != nil || len(k) != 8 || t.ID != binary.BigEndian.Uint64(k) {
		return nil, fmt.Errorf("%w: tx record %x unreadable", ErrCorrupt, k)
	}
	return t, nil
}

// PutTx stores t under its id.
func PutTx(b *bbolt.Bucket, t *Tx) error {
	v, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return b.Put(Key(t.ID), v)
}

// AllTxs decodes every record of the tx bucket b, oldest first.
func AllTxs(b *bbolt.Bucket) ([]*Tx, error) {
	var out []*Tx
	err := b.ForEach(func(k, v []byte) error {
		t, err := DecodeTx(k, v)
		if err == nil {
			out = append(out, t)
		}
		return err
	})
	return out, err
}

// AppendEvent logs ev under the next sequence (stamped now if ev has no
// time) and drops the oldest events beyond MaxEvents.
func AppendEvent(b *bbolt.Bucket, ev Event) error {
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	ev.Seq = seq
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	v, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if err := b.Put(Key(seq), v); err != nil {
		return err
	}
	if seq > MaxEvents { // drop the oldest
		c := b.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= seq-MaxEvents; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
	}
	return nil
}

// DecodeEvent decodes the event v stored under key k.
func DecodeEvent(k, v []byte) (Event, error) {
	var ev Event
	if err := json.Unmarshal(v, &ev); err != nil {
		return ev, fmt.Errorf("%w: event %x unreadable", ErrCorrupt, k)
	}
	return ev, nil
}

// Write builds a complete database at path and fsyncs it: the records
// txs, the default def (0: none), the next id, settings cfg (meta keys
// "cfg/…") and the newest MaxEvents of events, renumbered.
func Write(path string, timeout time.Duration, txs []*Tx, def, next uint64, cfg map[string][]byte, events []Event) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: timeout})
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		if err := Init(tx, next); err != nil {
			return err
		}
		txb, meta, evb := tx.Bucket(BucketTx), tx.Bucket(BucketMeta), tx.Bucket(BucketEvents)
		for _, t := range txs {
			if err := PutTx(txb, t); err != nil {
				return err
			}
		}
		if def != 0 {
			if err := meta.Put(KeyDefault, Key(def)); err != nil {
				return err
			}
		}
		for k, v := range cfg {
			if err := meta.Put([]byte(k), v); err != nil {
				return err
			}
		}
		if len(events) > MaxEvents {
			events = events[len(events)-MaxEvents:]
		}
		for _, ev := range events {
			if err := AppendEvent(evb, ev); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return dbio.Fsync(path)
}

// Check checks the database as fsck does: bbolt's own consistency check,
// the buckets, every record and event, the next id and the default. Each
// problem goes to problem; it returns the ids of the readable records.
func Check(tx *bbolt.Tx, problem func(string)) map[uint64]bool {
	ids := map[uint64]bool{}
	for err := range tx.Check() { // drained fully: Check's goroutine blocks on every send
		problem(err.Error())
	}
	txs, meta, events, err := Buckets(tx)
	if err != nil {
		problem(err.Error())
		return ids
	}
	var maxID uint64
	txs.ForEach(func(k, v []byte) error {
		t, err := DecodeTx(k, v)
		if err != nil {
			problem(err.Error())
			return nil
		}
		ids[t.ID] = true
		maxID = max(maxID, t.ID)
		return nil
	})
	events.ForEach(func(k, v []byte) error {
		if _, err := DecodeEvent(k, v); err != nil {
			problem(fmt.Sprintf("event %x unreadable", k))
		}
		return nil
	})
	if next := Uint(meta, KeyNext); next <= maxID {
		problem(fmt.Sprintf("next id %d is not above the newest record %d", next, maxID))
	}
	if def := Uint(meta, KeyDefault); def != 0 && !ids[def] {
		problem(fmt.Sprintf("default tx %d has no record", def))
	}
	return ids
}

// DownloadPrefix keys download records in the meta bucket. Under "cfg/"
// so that Rebuild keeps them (it salvages every cfg/ key): a rebuilt
// database must not turn a pending download's objects into garbage.
const DownloadPrefix = "cfg/download/"

// Download is a tx fetched from a repository but not committed (pull
// --download-only): its objects and its manifest object are in the CAS,
// durable, and GC keeps them; ApplyDownload commits it.
type Download struct {
	Digest     string           `json:"digest"`   // "sha256:<hex>" of the manifest
	Manifest   string           `json:"manifest"` // CAS object: hex sha256 of the zstd manifest
	Version    string           `json:"version,omitempty"`
	Origin     string           `json:"origin,omitempty"`
	Parent     string           `json:"parent,omitempty"` // the repository's parent digest
	Signatures []sign.Signature `json:"signatures,omitempty"`
	// Image is the fs-verity digest of the sealed image the repository's
	// index pins, and ImageSignatures (trusted keys' only) sign it: apply
	// refuses another image, as a direct pull does.
	Image           string           `json:"image,omitempty"`
	ImageSignatures []sign.Signature `json:"image_signatures,omitempty"`
	Kernels         []string         `json:"kernels,omitempty"`
	Entries         int              `json:"entries"`
	Bytes           int64            `json:"bytes"`
	Created         time.Time        `json:"created"` // when it was downloaded
}

// DownloadKey is the meta key of the download of digest ("sha256:<hex>").
func DownloadKey(digest string) ([]byte, error) {
	hex, ok := strings.CutPrefix(digest, "sha256:")
	if _, err := cas.ParseHash(hex); !ok || err != nil {
		return nil, fmt.Errorf("%w: digest %q is not sha256:<64 hex digits>", storeerr.ErrInvalid, digest)
	}
	return []byte(DownloadPrefix + hex), nil
}

// Salvaged is what a damaged database still tells (see Salvage).
type Salvaged struct {
	Txs           map[uint64]*Tx
	Default, Next uint64
	Cfg           map[string][]byte // settings, by their meta key ("cfg/…")
	Events        []Event
}

// Salvage reads what it can of a database, best-effort: each bucket in its
// own call of view (a bbolt View that recovers from damage), so damage in
// one loses only that one.
func Salvage(view func(func(*bbolt.Tx) error) error) *Salvaged {
	sv := &Salvaged{Txs: map[uint64]*Tx{}, Cfg: map[string][]byte{}}
	view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(BucketTx); b != nil {
			b.ForEach(func(k, v []byte) error {
				if t, err := DecodeTx(k, v); err == nil {
					sv.Txs[t.ID] = t
				}
				return nil
			})
		}
		return nil
	})
	view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(BucketMeta); b != nil {
			sv.Default, sv.Next = Uint(b, KeyDefault), Uint(b, KeyNext)
			b.ForEach(func(k, v []byte) error {
				if bytes.HasPrefix(k, []byte("cfg/")) && v != nil {
					sv.Cfg[string(k)] = bytes.Clone(v)
				}
				return nil
			})
		}
		return nil
	})
	view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(BucketEvents); b != nil {
			b.ForEach(func(k, v []byte) error {
				if ev, err := DecodeEvent(k, v); err == nil {
					sv.Events = append(sv.Events, ev)
				}
				return nil
			})
		}
		return nil
	})
	return sv
}
