package tapproxy_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tapproxy/tapproxy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait in these tests. It is generous: tests
// assert order and outcome, never speed.
const waitTimeout = 10 * time.Second

// newUpstream starts a fake upstream on loopback.
func newUpstream(tb testing.TB, h http.HandlerFunc) *httptest.Server {
	tb.Helper()
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return srv
}

// newH2Upstream starts a fake upstream on loopback that speaks HTTP/2 over
// TLS. Reach it with a transport from trustingTransport.
func newH2Upstream(tb testing.TB, h http.HandlerFunc) *httptest.Server {
	tb.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = slog.NewLogLogger(testLogger(tb).Handler(), slog.LevelError)
	srv.StartTLS()
	tb.Cleanup(srv.Close)
	return srv
}

// trustingTransport returns a proxy transport from [tapproxy.NewTransport]
// that trusts srv's test certificate.
func trustingTransport(tb testing.TB, srv *httptest.Server) *http.Transport {
	tb.Helper()
	tr := tapproxy.NewTransport()
	tr.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tb.Cleanup(tr.CloseIdleConnections)
	return tr
}

// newProxy builds a Proxy to upstream whose logs go to tb.Log.
func newProxy(tb testing.TB, upstream string, opts ...tapproxy.Option) *tapproxy.Proxy {
	tb.Helper()
	target, err := url.Parse(upstream)
	require.NoError(tb, err)
	opts = append([]tapproxy.Option{tapproxy.WithLogger(testLogger(tb))}, opts...)
	p, err := tapproxy.New(target, opts...)
	require.NoError(tb, err)
	return p
}

// newFrontend builds a Proxy to upstream and serves it on loopback over
// HTTP/1.1. Its logs go to tb.Log.
func newFrontend(tb testing.TB, upstream string, opts ...tapproxy.Option) *httptest.Server {
	tb.Helper()
	return serve(tb, newProxy(tb, upstream, opts...), false)
}

// newH2Frontend is newFrontend over TLS with HTTP/2; its Client speaks
// HTTP/2.
func newH2Frontend(tb testing.TB, upstream string, opts ...tapproxy.Option) *httptest.Server {
	tb.Helper()
	return serve(tb, newProxy(tb, upstream, opts...), true)
}

// serve serves h on loopback: over plain HTTP/1.1, or with h2 over TLS with
// HTTP/2 enabled.
func serve(tb testing.TB, h http.Handler, h2 bool) *httptest.Server {
	tb.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = slog.NewLogLogger(testLogger(tb).Handler(), slog.LevelError)
	if h2 {
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv.Start()
	}
	tb.Cleanup(srv.Close)
	return srv
}

// testLogger routes logs to tb.Log.
func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, nil))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(p))
	return len(p), nil
}

// observed is what a recorder keeps of one exchange: copies, since the
// Exchange is valid only during the call.
type observed struct {
	Method, Path   string
	OutHeader      http.Header
	Status         int
	HasResponse    bool
	ProtoMajor     int
	Trailer        http.Header
	Header         http.Header
	Body, ReqBody  []byte
	BodyBytes      int64
	ReqBodyBytes   int64
	Truncated      bool
	ReqTruncated   bool
	CaptureSkipped bool
	Upgraded       bool
	Err            error
	Start          time.Time
	TimeToHeaders  time.Duration
	Duration       time.Duration
	CtxErr         error
}

// recorder is an observer that keeps copies of what it saw.
type recorder struct {
	mu  sync.Mutex
	all []observed
	ch  chan observed
}

func newRecorder() *recorder { return &recorder{ch: make(chan observed, 1024)} }

func (r *recorder) ObserveResponse(ctx context.Context, ex *tapproxy.Exchange) {
	o := observed{
		Method:         ex.Request.Method,
		Path:           ex.Request.URL.Path,
		OutHeader:      ex.Request.Header.Clone(),
		BodyBytes:      ex.BodyBytes,
		ReqBodyBytes:   ex.RequestBodyBytes,
		Truncated:      ex.Truncated,
		ReqTruncated:   ex.RequestTruncated,
		CaptureSkipped: ex.CaptureSkipped,
		Upgraded:       ex.Upgraded,
		Err:            ex.Err,
		Start:          ex.Start,
		TimeToHeaders:  ex.TimeToHeaders,
		Duration:       ex.Duration,
		CtxErr:         ctx.Err(),
	}
	o.Body, _ = io.ReadAll(ex.Body())
	o.ReqBody, _ = io.ReadAll(ex.RequestBody())
	if ex.Response != nil {
		o.HasResponse = true
		o.Status = ex.Response.StatusCode
		o.ProtoMajor = ex.Response.ProtoMajor
		o.Header = ex.Response.Header.Clone()
		o.Trailer = ex.Response.Trailer.Clone()
	}
	r.mu.Lock()
	r.all = append(r.all, o)
	r.mu.Unlock()
	r.ch <- o
}

// next waits for the next observed exchange.
func (r *recorder) next(tb testing.TB) observed {
	tb.Helper()
	select {
	case o := <-r.ch:
		return o
	case <-time.After(waitTimeout):
		tb.Fatal("no exchange observed")
		return observed{}
	}
}

// count reports how many exchanges were observed so far.
func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.all)
}

// closeAndCount closes front, which waits for its handlers to return, and
// then reports how many exchanges r observed: the count is final.
func closeAndCount(tb testing.TB, front *httptest.Server, r *recorder) int {
	tb.Helper()
	front.Close()
	return r.count()
}

// get sends a GET through c and returns the response with its body read.
func get(tb testing.TB, c *http.Client, u string) (*http.Response, []byte) {
	tb.Helper()
	res, err := c.Get(u)
	require.NoError(tb, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(tb, err)
	return res, body
}

func hostOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(err)
	}
	return u.Host
}

func mustParse(tb testing.TB, rawURL string) *url.URL {
	tb.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(tb, err)
	return u
}
