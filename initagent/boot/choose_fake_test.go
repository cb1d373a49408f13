package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"reflect"
	"testing"

	"github.com/txboot/txboot/txstore"
	"github.com/txboot/txboot/txstore/blit"
	"github.com/txboot/txboot/txstore/bootstate"
	"github.com/txboot/txboot/txstore/cas"
	"github.com/txboot/txboot/txstore/manifest"
	"github.com/txboot/txboot/txstore/verity"
	"golang.org/x/sys/unix"
)

// memStore is an in-memory Store: records, a default, and per-tx verify,
// re-blit and update outcomes. The real store is covered by the other
// tests here and the QEMU suite.
type memStore struct {
	txs       map[uint64]*txstore.Tx
	def       uint64
	listErr   error
	probs     map[uint64][]txstore.Problem // Verify finds these (until a re-blit)
	verifyErr map[uint64]error
	reblitErr map[uint64]error
	updateErr map[uint64]error
	reblitted []uint64
	verified  []uint64 // Verify calls, in order
}

func newMem(def uint64, txs ...txstore.Tx) *memStore {
	f := &memStore{txs: map[uint64]*txstore.Tx{}, def: def, probs: map[uint64][]txstore.Problem{},
		verifyErr: map[uint64]error{}, reblitErr: map[uint64]error{}, updateErr: map[uint64]error{}}
	for i := range txs {
		t := txs[i]
		if t.Digest == "" {
			t.Digest = fmt.Sprintf("sha256:%064d", t.ID)
		}
		f.txs[t.ID] = &t
	}
	return f
}

func (f *memStore) Default() (uint64, error) { return f.def, f.listErr }
func (f *memStore) SetDefault(id uint64) error {
	f.def = id
	return nil
}

func (f *memStore) List() ([]*txstore.Tx, error) {
	if f.listErr != nil {
		return nil, f.listErr
	}
	var out []*txstore.Tx
	for id := uint64(1); id <= 100; id++ {
		if t, ok := f.txs[id]; ok {
			c := *t
			out = append(out, &c)
		}
	}
	return out, nil
}

func (f *memStore) Update(id uint64, ev txstore.Event, fn func(*txstore.Tx) error) (*txstore.Tx, error) {
	if err := f.updateErr[id]; err != nil {
		return nil, err
	}
	t, ok := f.txs[id]
	if !ok {
		return nil, txstore.ErrNotFound
	}
	c := *t
	if err := fn(&c); err != nil {
		return nil, err
	}
	*t = c
	return &c, nil
}

func (f *memStore) TreeDir(id uint64) string { return fmt.Sprintf("/fake/trees/%d", id) }

func (f *memStore) Verify(id uint64, _ txstore.VerifyMode) ([]txstore.Problem, error) {
	f.verified = append(f.verified, id)
	return f.probs[id], f.verifyErr[id]
}

func (f *memStore) Reblit(id uint64) (blit.Stats, error) {
	f.reblitted = append(f.reblitted, id)
	if err := f.reblitErr[id]; err != nil {
		return blit.Stats{}, err
	}
	delete(f.probs, id)
	return blit.Stats{}, nil
}

func (f *memStore) ImagePath(id uint64) string { return fmt.Sprintf("/fake/trees/%d/image.erofs", id) }
func (f *memStore) ObjectsDir() string         { return "/fake/objects" }

func (f *memStore) FindManifest(string, uint64) (*manifest.Manifest, cas.Key, error) {
	return nil, cas.Key{}, txstore.ErrNotFound
}

func (f *memStore) VerifyManifest(uint64, *manifest.Manifest, txstore.VerifyMode) ([]txstore.Problem, error) {
	return nil, errors.New("fake: no manifests")
}

// memAssembler fails Mount, MountSealed or FindInit for the trees (or
// images) named; MeasureImage gives sums[image], else measureErr[image],
// else fs.ErrNotExist.
type memAssembler struct {
	mountErr, noInit map[string]bool
	sums             map[string]verity.Sum
	measureErr       map[string]error
	mounted          string
}

func newMemAssembler() *memAssembler {
	return &memAssembler{mountErr: map[string]bool{}, noInit: map[string]bool{},
		sums: map[string]verity.Sum{}, measureErr: map[string]error{}}
}

func (a *memAssembler) Mount(tree string) error {
	if a.mountErr[tree] {
		return errors.New("EIO")
	}
	a.mounted = tree
	return nil
}

func (a *memAssembler) MeasureImage(image string) (verity.Sum, error) {
	if s, ok := a.sums[image]; ok {
		return s, nil
	}
	if err := a.measureErr[image]; err != nil {
		return verity.Sum{}, err
	}
	return verity.Sum{}, &fs.PathError{Op: "open", Path: image, Err: fs.ErrNotExist}
}

func (a *memAssembler) MountSealed(image, objects string) error {
	if a.mountErr[image] {
		return fmt.Errorf("mount erofs %s: %w", image, unix.EINVAL)
	}
	a.mounted = image
	return nil
}

func (a *memAssembler) Unmount() error { a.mounted = ""; return nil }
func (a *memAssembler) FindInit(c []string) (string, error) {
	if a.noInit[a.mounted] {
		return "", errors.New("none of " + fmt.Sprint(c))
	}
	return c[0], nil
}

func good(id uint64) txstore.Tx {
	return txstore.Tx{ID: id, Boot: bootstate.Boot{State: bootstate.Good, TriesLeft: 3}}
}
func pending(id uint64) txstore.Tx { return txstore.Tx{ID: id, Boot: bootstate.New(3)} }
func bad(id uint64) txstore.Tx {
	return txstore.Tx{ID: id, Boot: bootstate.Boot{State: bootstate.Bad, LastFailure: "broken"}}
}
func trialOver(id uint64) txstore.Tx {
	return txstore.Tx{ID: id, Boot: bootstate.Boot{State: bootstate.Trying, Tries: 3}}
}

// TestChooseFake: Choose against the narrow Store interface, one row per
// way a tx fails; each failure carries a typed cause for errors.Is.
func TestChooseFake(t *testing.T) {
	damage := []txstore.Problem{{Path: "bin/sh", Reason: "missing"}}
	inStore := []txstore.Problem{{Path: "bin/sh", Reason: "object corrupt", InStore: true}}
	type fail struct {
		tx    uint64
		cause error
	}
	cases := []struct {
		name     string
		store    *memStore
		setup    func(f *memStore, a *memAssembler)
		req      Request
		want     uint64   // booted; 0: nothing bootable
		fails    []fail   // in order
		markBad  []uint64 // marked bad by this boot
		def      uint64   // the default afterwards
		reblit   bool
		onTrial  bool
		errCause error // Choose's error matches it (besides ErrNothingBootable)
	}{
		{name: "requested good", store: newMem(2, good(1), good(2)), req: req(2), want: 2, def: 2},
		{name: "default when none requested", store: newMem(1, good(1), good(2)), req: req(0), want: 1, def: 1},
		{name: "pending goes on trial", store: newMem(2, good(1), pending(2)), req: req(2), want: 2, def: 2, onTrial: true},
		{name: "not in store", store: newMem(2, good(1), good(2)), req: req(5), want: 2, def: 2,
			fails: []fail{{5, ErrNotInStore}}},
		{name: "digest mismatch is the request's fault", store: newMem(2, good(1), good(2)),
			req:  Request{Tx: 2, Digest: "sha256:" + fmt.Sprintf("%064d", 9), Verify: txstore.VerifyFast, LoaderTriesLeft: -1},
			want: 1, def: 2, fails: []fail{{2, ErrDigestPin}}},
		{name: "malformed digest", store: newMem(2, good(1), good(2)),
			req:  Request{Tx: 2, DigestInvalid: true, Verify: txstore.VerifyFast, LoaderTriesLeft: -1},
			want: 1, def: 2, fails: []fail{{2, ErrDigestPin}}},
		{name: "bad requested, default heals to winner", store: newMem(3, good(1), good(2), bad(3)), req: req(3), want: 2, def: 2,
			fails: []fail{{3, bootstate.ErrBad}}},
		{name: "out of tries becomes bad", store: newMem(2, good(1), txstore.Tx{ID: 2, Boot: bootstate.Boot{State: bootstate.Trying, Tries: 3}}),
			req: req(2), want: 1, def: 1, fails: []fail{{2, bootstate.ErrOutOfTries}}, markBad: []uint64{2}},
		{name: "damage in the store's objects", store: newMem(2, good(1), good(2)),
			setup: func(f *memStore, _ *memAssembler) { f.probs[2] = inStore },
			req:   req(2), want: 1, def: 1, fails: []fail{{2, ErrDamaged}}, markBad: []uint64{2}},
		{name: "verify cannot run", store: newMem(2, good(1), good(2)),
			setup: func(f *memStore, _ *memAssembler) { f.verifyErr[2] = errors.New("EIO") },
			req:   req(2), want: 1, def: 2, fails: []fail{{2, ErrVerify}}},
		{name: "damaged tree re-blitted", store: newMem(2, good(1), good(2)),
			setup: func(f *memStore, _ *memAssembler) { f.probs[2] = damage },
			req:   req(2), want: 2, def: 2, reblit: true},
		{name: "re-blit fails", store: newMem(2, good(1), good(2)),
			setup: func(f *memStore, _ *memAssembler) { f.probs[2] = damage; f.reblitErr[2] = errors.New("ENOSPC") },
			req:   req(2), want: 1, def: 1, fails: []fail{{2, ErrDamaged}}, markBad: []uint64{2}},
		{name: "assemble fails", store: newMem(2, good(1), good(2)),
			setup: func(_ *memStore, a *memAssembler) { a.mountErr["/fake/trees/2"] = true },
			req:   req(2), want: 1, def: 2, fails: []fail{{2, ErrAssemble}}},
		{name: "no init", store: newMem(2, good(1), pending(2)),
			setup: func(_ *memStore, a *memAssembler) { a.noInit["/fake/trees/2"] = true },
			req:   req(2), want: 1, def: 1, fails: []fail{{2, ErrNoInit}}, markBad: []uint64{2}},
		{name: "attempt not recorded", store: newMem(2, good(1), pending(2)),
			setup: func(f *memStore, _ *memAssembler) { f.updateErr[2] = errors.New("EROFS") },
			req:   req(2), want: 1, def: 2, fails: []fail{{2, ErrNotRecorded}}},
		{name: "trial over elsewhere is marked bad", store: newMem(2, good(1), good(2), trialOver(3)), req: req(2), want: 2, def: 2,
			markBad: []uint64{3}},
		{name: "winner on trial leaves a bad default", store: newMem(3, pending(1), bad(3), good(4)), req: req(3), want: 1, def: 3, onTrial: true,
			fails: []fail{{3, bootstate.ErrBad}}},
		{name: "broken trust store fails closed", store: newMem(2, good(1), good(2)),
			req:   Request{Tx: 2, Verify: txstore.VerifyFast, LoaderTriesLeft: -1, Trust: Trust{Err: fmt.Errorf("%w: x.pem: garbage", ErrTrustStore)}},
			fails: []fail{{2, ErrTrustStore}}, def: 2, errCause: ErrTrustStore},
		{name: "nothing bootable", store: newMem(2, bad(1), good(2)),
			setup: func(f *memStore, _ *memAssembler) { f.probs[2] = inStore },
			req:   req(2), fails: []fail{{2, ErrDamaged}}, markBad: []uint64{2}, def: 2, errCause: ErrDamaged},
		{name: "empty store", store: newMem(0), req: req(0)},
		{name: "database unreadable, no pin", store: func() *memStore {
			f := newMem(0, good(1))
			f.listErr = fmt.Errorf("%w: bad page", txstore.ErrCorrupt)
			return f
		}(), req: req(1), fails: []fail{{1, ErrDigestPin}}, errCause: ErrDigestPin},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := c.store
			a := newMemAssembler()
			if c.setup != nil {
				c.setup(f, a)
			}
			before := map[uint64]bootstate.State{}
			for id, tx := range f.txs {
				before[id] = tx.State
			}
			res, err := Choose(f, c.req, a, noLog)
			if c.want == 0 {
				var nb *NothingBootableError
				if !errors.Is(err, ErrNothingBootable) || !errors.As(err, &nb) || len(nb.Failures) != len(res.Failures) {
					t.Fatalf("Choose = %v, %v; want a NothingBootableError", res.Tx, err)
				}
				if c.errCause != nil && !errors.Is(err, c.errCause) {
					t.Errorf("error %v does not match %v", err, c.errCause)
				}
			} else {
				if err != nil || res.Tx == nil || res.Tx.ID != c.want {
					t.Fatalf("Choose = %+v, %v; want tx %d", res, err, c.want)
				}
				if res.OnTrial != c.onTrial || res.Reblitted != c.reblit || a.mounted != f.TreeDir(c.want) {
					t.Errorf("on trial %v, re-blitted %v, mounted %q", res.OnTrial, res.Reblitted, a.mounted)
				}
			}
			var got []fail
			for _, fl := range res.Failures {
				got = append(got, fail{fl.Tx, nil})
				if fl.Err == nil || fl.Err.Error() != fl.Reason {
					t.Errorf("failure of tx %d: Err %v, Reason %q", fl.Tx, fl.Err, fl.Reason)
				}
			}
			if len(got) != len(c.fails) {
				t.Fatalf("failures %+v, want %+v", res.Failures, c.fails)
			}
			for i, w := range c.fails {
				if res.Failures[i].Tx != w.tx || !errors.Is(res.Failures[i].Err, w.cause) {
					t.Errorf("failure %d: tx %d %v, want tx %d matching %v", i, res.Failures[i].Tx, res.Failures[i].Err, w.tx, w.cause)
				}
			}
			var newlyBad []uint64
			for id := uint64(1); id <= 100; id++ {
				if tx, ok := f.txs[id]; ok && tx.State == bootstate.Bad && before[id] != bootstate.Bad {
					newlyBad = append(newlyBad, id)
				}
			}
			if !reflect.DeepEqual(newlyBad, c.markBad) {
				t.Errorf("marked bad %v, want %v", newlyBad, c.markBad)
			}
			if f.def != c.def {
				t.Errorf("default %d, want %d", f.def, c.def)
			}
		})
	}
}
