package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Fetch errors, for errors.Is.
var (
	// ErrFetch: a file could not be fetched (network error, HTTP status,
	// too many redirects); the message names the URL.
	ErrFetch = errors.New("fetch failed")
	// ErrRedirects: the server redirected more than MaxRedirects times
	// (a loop, most likely). Also an ErrFetch.
	ErrRedirects = fmt.Errorf("%w: too many redirects", ErrFetch)
	// ErrStalled: a body sent nothing for BodyIdleTimeout. Also an
	// ErrFetch, and retried.
	ErrStalled = errors.New("server stalled")
	// ErrRedirectOrigin: the server redirected to another origin (scheme,
	// host or port) than the repository URL's. Also an ErrFetch, and
	// permanent.
	ErrRedirectOrigin = fmt.Errorf("%w: redirect to another origin", ErrFetch)
)

// MaxRedirects bounds the redirects followed for one request.
const MaxRedirects = 5

// Fetcher reads files of a repository by their path relative to it (the
// path helpers in format.go build every path). Pull uses one Fetcher from
// many goroutines at once.
type Fetcher interface {
	// Get returns the file's body; the caller closes it. A missing file is
	// a *StatusError with Code 404.
	Get(ctx context.Context, path string) (io.ReadCloser, error)
	// URL is where path is fetched from, for messages.
	URL(path string) string
}

// StatusError is an HTTP response other than 200 OK.
type StatusError struct {
	URL    string
	Code   int
	Status string // e.g. "404 Not Found"
}

func (e *StatusError) Error() string { return fmt.Sprintf("GET %s: HTTP %s", e.URL, e.Status) }

// Unwrap makes every StatusError an ErrFetch.
func (e *StatusError) Unwrap() error { return ErrFetch }

// isNotFound reports a 404 (or 410): the file is not in the repository.
func isNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusGone)
}

// permanent reports errors a retry cannot cure: a client error other than
// a timeout or rate limit (404, 403, …), a redirect loop, a bad URL.
// Everything else (network errors, 5xx, truncated or wrong bodies) is
// retried.
func permanent(err error) bool {
	var pe permanentErr
	if errors.As(err, &pe) {
		return true
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code >= 400 && se.Code < 500 && se.Code != http.StatusRequestTimeout && se.Code != http.StatusTooManyRequests
	}
	return errors.Is(err, ErrRedirects) || errors.Is(err, ErrRedirectOrigin) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// HTTPFetcher fetches from an http:// or https:// repository URL over one
// client: keep-alive connections, at most MaxIdleConnsPerHost idle per
// host, MaxRedirects redirects and only within the repository URL's origin,
// no transparent decompression (bodies are hashed exactly as served).
type HTTPFetcher struct {
	// BodyIdleTimeout bounds how long one Read of a body may wait for a
	// byte; NewHTTPFetcher sets DefaultBodyIdleTimeout. Zero or less
	// disables it. Set it before the first Get.
	BodyIdleTimeout time.Duration

	base   *url.URL
	client *http.Client
}

// DefaultBodyIdleTimeout is HTTPFetcher.BodyIdleTimeout unless changed.
const DefaultBodyIdleTimeout = 60 * time.Second

// NewHTTPFetcher checks base (http or https, a host, no query or fragment)
// and makes a client for conns parallel requests.
func NewHTTPFetcher(base string, conns int) (*HTTPFetcher, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("repository URL %q: %w", base, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("repository URL %q: want http(s)://HOST/PATH without user, query or fragment", base)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		u.RawPath = ""
	}
	if conns < 1 {
		conns = 1
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          2 * conns,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		DisableCompression:    true,
	}
	home := origin(u)
	c := &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		// A mirror that sends requests elsewhere (another host, or from
		// https to http) would have the client fetch, and the URL's
		// query carry, whatever that origin likes: the repository URL
		// names the server, so the server's own answer cannot change it.
		if o := origin(req.URL); o != home {
			return fmt.Errorf("%w: %s sent a redirect to %s, refused (use the URL it redirects to as the repository URL if that is intended)", ErrRedirectOrigin, home, o)
		}
		if len(via) > MaxRedirects {
			return fmt.Errorf("%w (more than %d, last to %s)", ErrRedirects, MaxRedirects, req.URL.Redacted())
		}
		return nil
	}}
	return &HTTPFetcher{BodyIdleTimeout: DefaultBodyIdleTimeout, base: u, client: c}, nil
}

// origin is u's scheme://host:port, lower case, with the scheme's default
// port spelled out, so that equal origins compare equal.
func origin(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// URL implements Fetcher.
func (f *HTTPFetcher) URL(path string) string {
	return f.base.ResolveReference(&url.URL{Path: path}).String()
}

// Get implements Fetcher. The body's Read fails with ErrStalled when no
// byte arrives for BodyIdleTimeout; Close releases the request.
func (f *HTTPFetcher) Get(ctx context.Context, path string) (io.ReadCloser, error) {
	u := f.URL(path)
	// A request context of its own: the idle timer cancels it (with a
	// stall as the cause) without touching the caller's ctx.
	rctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		cancel(nil)
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // Do's own error repeats the method and URL
		}
		if errors.Is(err, ErrFetch) { // ErrRedirects, ErrRedirectOrigin
			return nil, fmt.Errorf("GET %s: %w", u, err)
		}
		return nil, fmt.Errorf("GET %s: %w: %w", u, ErrFetch, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel(nil)
		return nil, &StatusError{URL: u, Code: resp.StatusCode, Status: resp.Status}
	}
	b := &idleBody{body: resp.Body, url: u, idle: f.BodyIdleTimeout, parent: ctx, ctx: rctx, cancel: cancel}
	stall := &stallError{url: u, idle: f.BodyIdleTimeout}
	b.timer = time.AfterFunc(time.Hour, func() { cancel(stall) })
	b.timer.Stop() // armed only while a Read waits
	return b, nil
}

// stallError is a body that sent nothing for idle. It is an ErrFetch and
// an ErrStalled, and a timeout (a network error, so retried) — never a
// context.Canceled, which permanent() would not retry.
type stallError struct {
	url  string
	idle time.Duration
}

func (e *stallError) Error() string {
	return fmt.Sprintf("GET %s: no data for %v (server stalled)", e.url, e.idle)
}
func (e *stallError) Unwrap() []error { return []error{ErrFetch, ErrStalled} }
func (e *stallError) Timeout() bool   { return true }

// idleBody is a response body whose every Read may wait at most idle for
// a byte. The timer runs only inside Read, so a consumer that pauses
// between Reads (a slow disk) is not taken for a stalled server.
type idleBody struct {
	body   io.ReadCloser
	url    string
	idle   time.Duration
	parent context.Context // the caller's
	ctx    context.Context // the request's, cancelled on a stall or Close
	cancel context.CancelCauseFunc
	timer  *time.Timer
	closed atomic.Bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	armed := b.idle > 0 && len(p) > 0 && !b.closed.Load()
	if armed {
		b.timer.Reset(b.idle)
	}
	n, err := b.body.Read(p)
	if armed {
		// A timer that fired anyway has cancelled the request: the next
		// Read reports the stall.
		b.timer.Stop()
	}
	if err == nil || err == io.EOF {
		return n, err
	}
	// The caller's cancellation stays a cancellation (permanent), even if
	// the timer fired too.
	if perr := b.parent.Err(); perr != nil {
		if errors.Is(err, perr) {
			return n, err
		}
		return n, fmt.Errorf("GET %s: %w: %w", b.url, perr, err)
	}
	var se *stallError
	if errors.As(context.Cause(b.ctx), &se) {
		return n, se
	}
	return n, err
}

// Close stops the timer and ends the request.
func (b *idleBody) Close() error {
	b.closed.Store(true)
	b.timer.Stop()
	err := b.body.Close()
	b.cancel(nil)
	return err
}

// CloseIdle closes the client's idle connections.
func (f *HTTPFetcher) CloseIdle() { f.client.CloseIdleConnections() }

// retry runs fn up to tries times with exponential backoff from first to
// at most maxBackoff, stopping at a permanent error or a cancelled ctx.
func retry(ctx context.Context, tries int, first, maxBackoff time.Duration, fn func() error) error {
	if tries < 1 {
		tries = 1
	}
	wait := first
	var err error
	for i := 1; ; i++ {
		if err = fn(); err == nil {
			return nil
		}
		if i >= tries || permanent(err) || ctx.Err() != nil {
			if i > 1 {
				err = fmt.Errorf("%w (%d tries)", err, i)
			}
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (interrupted: %w)", err, ctx.Err())
		case <-t.C:
		}
		if wait *= 2; wait > maxBackoff {
			wait = maxBackoff
		}
	}
}
