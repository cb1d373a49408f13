package repo

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stallServer answers every GET with a Content-Length of 2*len(half),
// sends half and then sends nothing more until the client goes away or
// the test ends.
func stallServer(t *testing.T, half string) *httptest.Server {
	t.Helper()
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(2*len(half)))
		io.WriteString(w, half)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	// Cleanups run last first: unblock the handler, then close.
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(done) })
	return srv
}

func newTestFetcher(t *testing.T, url string, idle time.Duration) *HTTPFetcher {
	t.Helper()
	f, err := NewHTTPFetcher(url, 2)
	if err != nil {
		t.Fatal(err)
	}
	f.BodyIdleTimeout = idle
	t.Cleanup(f.CloseIdle)
	return f
}

func TestNewHTTPFetcherDefaultIdleTimeout(t *testing.T) {
	f, err := NewHTTPFetcher("http://example.invalid/repo", 1)
	if err != nil {
		t.Fatal(err)
	}
	if f.BodyIdleTimeout != DefaultBodyIdleTimeout || DefaultBodyIdleTimeout != 60*time.Second {
		t.Fatalf("BodyIdleTimeout %v, DefaultBodyIdleTimeout %v; want 1m0s", f.BodyIdleTimeout, DefaultBodyIdleTimeout)
	}
}

// TestHTTPFetcherBodyStall: a body that stops mid-way ends in a retryable
// ErrFetch naming the URL, not in a Read that blocks forever.
func TestHTTPFetcherBodyStall(t *testing.T) {
	srv := stallServer(t, strings.Repeat("x", 1000))
	f := newTestFetcher(t, srv.URL, 200*time.Millisecond)
	const path = "objects/ab/cdef"
	body, err := f.Get(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(body)
	body.Close()
	if err == nil {
		t.Fatalf("read %d bytes of a stalled body without error", len(data))
	}
	if len(data) != 1000 {
		t.Errorf("read %d bytes before the stall, want 1000", len(data))
	}
	if !errors.Is(err, ErrFetch) || !errors.Is(err, ErrStalled) {
		t.Errorf("error %q: not ErrFetch and ErrStalled", err)
	}
	if msg := err.Error(); !strings.Contains(msg, f.URL(path)) || !strings.Contains(msg, "no data for 200ms (server stalled)") {
		t.Errorf("error %q: want the URL and \"no data for 200ms (server stalled)\"", msg)
	}
	if permanent(err) {
		t.Errorf("stall %q is permanent; want it retried", err)
	}
	if !isNetErr(err) {
		t.Errorf("stall %q is not a network error (a compressed body would call it bad content)", err)
	}

	// retry tries it again, as often as it is told to.
	var calls atomic.Int64
	err = retry(context.Background(), 2, time.Millisecond, time.Millisecond, func() error {
		calls.Add(1)
		b, err := f.Get(context.Background(), path)
		if err != nil {
			return err
		}
		defer b.Close()
		_, err = io.ReadAll(b)
		return err
	})
	if !errors.Is(err, ErrStalled) || calls.Load() != 2 {
		t.Errorf("retry: %d calls, error %v; want 2 calls and a stall", calls.Load(), err)
	}
}

// TestHTTPFetcherSlowBody: the timeout is per Read, not per body or per
// request — a slow but steady server, and a reader that pauses between
// Reads, both succeed although the whole body takes longer than it.
func TestHTTPFetcherSlowBody(t *testing.T) {
	const idle = 500 * time.Millisecond
	tests := []struct {
		name  string
		every time.Duration // server: one byte every
		pause time.Duration // client: between Reads
		n     int
	}{
		{"slow server", 50 * time.Millisecond, 0, 30}, // 1.5 s in all
		{"slow reader", 0, 3 * idle / 2, 3},           // 1.5 s in all
		{"slow both", 50 * time.Millisecond, idle, 4}, // pauses longer than the timeout
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(tt.n))
				for i := 0; i < tt.n; i++ {
					if tt.every > 0 {
						time.Sleep(tt.every)
					}
					w.Write([]byte{'a' + byte(i%26)})
					w.(http.Flusher).Flush()
				}
			}))
			defer srv.Close()
			f := newTestFetcher(t, srv.URL, idle)
			body, err := f.Get(context.Background(), "index.json")
			if err != nil {
				t.Fatal(err)
			}
			defer body.Close()
			var got []byte
			buf := make([]byte, 1)
			for {
				n, err := body.Read(buf)
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d bytes: %v", len(got), err)
				}
				if tt.pause > 0 {
					time.Sleep(tt.pause)
				}
			}
			if len(got) != tt.n {
				t.Fatalf("got %d bytes, want %d", len(got), tt.n)
			}
		})
	}
}

// TestHTTPFetcherCallerCancel: the caller's cancellation mid-body is
// still permanent (not taken for a stall and retried).
func TestHTTPFetcherCallerCancel(t *testing.T) {
	half := strings.Repeat("y", 100)
	srv := stallServer(t, half)
	f := newTestFetcher(t, srv.URL, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body, err := f.Get(ctx, "config")
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if _, err := io.ReadFull(body, make([]byte, len(half))); err != nil {
		t.Fatal(err)
	}
	cancel()
	_, err = io.ReadAll(body)
	if err == nil {
		t.Fatal("read on after cancel without error")
	}
	if !errors.Is(err, context.Canceled) || !permanent(err) || errors.Is(err, ErrStalled) {
		t.Fatalf("error %q: want a permanent context.Canceled, not a stall", err)
	}
	var calls int
	err = retry(ctx, 3, time.Millisecond, time.Millisecond, func() error { calls++; return err })
	if calls != 1 || !errors.Is(err, context.Canceled) {
		t.Fatalf("retry: %d calls, %v; want 1", calls, err)
	}
}

// TestHTTPFetcherCloseReleases: Close stops the idle timer and cancels
// the request's context, whether the body was read to the end or not.
func TestHTTPFetcherCloseReleases(t *testing.T) {
	srv := stallServer(t, "zz")
	f := newTestFetcher(t, srv.URL, time.Hour)
	for _, readAll := range []bool{false, true} {
		body, err := f.Get(context.Background(), "config")
		if err != nil {
			t.Fatal(err)
		}
		ib, ok := body.(*idleBody)
		if !ok {
			t.Fatalf("body is a %T, want *idleBody", body)
		}
		if readAll {
			io.ReadFull(body, make([]byte, 2))
		}
		if err := body.Close(); err != nil {
			t.Fatal(err)
		}
		if ib.ctx.Err() == nil {
			t.Errorf("read all %v: request context not cancelled by Close", readAll)
		}
		if ib.timer.Stop() {
			t.Errorf("read all %v: idle timer still armed after Close", readAll)
		}
	}
}
