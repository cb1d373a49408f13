package txstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"time"

	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/fsx"
	"github.com/txboot/txboot/txstore/internal/dbio"
	"github.com/txboot/txboot/txstore/internal/layout"
	"github.com/txboot/txboot/txstore/internal/safefs"
	"github.com/txboot/txboot/txstore/records"
	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// DirName is the store directory under the system root.
const DirName = ".txboot"

// DefaultTimeout bounds every lock and database open: a stuck lock must end
// in an error a person can act on, never in a boot that hangs forever.
const DefaultTimeout = 5 * time.Second

// Options for Open.
type Options struct {
	ReadOnly  bool          // no writer lock; every write method returns ErrReadOnly
	Create    bool          // create the store when missing (writers only)
	Timeout   time.Duration // lock and bbolt timeout; 0 means DefaultTimeout, never "forever"
	NoCleanup bool          // skip removing staging leftovers (initagent keeps boots fast)
	Workers   int           // parallelism for hashing, blit and verify; 0 = 2×GOMAXPROCS
	// HashOnce: a full verify does not re-hash an object that an earlier
	// full verify on this open Store found clean (initagent's fallback tx
	// shares most objects with the tx that just failed; `bootctl verify
	// --full` of every tx). Only for short-lived Stores: a remembered
	// object is trusted for the Store's lifetime.
	HashOnce bool
}

// Store is an open txboot store.
type Store struct {
	Root    string // system root, e.g. "/" or "/sysroot"
	Dir     string // Root/.txboot
	opts    Options
	lockFD  int
	fetch   bool // OpenFetch: Imports without the writer lock, LockWriter for the rest
	objects *cas.Store
	hashed  *blit.Hashed // nil unless Options.HashOnce
}

// Open opens the store under root. A writer holds an exclusive flock on
// Dir/lock for the Store's lifetime: one writer at a time across processes.
// A writer also removes leftovers of interrupted work (see Cleanup).
func Open(root string, o Options) (*Store, error) {
	s, err := openStore(root, o)
	if err != nil || o.ReadOnly {
		return s, err
	}
	if err := s.LockWriter(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// OpenFetch opens the store under root for a download (a pull): records
// can be read and Imports made, but no writer lock is held, so writers
// (mark-good, set-default, the health service) are not kept out while the
// network is slow. LockWriter takes the lock for the short local steps
// that follow (the commit, a download record). Each Import holds
// Dir/fetch.lock shared, which keeps a writer's Cleanup away from its
// staging directory and GC from the objects it has found or published
// (see Cleanup and GC). o.Create creates a missing store; o.ReadOnly is
// refused.
func OpenFetch(root string, o Options) (*Store, error) {
	if o.ReadOnly {
		return nil, fmt.Errorf("%w: open %s for fetching: a fetch store is not read-only", ErrInvalid, filepath.Join(root, DirName))
	}
	s, err := openStore(root, o)
	if err != nil {
		return nil, err
	}
	s.fetch = true
	return s, nil
}

// LockWriter makes s the writer: it takes the exclusive flock on Dir/lock
// as Open does (waiting at most Options.Timeout, then ErrBusy) and runs
// Cleanup (unless Options.NoCleanup), which leaves running imports alone.
// The lock is held until Close. A Store that already holds it is
// unchanged; a read-only one gets ErrReadOnly.
func (s *Store) LockWriter() error {
	if s.lockFD >= 0 {
		return nil
	}
	if s.opts.ReadOnly {
		return ErrReadOnly
	}
	fd, err := dbio.Lock(filepath.Join(s.Dir, "lock"), unix.LOCK_EX, s.opts.Timeout)
	if err != nil {
		return err
	}
	s.lockFD = fd
	if !s.opts.NoCleanup {
		if err := s.Cleanup(); err != nil {
			unix.Close(s.lockFD)
			s.lockFD = -1
			return err
		}
	}
	return nil
}

// openStore is Open up to the writer lock: options, paths, and a new store
// when o.Create asks for one.
func openStore(root string, o Options) (*Store, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Workers <= 0 {
		o.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	dir := filepath.Join(root, DirName)
	s := &Store{Root: root, Dir: dir, opts: o, lockFD: -1,
		objects: &cas.Store{Dir: filepath.Join(dir, "objects"), TmpDir: filepath.Join(dir, "staging")}}
	if o.HashOnce {
		s.hashed = &blit.Hashed{}
	}
	if _, err := os.Stat(filepath.Join(dir, "store.db")); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
		if o.ReadOnly || !o.Create {
			return nil, fmt.Errorf("%w at %s", ErrNoStore, dir)
		}
		if err := create(dir, o.Timeout); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// create makes a new store durably: the database is built in staging and
// renamed into place, so a power cut never leaves a torn first database.
func create(dir string, timeout time.Duration) error {
	for _, d := range []string{dir, filepath.Join(dir, "objects"), filepath.Join(dir, "trees"), filepath.Join(dir, "staging")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create store: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("create store: %w", err)
	}
	tmp := filepath.Join(dir, "staging", "store.db.new")
	os.Remove(tmp)
	if err := records.Write(tmp, timeout, nil, 0, 1, nil, nil); err != nil {
		return fmt.Errorf("create store db: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "store.db")); err != nil {
		return fmt.Errorf("create store db: %w", err)
	}
	for _, d := range []string{filepath.Join(dir, "staging"), dir, filepath.Dir(dir)} {
		if err := fsx.SyncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// Close releases the writer lock and the CAS's open directories; the
// database is never held open between calls. Nothing under the store stays
// open after it (initagent relies on that before switch_root).
func (s *Store) Close() error {
	if s.lockFD >= 0 {
		unix.Close(s.lockFD)
		s.lockFD = -1
	}
	return s.objects.Close()
}

// Objects is the CAS.
func (s *Store) Objects() *cas.Store { return s.objects }

// TreeDir is where tx id's /usr lives.
func (s *Store) TreeDir(id uint64) string {
	return filepath.Join(s.Dir, "trees", strconv.FormatUint(id, 10), "usr")
}

func (s *Store) writable() error {
	if s.fetch && s.lockFD < 0 {
		return fmt.Errorf("%w: %s is open for fetching, without the writer lock (LockWriter first)", ErrReadOnly, s.Dir)
	}
	if s.opts.ReadOnly || s.lockFD < 0 {
		return ErrReadOnly
	}
	return nil
}

// view and update open bbolt for the duration of one transaction, so a long
// commit never keeps readers out of the database.
func (s *Store) view(fn func(tx *bbolt.Tx) error) error {
	return s.withDB(true, func(db *bbolt.DB) error { return db.View(fn) })
}

func (s *Store) update(fn func(tx *bbolt.Tx) error) error {
	if err := s.writable(); err != nil {
		return err
	}
	return s.withDB(false, func(db *bbolt.DB) error { return db.Update(fn) })
}

// withDB opens store.db for one call (see dbio.With).
func (s *Store) withDB(ro bool, fn func(db *bbolt.DB) error) error {
	return dbio.With(filepath.Join(s.Dir, "store.db"), ro, s.opts.Timeout, fn)
}

// Get returns one tx record (a copy: nothing points into bbolt's memory).
func (s *Store) Get(id uint64) (*Tx, error) {
	var t *Tx
	err := s.view(func(tx *bbolt.Tx) error {
		txs, _, _, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		v := txs.Get(records.Key(id))
		if v == nil {
			return fmt.Errorf("tx %d: %w", id, ErrNotFound)
		}
		t, err = records.DecodeTx(records.Key(id), v)
		return err
	})
	return t, err
}

// List returns all tx records, oldest first.
func (s *Store) List() ([]*Tx, error) {
	var out []*Tx
	err := s.view(func(tx *bbolt.Tx) error {
		txs, _, _, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		out, err = records.AllTxs(txs)
		return err
	})
	return out, err
}

// Default is the tx booted when the command line names none (0: none).
func (s *Store) Default() (uint64, error) {
	var id uint64
	err := s.view(func(tx *bbolt.Tx) error {
		_, meta, _, err := records.Buckets(tx)
		if err == nil {
			id = records.Uint(meta, records.KeyDefault)
		}
		return err
	})
	return id, err
}

// SetDefault makes id the default.
func (s *Store) SetDefault(id uint64) error {
	return s.update(func(tx *bbolt.Tx) error {
		txs, meta, events, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		if txs.Get(records.Key(id)) == nil {
			return fmt.Errorf("tx %d: %w", id, ErrNotFound)
		}
		if err := meta.Put(records.KeyDefault, records.Key(id)); err != nil {
			return err
		}
		return records.AppendEvent(events, Event{Kind: "set-default", TxID: id})
	})
}

// Update applies fn to tx id's record and logs ev (if ev.Kind is set) in the
// same bbolt transaction: the record and its explanation land together.
func (s *Store) Update(id uint64, ev Event, fn func(t *Tx) error) (*Tx, error) {
	var out *Tx
	err := s.update(func(tx *bbolt.Tx) error {
		txs, _, events, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		v := txs.Get(records.Key(id))
		if v == nil {
			return fmt.Errorf("tx %d: %w", id, ErrNotFound)
		}
		t, err := records.DecodeTx(records.Key(id), v)
		if err != nil {
			return err
		}
		if err := fn(t); err != nil {
			return err
		}
		t.Updated = time.Now().UTC()
		if err := records.PutTx(txs, t); err != nil {
			return err
		}
		out = t
		if ev.Kind != "" {
			ev.TxID = id
			return records.AppendEvent(events, ev)
		}
		return nil
	})
	return out, err
}

// SetPinned pins or unpins a tx (pinned txs survive prune).
func (s *Store) SetPinned(id uint64, pinned bool) error {
	kind := "unpin"
	if pinned {
		kind = "pin"
	}
	_, err := s.Update(id, Event{Kind: kind}, func(t *Tx) error { t.Pinned = pinned; return nil })
	return err
}

// Log appends an event.
func (s *Store) Log(ev Event) error {
	return s.update(func(tx *bbolt.Tx) error {
		_, _, events, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		return records.AppendEvent(events, ev)
	})
}

// Events returns the newest n events (all if n <= 0), oldest first.
func (s *Store) Events(n int) ([]Event, error) {
	var out []Event
	err := s.view(func(tx *bbolt.Tx) error {
		_, _, events, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		c := events.Cursor()
		for k, v := c.Last(); k != nil && (n <= 0 || len(out) < n); k, v = c.Prev() {
			ev, err := records.DecodeEvent(k, v)
			if err != nil {
				return err
			}
			out = append(out, ev)
		}
		return nil
	})
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, err
}

// Cleanup removes what interrupted work left behind: everything in staging/
// and any trees/<id> and boot/<id> without a tx record (a commit that died
// after placing its tree but before recording it, an interrupted prune).
// Called by every writer's Open (and LockWriter). While an Import holds
// fetch.lock (a pull downloading without the writer lock), staging/import-*
// directories stay: which one is live is not known, so a dead one waits
// for a writer that finds no pull running.
//
// Everything goes through directory fds opened with O_NOFOLLOW (package
// safefs): a symlink where the layout has a directory (staging itself,
// staging/x, trees/<id>, trees itself) is damage. It is left alone,
// neither followed nor removed; the rest is cleaned and the error (ErrDamaged)
// names every such path, so writers refuse to work until a person removed it.
func (s *Store) Cleanup() error {
	if err := s.writable(); err != nil {
		return err
	}
	dfd, err := layout.Open(s.Dir)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	defer unix.Close(dfd)
	var damage layout.Damage
	for _, sub := range []string{"objects", "trees", "staging", "boot"} {
		if err := s.layout().Check(dfd, sub); err != nil {
			if !errors.Is(err, ErrDamaged) {
				return fmt.Errorf("cleanup: %w", err)
			}
			damage = append(damage, err)
		}
	}
	// A consumed DIR killed mid-commit goes back before staging/ and
	// unrecorded trees are removed (not through a damaged store directory).
	if len(damage) == 0 {
		if err := s.recoverConsumed(); err != nil {
			return err
		}
	}
	if sfd, err := safefs.OpenDir(dfd, "staging"); err == nil {
		// A pull downloading without the writer lock (OpenFetch) has its
		// Import in staging/import-*: while one holds fetch.lock, those
		// are left for a later writer; otherwise fetch.lock is held here
		// so that none starts while staging is emptied.
		unlock, live, err := s.tryFetchExclusive()
		if err != nil {
			err = fmt.Errorf("cleanup %s/staging: %w", s.Dir, err)
		} else {
			err = s.layout().CleanStaging(sfd, live, &damage)
			unlock()
		}
		unix.Close(sfd)
		if err != nil {
			return err
		}
	}
	txs, err := s.List()
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, t := range txs {
		known[strconv.FormatUint(t.ID, 10)] = true
	}
	// Whole trees whose record was lost are recorded again, not removed
	// (not through a damaged trees/).
	if s.layout().Check(dfd, "trees") == nil {
		if err := s.recordLostTrees(known); err != nil {
			return err
		}
	}
	// trees/<id> and boot/<id> without a record: an interrupted commit or prune.
	for _, sub := range []string{"trees", "boot"} {
		fd, err := safefs.OpenDir(dfd, sub)
		if errors.Is(err, unix.ENOENT) || safefs.IsNotDir(err) { // not a directory: reported above
			continue
		}
		if err != nil {
			return fmt.Errorf("cleanup %s/%s: %w", s.Dir, sub, err)
		}
		err = s.layout().RemoveUnknown(fd, sub, known, &damage)
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return damage.Err()
}

// sortedIDs returns ids sorted descending.
func sortedIDs(txs []*Tx) []uint64 {
	ids := make([]uint64, len(txs))
	for i, t := range txs {
		ids[i] = t.ID
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] > ids[j] })
	return ids
}

// Config reads a small named setting (e.g. bootloader entry settings) saved
// with SetConfig; nil if unset.
func (s *Store) Config(name string) ([]byte, error) {
	var out []byte
	err := s.view(func(tx *bbolt.Tx) error {
		_, meta, _, err := records.Buckets(tx)
		if err == nil {
			if v := meta.Get([]byte("cfg/" + name)); v != nil {
				out = append([]byte(nil), v...) // copy out of bbolt's mmap
			}
		}
		return err
	})
	return out, err
}

// SetConfig saves a small named setting.
func (s *Store) SetConfig(name string, val []byte) error {
	return s.update(func(tx *bbolt.Tx) error {
		_, meta, _, err := records.Buckets(tx)
		if err != nil {
			return err
		}
		return meta.Put([]byte("cfg/"+name), val)
	})
}
