package walk

import (
	"errors"
	"sync/atomic"
	"testing"
)

type countJob struct {
	depth    int
	released *atomic.Int32
}

func (j countJob) Release() { j.released.Add(1) }

// Every job runs once when nothing fails; after a failure Run returns the
// first error and every job not run is released, none lost.
func TestSched(t *testing.T) {
	for _, tc := range []struct {
		name   string
		failAt int32 // fail the n-th job run; 0 = never
	}{{"all run", 0}, {"stop on error", 5}} {
		t.Run(tc.name, func(t *testing.T) {
			var ran, released, pushed atomic.Int32
			s := NewSched[countJob]()
			s.Push(countJob{0, &released})
			pushed.Add(1)
			boom := errors.New("boom")
			err := s.Run(4, func(_ int, j countJob) error {
				n := ran.Add(1)
				if j.depth < 6 { // a binary tree of 127 jobs
					for i := 0; i < 2; i++ {
						s.Push(countJob{j.depth + 1, &released})
						pushed.Add(1)
					}
				}
				if n == tc.failAt {
					return boom
				}
				return nil
			})
			if tc.failAt == 0 {
				if err != nil || ran.Load() != 127 || released.Load() != 0 {
					t.Fatalf("err %v, ran %d, released %d; want nil, 127, 0", err, ran.Load(), released.Load())
				}
				return
			}
			if !errors.Is(err, boom) || !s.Failed() {
				t.Fatalf("err %v, failed %v", err, s.Failed())
			}
			if ran.Load()+released.Load() != pushed.Load() {
				t.Fatalf("ran %d + released %d != pushed %d", ran.Load(), released.Load(), pushed.Load())
			}
		})
	}
}
