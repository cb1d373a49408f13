package repo

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrDeadline: the network part of a pull (index, manifest, objects, with
// their retries) took longer than PullOptions.Timeout. The error is a
// *DeadlineError.
var ErrDeadline = errors.New("pull took longer than its time limit")

// DeadlineError is a pull given up at PullOptions.Timeout: Limit is that
// timeout, Err what was under way (a GET cut off, a retry interrupted).
// Nothing was recorded; objects already checked and published stay, so a
// re-run fetches only the rest.
type DeadlineError struct {
	Limit time.Duration
	Err   error
}

func (e *DeadlineError) Error() string {
	return fmt.Sprintf("pull took longer than %v, gave up: %v", e.Limit, e.Err)
}

// Unwrap makes it ErrDeadline and what was under way.
func (e *DeadlineError) Unwrap() []error { return []error{ErrDeadline, e.Err} }

// errDeadlineCause tells the pull's own deadline from the caller's ctx.
var errDeadlineCause = errors.New("pull time limit reached")

// withDeadline bounds ctx by o.Timeout (none when it is not positive).
func (o PullOptions) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if o.Timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeoutCause(ctx, o.Timeout, errDeadlineCause)
}

// deadlineErr makes err a *DeadlineError when ctx ended at o.Timeout: the
// message then says why a GET was cut off, rather than only "context
// deadline exceeded".
func (o PullOptions) deadlineErr(ctx context.Context, err error) error {
	if err == nil || !errors.Is(context.Cause(ctx), errDeadlineCause) {
		return err
	}
	return &DeadlineError{Limit: o.Timeout, Err: err}
}
