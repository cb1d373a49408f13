package bootstate

import (
	"errors"
	"reflect"
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
