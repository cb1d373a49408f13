// Package failpoint names the steps of txboot's write paths where a test can
// make the process crash, fail or pause, in the spirit of gofail's
// `// gofail: var name struct{}` markers (bbolt's robustness tests) but
// without a code generator: a package declares its points once,
//
//	var fpBlitted = failpoint.New("commit/blitted")
//
// and calls fpBlitted.Inject() at the step; Inject costs one atomic load
// while nothing is enabled.
//
// Points are enabled from the environment, which is how a child process or
// a QEMU guest's bootctl is told where to die:
//
//	TXBOOT_FAILPOINTS='commit/blitted=crash,commit/recorded=sleep(2s)'
//
// Actions: crash (SIGKILL the process itself, as a power cut ends it),
// error (Inject returns an error wrapping ErrInjected; the write path takes
// its ordinary failure path), sleep(DURATION), off. In-process tests use
// Enable and EnableFunc instead.
package failpoint

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// EnvVar is the environment variable read on the first Inject.
const EnvVar = "TXBOOT_FAILPOINTS"

// Errors, for errors.Is.
var (
	// ErrInjected is what an "error" action makes Inject return.
	ErrInjected = errors.New("failpoint: injected error")
	// ErrUnknown: no point of that name is declared.
	ErrUnknown = errors.New("failpoint: unknown name")
	// ErrAction: the action does not parse.
	ErrAction = errors.New("failpoint: bad action")
)

// Point is one named step.
type Point struct {
	name string
}

var (
	mu      sync.Mutex
	points  = map[string]*Point{}
	actions = map[string]func() error{}
	enabled atomic.Int32 // len(actions), read without the lock
	envOnce sync.Once
)

// New declares a point; names are unique (a second New of one name panics:
// it is a programming error caught at init).
func New(name string) *Point {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := points[name]; dup {
		panic("failpoint: " + name + " declared twice")
	}
	p := &Point{name: name}
	points[name] = p
	return p
}

// Name is the point's name.
func (p *Point) Name() string { return p.name }

// Inject runs the action enabled for p, if any, and returns its error.
func (p *Point) Inject() error {
	envOnce.Do(loadEnv)
	if enabled.Load() == 0 {
		return nil
	}
	mu.Lock()
	f := actions[p.name]
	mu.Unlock()
	if f == nil {
		return nil
	}
	return f()
}

// loadEnv enables what EnvVar names. It runs on the first Inject, when
// every package's points are declared; what does not parse is said once on
// stderr (a typo must not pass for a test that ran).
func loadEnv() {
	v := os.Getenv(EnvVar)
	if v == "" {
		return
	}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, action, ok := strings.Cut(item, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "%s: %q: want name=action\n", EnvVar, item)
			continue
		}
		if _, err := Enable(name, action); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", EnvVar, err)
		}
	}
}

// Names lists every declared point, sorted.
func Names() []string {
	mu.Lock()
	defer mu.Unlock()
	out := make([]string, 0, len(points))
	for n := range points {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Enable sets the action of a point (crash, error, sleep(D), off) and
// returns a function that restores the previous one.
func Enable(name, action string) (restore func(), err error) {
	f, err := parseAction(name, action)
	if err != nil {
		return nil, err
	}
	return EnableFunc(name, f)
}

// EnableFunc makes the point call f (nil: off) and returns a function that
// restores the previous action. Tests use it to change a source directory
// at an exact step.
func EnableFunc(name string, f func() error) (restore func(), err error) {
	mu.Lock()
	defer mu.Unlock()
	if _, ok := points[name]; !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	prev := actions[name]
	set(name, f)
	return func() {
		mu.Lock()
		defer mu.Unlock()
		set(name, prev)
	}, nil
}

func set(name string, f func() error) {
	if f == nil {
		delete(actions, name)
	} else {
		actions[name] = f
	}
	enabled.Store(int32(len(actions)))
}

func parseAction(name, action string) (func() error, error) {
	switch {
	case action == "off":
		return nil, nil
	case action == "crash":
		return func() error {
			// Said first: a guest's console then shows where it died.
			fmt.Fprintf(os.Stderr, "failpoint %s: crash\n", name)
			_ = unix.Kill(unix.Getpid(), unix.SIGKILL)
			select {} // the signal is on its way
		}, nil
	case action == "error":
		return func() error { return fmt.Errorf("%w at %s", ErrInjected, name) }, nil
	case strings.HasPrefix(action, "sleep(") && strings.HasSuffix(action, ")"):
		d, err := time.ParseDuration(action[len("sleep(") : len(action)-1])
		if err != nil || d < 0 {
			return nil, fmt.Errorf("%w: %s=%s: want sleep(DURATION), e.g. sleep(2s)", ErrAction, name, action)
		}
		return func() error { time.Sleep(d); return nil }, nil
	}
	return nil, fmt.Errorf("%w: %s=%s: want crash, error, sleep(DURATION) or off", ErrAction, name, action)
}
