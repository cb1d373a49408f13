package repo

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestHTTPFetcherRedirectOrigin: a redirect within the repository's origin
// is followed; one to another origin (another port, host or scheme) is a
// permanent ErrRedirectOrigin naming both origins but not the query, tried
// once, and the other origin never sees a request.
func TestHTTPFetcherRedirectOrigin(t *testing.T) {
	var otherHits atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherHits.Add(1)
		io.WriteString(w, "from the other origin")
	}))
	t.Cleanup(other.Close)
	var repoHits atomic.Int64
	var repoURL string
	repo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repoHits.Add(1)
		switch r.URL.Path {
		case "/repo/same":
			http.Redirect(w, r, "/repo/target", http.StatusFound)
		case "/repo/same-absolute":
			http.Redirect(w, r, repoURL+"/repo/target", http.StatusMovedPermanently)
		case "/repo/target":
			io.WriteString(w, "target")
		case "/repo/other":
			http.Redirect(w, r, other.URL+"/x?token=secret", http.StatusFound)
		case "/repo/scheme":
			http.Redirect(w, r, "https://"+r.Host+"/repo/target", http.StatusMovedPermanently)
		case "/repo/loop":
			http.Redirect(w, r, "/repo/loop", http.StatusFound)
		}
	}))
	t.Cleanup(repo.Close)
	repoURL = repo.URL
	f := newTestFetcher(t, repo.URL+"/repo/", time.Minute)
	home := "http://" + repo.Listener.Addr().String()

	cases := []struct {
		path string
		body string // "" = an error
		want error
		to   string // the origin the error names
	}{
		{"same", "target", nil, ""},
		{"same-absolute", "target", nil, ""},
		{"other", "", ErrRedirectOrigin, other.URL},
		{"scheme", "", ErrRedirectOrigin, "https://" + repo.Listener.Addr().String()},
		{"loop", "", ErrRedirects, ""},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			repoHits.Store(0)
			otherHits.Store(0)
			var body string
			err := retry(context.Background(), 4, time.Millisecond, time.Millisecond, func() error {
				r, err := f.Get(context.Background(), c.path)
				if err != nil {
					return err
				}
				defer r.Close()
				b, err := io.ReadAll(r)
				body = string(b)
				return err
			})
			if c.want == nil {
				if err != nil || body != c.body {
					t.Fatalf("got %q, %v; want %q", body, err, c.body)
				}
				return
			}
			t.Log(err)
			if !errors.Is(err, c.want) || !errors.Is(err, ErrFetch) || !permanent(err) {
				t.Fatalf("got %v, want a permanent %v", err, c.want)
			}
			if n := repoHits.Load(); c.want == ErrRedirectOrigin && n != 1 {
				t.Errorf("the repository got %d requests, want 1 (not retried)", n)
			}
			if otherHits.Load() != 0 {
				t.Errorf("the other origin got a request")
			}
			msg := err.Error()
			if c.to != "" && (!strings.Contains(msg, home) || !strings.Contains(msg, c.to)) {
				t.Errorf("%q does not name %s and %s", msg, home, c.to)
			}
			if strings.Contains(msg, "secret") {
				t.Errorf("%q repeats the redirect's query", msg)
			}
		})
	}
}

// TestOrigin: what counts as the same origin.
func TestOrigin(t *testing.T) {
	cases := []struct {
		a, b string
		same bool
	}{
		{"http://example.org/repo/", "http://EXAMPLE.org:80/other?q=1", true},
		{"https://example.org/", "https://example.org:443/x", true},
		{"http://[::1]:8080/", "http://[::1]:8080/y", true},
		{"http://example.org/", "https://example.org/", false},
		{"http://example.org/", "http://example.org:8080/", false},
		{"http://example.org/", "http://mirror.example.org/", false},
		{"https://example.org/", "https://example.org.evil.test/", false},
	}
	for _, c := range cases {
		a, _ := url.Parse(c.a)
		b, _ := url.Parse(c.b)
		if got := origin(a) == origin(b); got != c.same {
			t.Errorf("%s and %s: same origin %v (%s, %s), want %v", c.a, c.b, got, origin(a), origin(b), c.same)
		}
	}
}
