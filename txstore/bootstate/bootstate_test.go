package bootstate

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"testing"
)

func TestAttemptTransitions(t *testing.T) {
	b := New(2)
	for i, want := range []struct {
		state State
		left  int
		err   error
	}{{Trying, 1, nil}, {Trying, 0, nil}, {Bad, 0, ErrOutOfTries}, {Bad, 0, ErrBad}} {
		err := b.Attempt(false)
		if b.State != want.state || b.TriesLeft != want.left || !errors.Is(err, want.err) {
			t.Fatalf("attempt %d: %+v err %v, want %+v", i+1, b, err, want)
		}
	}
	if err := b.Attempt(true); err != nil || b.State != Bad {
		t.Fatalf("forced attempt: %v %+v", err, b)
	}
	g := New(0)
	if g.TriesLeft != DefaultTries {
		t.Fatalf("default tries %d", g.TriesLeft)
	}
	g.MarkGood()
	for i := 0; i < 10; i++ {
		if err := g.Attempt(false); err != nil || g.State != Good {
			t.Fatalf("good tx refused: %v", err)
		}
	}
	g.MarkBad("")
	if err := g.Attempt(false); !errors.Is(err, ErrBad) || g.LastFailure != "marked bad" {
		t.Fatalf("bad tx: %v %+v", err, g)
	}
}

func TestSyncTries(t *testing.T) {
	b := New(3)
	b.SyncTries(1)
	if b.TriesLeft != 1 {
		t.Fatalf("lower bootloader count not adopted: %d", b.TriesLeft)
	}
	b.SyncTries(3)
	if b.TriesLeft != 1 {
		t.Fatalf("higher bootloader count refunded a try: %d", b.TriesLeft)
	}
	g := New(3)
	g.MarkGood()
	g.SyncTries(0)
	if g.State != Good {
		t.Fatal("good tx changed by bootloader counter")
	}
}

func TestFallbackOrder(t *testing.T) {
	all := []Candidate{{1, Good}, {2, Bad}, {3, Pending}, {4, Good}, {5, Trying}, {6, Good}, {7, Bad}}
	cases := []struct {
		req  uint64
		want []uint64
	}{
		{5, []uint64{5, 4, 1, 3, 6}},
		{7, []uint64{7, 6, 4, 1, 5, 3}},
		{1, []uint64{1, 6, 4}},
		{99, []uint64{6, 4, 1, 5, 3}}, // unknown id: everything older, good first
		{2, []uint64{2, 1, 6, 4}},
	}
	for _, c := range cases {
		if got := FallbackOrder(c.req, all); !reflect.DeepEqual(got, c.want) {
			t.Errorf("req %d: got %v want %v", c.req, got, c.want)
		}
	}
}

func TestKeep(t *testing.T) {
	g, p, b, tr := Good, Pending, Bad, Trying
	type tx struct {
		id     uint64
		st     State
		pinned bool
	}
	cases := []struct {
		name    string
		txs     []tx
		newest  int
		protect []uint64
		want    []uint64
	}{
		{"issue 9: 1 good, 2, 3 bad, 4 default", []tx{{1, g, false}, {2, p, false}, {3, b, false}, {4, p, false}}, 2, []uint64{4}, []uint64{1, 2, 4}},
		{"newest N by id when none is bad", []tx{{1, p, false}, {2, p, false}, {3, p, false}}, 2, nil, []uint64{2, 3}},
		{"newest good kept outside N", []tx{{1, g, false}, {2, g, false}, {3, tr, false}, {4, p, false}}, 1, nil, []uint64{2, 4}},
		{"bad only fills slots nothing else takes", []tx{{1, b, false}, {2, g, false}, {3, b, false}}, 2, nil, []uint64{2, 3}},
		{"all bad: newest bad ones", []tx{{1, b, false}, {2, b, false}, {3, b, false}}, 2, nil, []uint64{2, 3}},
		{"pinned, default, booted", []tx{{1, p, true}, {2, b, false}, {3, p, false}, {4, p, false}, {5, p, false}}, 1, []uint64{2, 3, 0, 99}, []uint64{1, 2, 3, 5}},
		{"newest < 1 counts as 1", []tx{{1, p, false}, {2, p, false}}, 0, nil, []uint64{2}},
		{"empty", nil, 3, []uint64{1}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var in []KeepCandidate
			for _, x := range c.txs {
				in = append(in, KeepCandidate{ID: x.id, State: x.st, Pinned: x.pinned})
			}
			got := Keep(in, c.newest, c.protect...)
			var ids []uint64
			for id := range got {
				ids = append(ids, id)
			}
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			if fmt.Sprint(ids) != fmt.Sprint(c.want) {
				t.Fatalf("Keep = %v, want %v", ids, c.want)
			}
		})
	}
}
