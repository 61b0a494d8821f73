package tapproxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

func TestNewRejectsBadInput(t *testing.T) {
	tests := []struct {
		name   string
		target *url.URL
		opts   []tapproxy.Option
		want   []string // substrings of the error
	}{
		{name: "nil target", target: nil, want: []string{"tapproxy: target URL is nil"}},
		{name: "no scheme", target: &url.URL{Host: "example.com"}, want: []string{"scheme must be http or https"}},
		{name: "other scheme", target: &url.URL{Scheme: "ftp", Host: "example.com"}, want: []string{"scheme must be http or https"}},
		{name: "no host", target: &url.URL{Scheme: "http", Path: "/x"}, want: []string{"has no host"}},
		{name: "negative capture limit", target: &url.URL{Scheme: "http", Host: "a"},
			opts: []tapproxy.Option{tapproxy.WithCaptureLimit(-1)}, want: []string{"capture limit -1 is negative"}},
		{name: "negative capture budget", target: &url.URL{Scheme: "http", Host: "a"},
			opts: []tapproxy.Option{tapproxy.WithCaptureBudget(-1)}, want: []string{"capture budget -1 is negative"}},
		{name: "negative request body limit", target: &url.URL{Scheme: "http", Host: "a"},
			opts: []tapproxy.Option{tapproxy.WithRequestBodyLimit(-1)}, want: []string{"request body limit -1 is negative"}},
		{name: "unknown escaped-slash action", target: &url.URL{Scheme: "http", Host: "a"},
			opts: []tapproxy.Option{tapproxy.WithEscapedSlashes(tapproxy.EscapedSlashAction(7))}, want: []string{"unknown escaped-slash action 7"}},
		{name: "several at once", target: &url.URL{Scheme: "http"},
			opts: []tapproxy.Option{tapproxy.WithCaptureLimit(-1), tapproxy.WithRequestCaptureLimit(-2)},
			want: []string{"has no host", "capture limit -1", "request capture limit -2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tapproxy.New(tt.target, tt.opts...)
			require.Error(t, err)
			assert.Nil(t, p)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.True(t, strings.HasPrefix(err.Error(), "tapproxy: "), err.Error())
		})
	}
}

func TestNewIgnoresNilOptions(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	front := newFrontend(t, up.URL,
		nil,
		tapproxy.WithTransport(nil),
		tapproxy.WithErrorHandler(nil),
		tapproxy.WithModifyResponse(nil),
		tapproxy.WithLogger(nil),
		tapproxy.WithObserver(nil),
		tapproxy.WithDirector(nil))
	res, body := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "ok", string(body))
}

func TestNewCopiesTarget(t *testing.T) {
	up, got := newEcho(t)
	target := mustParse(t, up+"/v1")
	p, err := tapproxy.New(target)
	require.NoError(t, err)
	target.Path = "/changed"
	front := newUpstream(t, p.ServeHTTP)
	res, _ := get(t, front.Client(), front.URL+"/x")
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "/v1/x", (<-got).Path)
}

func TestCaptureLimit(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 10_000) // 100,000 bytes
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	tests := []struct {
		name string
		opts []tapproxy.Option
		keep int
	}{
		{name: "default keeps 64 KiB", keep: tapproxy.DefaultCaptureLimit},
		{name: "zero keeps none", opts: []tapproxy.Option{tapproxy.WithCaptureLimit(0)}, keep: 0},
		{name: "above the body keeps all", opts: []tapproxy.Option{tapproxy.WithCaptureLimit(1 << 20)}, keep: len(body)},
		{name: "last call wins", opts: []tapproxy.Option{tapproxy.WithCaptureLimit(5), tapproxy.WithCaptureLimit(10)}, keep: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			front := newFrontend(t, up.URL, append(tt.opts, tapproxy.WithObserver(rec))...)
			_, got := get(t, front.Client(), front.URL)
			require.Equal(t, body, got, "the client gets every byte whatever the limit")
			o := rec.next(t)
			assert.Equal(t, body[:tt.keep], o.Body)
			assert.EqualValues(t, len(body), o.BodyBytes)
			assert.Equal(t, tt.keep < len(body), o.Truncated)
			assert.NoError(t, o.Err)
		})
	}
}

func TestRequestCaptureLimit(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
	payload := strings.Repeat("x", 1000)
	tests := []struct {
		name string
		opts []tapproxy.Option
		keep int
	}{
		{name: "default captures nothing", keep: 0},
		{name: "limit keeps a prefix", opts: []tapproxy.Option{tapproxy.WithRequestCaptureLimit(100)}, keep: 100},
		{name: "limit above body keeps all", opts: []tapproxy.Option{tapproxy.WithRequestCaptureLimit(4096)}, keep: 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			front := newFrontend(t, up.URL, append(tt.opts, tapproxy.WithObserver(rec))...)
			res, err := front.Client().Post(front.URL, "text/plain", strings.NewReader(payload))
			require.NoError(t, err)
			res.Body.Close()
			o := rec.next(t)
			assert.Equal(t, payload[:tt.keep], string(o.ReqBody))
			assert.EqualValues(t, len(payload), o.ReqBodyBytes, "request bytes are counted whatever the limit")
			assert.Equal(t, tt.keep < len(payload), o.ReqTruncated)
		})
	}
}

// countingTransport counts the round trips it carries.
type countingTransport struct {
	mu sync.Mutex
	n  int
	rt http.RoundTripper
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.rt.RoundTrip(r)
}

func TestWithTransportLastWins(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	first, second := &countingTransport{rt: tapproxy.NewTransport()}, &countingTransport{rt: tapproxy.NewTransport()}
	t.Cleanup(func() {
		first.rt.(*http.Transport).CloseIdleConnections()
		second.rt.(*http.Transport).CloseIdleConnections()
	})
	front := newFrontend(t, up.URL, tapproxy.WithTransport(first), tapproxy.WithTransport(second))
	get(t, front.Client(), front.URL)
	assert.Equal(t, 0, first.n)
	assert.Equal(t, 1, second.n)
}

func TestWithErrorHandlerGetsClassifiedError(t *testing.T) {
	dead := closedAddr(t)
	rec := newRecorder()
	handled := make(chan error, 1)
	front := newFrontend(t, "http://"+dead,
		tapproxy.WithObserver(rec),
		tapproxy.WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
			handled <- err
			http.Error(w, "upstream down", http.StatusServiceUnavailable)
		}))
	res, body := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.Equal(t, "upstream down\n", string(body))
	assert.ErrorIs(t, <-handled, tapproxy.ErrUpstreamUnavailable)
	o := rec.next(t)
	assert.ErrorIs(t, o.Err, tapproxy.ErrUpstreamUnavailable)
	var op *net.OpError
	assert.ErrorAs(t, o.Err, &op, "the cause stays reachable")
	assert.Zero(t, o.Status, "no response arrived")
	assert.Zero(t, o.BodyBytes)
}

func TestWithModifyResponse(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "1")
		io.WriteString(w, "short")
	})
	t.Run("a new body keeps the framing correct", func(t *testing.T) {
		rec := newRecorder()
		long := strings.Repeat("much longer body ", 100)
		front := newFrontend(t, up.URL, tapproxy.WithObserver(rec),
			tapproxy.WithModifyResponse(func(res *http.Response) error {
				res.Body.Close()
				res.Body = io.NopCloser(strings.NewReader(long))
				res.Header.Del("X-Upstream")
				return nil
			}))
		res, body := get(t, front.Client(), front.URL)
		assert.Equal(t, long, string(body))
		assert.Empty(t, res.Header.Get("X-Upstream"))
		o := rec.next(t)
		assert.Equal(t, long, string(o.Body), "observers see what the client got")
		assert.NoError(t, o.Err)
	})
	t.Run("an error answers 502 and reaches the observer", func(t *testing.T) {
		rec := newRecorder()
		refuse := errors.New("refused by policy")
		front := newFrontend(t, up.URL, tapproxy.WithObserver(rec),
			tapproxy.WithModifyResponse(func(*http.Response) error { return refuse }))
		res, _ := get(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusBadGateway, res.StatusCode)
		o := rec.next(t)
		assert.ErrorIs(t, o.Err, refuse)
		assert.Equal(t, http.StatusOK, o.Status, "the upstream did answer")
	})
}

func TestWithLoggerGetsObserverPanics(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	var buf syncBuffer
	target := mustParse(t, up.URL)
	p, err := tapproxy.New(target,
		tapproxy.WithLogger(slog.New(slog.NewTextHandler(&buf, nil))),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) { panic("boom") })))
	require.NoError(t, err)
	front := newUpstream(t, p.ServeHTTP)
	res, _ := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Contains(t, buf.String(), "observer panicked")
	assert.Contains(t, buf.String(), "boom")
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// closedAddr returns a loopback address with nothing listening on it.
func closedAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	addr := l.Addr().String()
	require.NoError(tb, l.Close())
	return addr
}
