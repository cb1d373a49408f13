package bootstate

import "testing"

func TestHealDefault(t *testing.T) {
	c := func(id uint64, s State) Candidate { return Candidate{ID: id, State: s} }
	tests := []struct {
		name   string
		def    uint64
		all    []Candidate
		booted uint64
		want   uint64
	}{
		{"no default", 0, []Candidate{c(1, Good)}, 1, 0},
		{"default good", 2, []Candidate{c(1, Good), c(2, Good)}, 1, 0},
		{"default on trial", 2, []Candidate{c(1, Good), c(2, Trying)}, 1, 0},
		{"default pending", 2, []Candidate{c(1, Good), c(2, Pending)}, 1, 0},
		{"bad default, booted good wins", 3, []Candidate{c(1, Good), c(2, Good), c(3, Bad)}, 1, 1},
		{"bad default, booted good and newer", 2, []Candidate{c(1, Good), c(2, Bad), c(3, Good)}, 3, 3},
		{"bad default booted: older good, newest first", 3, []Candidate{c(1, Good), c(2, Good), c(3, Bad)}, 3, 2},
		{"booted on trial: fallback order", 4, []Candidate{c(1, Good), c(2, Trying), c(3, Good), c(4, Bad)}, 2, 3},
		{"unknown booted: fallback order", 4, []Candidate{c(1, Good), c(4, Bad)}, 0, 1},
		{"older good before newer good", 3, []Candidate{c(1, Good), c(3, Bad), c(5, Good)}, 0, 1},
		{"only newer good", 3, []Candidate{c(1, Pending), c(3, Bad), c(5, Good)}, 0, 5},
		{"never a pending or bad tx", 3, []Candidate{c(1, Pending), c(2, Bad), c(3, Bad), c(4, Trying)}, 1, 0},
		{"default without a record", 9, []Candidate{c(1, Good), c(2, Good)}, 0, 2},
		{"default without a record, booted good", 9, []Candidate{c(1, Good), c(2, Good)}, 1, 1},
		{"booted bad is not chosen", 3, []Candidate{c(1, Good), c(2, Bad), c(3, Bad)}, 2, 1},
		{"nothing good", 2, []Candidate{c(1, Bad), c(2, Bad)}, 1, 0},
		{"empty", 2, nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := HealDefault(tt.def, tt.all, tt.booted); got != tt.want {
				t.Errorf("HealDefault(%d, %v, booted %d) = %d, want %d", tt.def, tt.all, tt.booted, got, tt.want)
			}
		})
	}
}

func TestAdoptLoaderCounter(t *testing.T) {
	tests := []struct {
		b       Boot
		loader  int
		left    int
		changed bool
	}{
		{Boot{State: Trying, TriesLeft: 3}, 1, 2, true},   // loader spent one more than the store knows
		{Boot{State: Trying, TriesLeft: 2}, 1, 2, false},  // in step
		{Boot{State: Pending, TriesLeft: 3}, 5, 3, false}, // never raised
		{Boot{State: Pending, TriesLeft: 3}, -1, 3, false},
		{Boot{State: Good, TriesLeft: 3}, 0, 3, false},
		{Boot{State: Bad, TriesLeft: 3}, 0, 3, false},
		{Boot{State: Trying, TriesLeft: 3}, 0, 1, true},
	}
	for i, tt := range tests {
		b := tt.b
		if ch := b.AdoptLoaderCounter(tt.loader); ch != tt.changed || b.TriesLeft != tt.left {
			t.Errorf("%d: %+v.AdoptLoaderCounter(%d) = %v, left %d; want %v, %d", i, tt.b, tt.loader, ch, b.TriesLeft, tt.changed, tt.left)
		}
	}
}

func TestFailTrial(t *testing.T) {
	tests := []struct {
		b      Boot
		failed bool
	}{
		{Boot{State: Trying, TriesLeft: 0, Tries: 3}, true},
		{Boot{State: Trying, TriesLeft: 1, Tries: 2}, false},
		{Boot{State: Pending, TriesLeft: 0}, false},
		{Boot{State: Good, TriesLeft: 0}, false},
		{Boot{State: Bad, TriesLeft: 0, LastFailure: "x"}, false},
	}
	for i, tt := range tests {
		b := tt.b
		if got := b.FailTrial(); got != tt.failed {
			t.Errorf("%d: FailTrial(%+v) = %v", i, tt.b, got)
		}
		if tt.failed && (b.State != Bad || b.LastFailure != "not marked good after 3 tries") {
			t.Errorf("%d: after FailTrial: %+v", i, b)
		}
		if !tt.failed && b != tt.b {
			t.Errorf("%d: FailTrial changed %+v to %+v", i, tt.b, b)
		}
	}
}
