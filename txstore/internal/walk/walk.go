// Package walk holds what the parallel tree walks (manifest scan, blit,
// verify) share: directories opened once and shared by reference count,
// and a LIFO job scheduler over a fixed set of workers.
package walk

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Dir is an open directory shared by the jobs that use it; the last user
// closes it.
type Dir struct {
	FD   int
	refs atomic.Int32
}

// NewDir wraps fd with one reference.
func NewDir(fd int) *Dir {
	d := &Dir{FD: fd}
	d.refs.Store(1)
	return d
}

// Ref takes another reference.
func (d *Dir) Ref() *Dir { d.refs.Add(1); return d }

// Unref drops a reference, closing the directory on the last.
func (d *Dir) Unref() {
	if d.refs.Add(-1) == 0 {
		unix.Close(d.FD)
	}
}

// OpenDirAt opens directory name under dirfd, never following a symlink.
func OpenDirAt(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// Job is a unit of work; Release drops what an unrun job holds (its
// directory references) when the walk stops early.
type Job interface{ Release() }

// Sched runs jobs on a fixed set of workers, last in first out, so the walk
// goes depth first and few directories are open at once.
type Sched[J Job] struct {
	mu     sync.Mutex
	cond   *sync.Cond
	stack  []J
	active int
	err    error
	stop   atomic.Bool // set with err: running jobs give up early
}

// NewSched returns an empty scheduler.
func NewSched[J Job]() *Sched[J] {
	s := &Sched[J]{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Push adds a job.
func (s *Sched[J]) Push(j J) {
	s.mu.Lock()
	s.stack = append(s.stack, j)
	s.mu.Unlock()
	s.cond.Signal()
}

// Fail records the first error and stops the walk.
func (s *Sched[J]) Fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.stop.Store(true)
	s.mu.Unlock()
	s.cond.Broadcast()
}

// Failed says whether the walk is stopping; long jobs check it.
func (s *Sched[J]) Failed() bool { return s.stop.Load() }

// Run starts workers goroutines calling fn(w, job) until no job is left or
// one failed, and returns the first error. Jobs left over are released.
func (s *Sched[J]) Run(workers int, fn func(w int, j J) error) error {
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				s.mu.Lock()
				for len(s.stack) == 0 && s.active > 0 && s.err == nil {
					s.cond.Wait()
				}
				if s.err != nil || len(s.stack) == 0 {
					rest := s.stack
					s.stack = nil
					s.mu.Unlock()
					s.cond.Broadcast()
					for _, j := range rest {
						j.Release()
					}
					return
				}
				j := s.stack[len(s.stack)-1]
				s.stack = s.stack[:len(s.stack)-1]
				s.active++
				s.mu.Unlock()

				if err := fn(w, j); err != nil {
					s.Fail(err)
				}

				s.mu.Lock()
				s.active--
				idle := s.active == 0 && len(s.stack) == 0
				s.mu.Unlock()
				if idle {
					s.cond.Broadcast()
				}
			}
		}(w)
	}
	wg.Wait()
	return s.err
}
