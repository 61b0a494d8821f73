package tapproxytest

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/tapproxy/tapproxy"
)

// TB is the part of [testing.TB] that a [Server] uses: *testing.T,
// *testing.B, *testing.F and any testing.TB satisfy it, and so do the
// handles of other test frameworks, such as Ginkgo's GinkgoT(). Errorf
// reports what fails a test without stopping it, such as a [Recorder.Expect]
// that did not hold; Fatalf reports bad options.
type TB interface {
	Helper()
	Cleanup(func())
	Log(args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Name() string
	Failed() bool
}

// DefaultBodyLimit is how many bytes of each request and response body a
// [Server] records when [WithBodyLimit] is not given.
const DefaultBodyLimit = 1 << 20

// An Option configures a [Server]. Options are applied in the order given;
// each option's documentation says what repeating it does.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	faults       []Fault
	maxExchanges int
	bodyLimit    int64
	transport    http.RoundTripper
	proxyOpts    []tapproxy.Option
	seed         int64
	seeded       bool
	tls, http2   bool
	cassette     *cassetteConfig

	harDir         string // written to when the test fails, if set
	harCredentials bool   // keep credentials in HAR files
}

// WithFaults adds faults to inject (see [Fault]). Repeated use accumulates:
// WithFaults(a) + WithFaults(b, c) == WithFaults(a, b, c). By default there
// are none. An invalid fault, such as Delay(-1), fails the test.
func WithFaults(f ...Fault) Option {
	return optionFunc(func(c *config) { c.faults = append(c.faults, f...) })
}

// WithMaxExchanges sets how many exchanges the recorder keeps; older ones are
// dropped. The default is [DefaultMaxExchanges]. A value below 1 fails the
// test. The last call wins.
func WithMaxExchanges(n int) Option {
	return optionFunc(func(c *config) { c.maxExchanges = n })
}

// WithBodyLimit sets how many bytes of each request body and each response
// body are recorded; the rest is relayed and only counted. The default is
// [DefaultBodyLimit] (1 MiB). Zero records no body bytes. A negative value
// fails the test. The last call wins.
func WithBodyLimit(n int64) Option {
	return optionFunc(func(c *config) { c.bodyLimit = n })
}

// WithTransport sets the round tripper that reaches the upstream; faults are
// injected around it. The default is a transport from
// [tapproxy.NewTransport], whose idle connections are closed with the
// server. Use it, for example, to trust an upstream's test certificate. Nil
// keeps the default. The last call wins.
func WithTransport(rt http.RoundTripper) Option {
	return optionFunc(func(c *config) {
		if rt != nil {
			c.transport = rt
		}
	})
}

// WithProxyOptions adds options for the underlying [tapproxy.Proxy], such as
// directors or more observers. They are applied after the server's own, so
// they win where they conflict: the server sets [tapproxy.WithFlushInterval]
// to -1 (flush after every write, so that clients see injected faults at
// once), the capture limits to the body limit, and its own logger and
// transport. Giving [tapproxy.WithTransport] here bypasses the faults and
// any cassette; use [WithTransport] instead. Giving [tapproxy.WithErrorHandler] replaces the
// server's own, which carries out the faults that break connections (see
// [CloseConnection]). Repeated use accumulates. Nils are skipped.
//
// Unlike a plain proxy, a Server records credential headers
// (Authorization, Cookie, Set-Cookie) as they were sent, with
// [tapproxy.WithUnredactedCredentials], so that tests can assert them.
func WithProxyOptions(opts ...tapproxy.Option) Option {
	return optionFunc(func(c *config) { c.proxyOpts = append(c.proxyOpts, opts...) })
}

// A Server is a [tapproxy.Proxy] on a loopback address, in front of an
// upstream, that records every exchange and injects faults. The code under
// test talks to URL instead of the upstream. It closes itself when the test
// ends, and logs to the test's log.
type Server struct {
	// URL is the base URL of the proxy, as http://127.0.0.1:port with no
	// trailing slash.
	URL string

	// UpstreamURL is the base URL of the upstream the proxy forwards to.
	UpstreamURL string

	// Recorder holds the exchanges the proxy relayed.
	Recorder *Recorder

	tb        TB
	proxy     *tapproxy.Proxy
	front     *httptest.Server
	upstream  *httptest.Server // nil for a real upstream
	transport http.RoundTripper
	faults    atomic.Pointer[[]*armedFault]
	seed      int64
	faultGen  atomic.Uint64 // bumped by SetFaults, for fresh random sources
	done      chan struct{}
	cassette  *cassette // nil without WithCassette
	closeOnce sync.Once
	closed    atomic.Bool
}

// NewServer starts a fake upstream that serves with upstream, and a proxy in
// front of it, both on loopback. Both close when the test ends (through
// tb.Cleanup). Bad options fail the test through tb.Fatalf.
func NewServer(tb TB, upstream http.Handler, opts ...Option) *Server {
	tb.Helper()
	if upstream == nil {
		tb.Fatalf("tapproxytest: NewServer: nil upstream handler")
		return nil
	}
	s := &Server{tb: tb}
	s.upstream = httptest.NewUnstartedServer(upstream)
	s.upstream.Config.ErrorLog = slog.NewLogLogger(s.logger().Handler(), slog.LevelError)
	s.upstream.Start()
	return s.start(s.upstream.URL, opts)
}

// NewServerURL starts a proxy on loopback in front of the upstream at
// target, such as a real service, and closes it when the test ends (through
// tb.Cleanup). The proxy joins each request's path to target's path. A bad
// target or bad options fail the test through tb.Fatalf.
func NewServerURL(tb TB, target string, opts ...Option) *Server {
	tb.Helper()
	s := &Server{tb: tb}
	return s.start(target, opts)
}

func (s *Server) start(target string, opts []Option) *Server {
	s.tb.Helper()
	c := &config{maxExchanges: DefaultMaxExchanges, bodyLimit: DefaultBodyLimit}
	for _, o := range opts {
		if o != nil {
			o.apply(c)
		}
	}
	fail := func(format string, args ...any) *Server {
		s.tb.Helper()
		if s.upstream != nil {
			s.upstream.Close()
		}
		s.tb.Fatalf(format, args...)
		return nil
	}
	if c.maxExchanges < 1 {
		return fail("tapproxytest: WithMaxExchanges(%d): must be at least 1", c.maxExchanges)
	}
	u, err := url.Parse(target)
	if err != nil {
		return fail("tapproxytest: upstream URL: %v", err)
	}
	s.seed = c.seed
	if !c.seeded {
		s.seed = rand.Int64()
	}
	faults, err := arm(c.faults, s.seed, 0)
	if err != nil {
		return fail("%v", err)
	}
	s.faults.Store(&faults)
	if !c.seeded {
		s.logSeed(faults)
	}

	s.done = make(chan struct{})
	s.Recorder = newRecorder(c.maxExchanges)
	s.Recorder.harCredentials = c.harCredentials
	s.transport = c.transport
	if s.transport == nil {
		s.transport = tapproxy.NewTransport()
	}
	// The cassette sits below the faults, so that it records what the
	// upstream said, and faults apply to what it replays.
	below := s.transport
	if c.cassette != nil {
		cs, err := newCassette(c.cassette, c.bodyLimit, s.upstream != nil, s.transport, s.done)
		if err != nil {
			return fail("%v", err)
		}
		s.cassette, below = cs, cs
	}
	popts := append([]tapproxy.Option{
		tapproxy.WithLogger(s.logger()),
		tapproxy.WithFlushInterval(-1),
		tapproxy.WithCaptureLimit(c.bodyLimit),
		tapproxy.WithRequestCaptureLimit(c.bodyLimit),
		// Tests assert what was sent, credentials included.
		tapproxy.WithUnredactedCredentials(),
		tapproxy.WithTransport(&faultTransport{next: below, done: s.done, rec: s.Recorder}),
		tapproxy.WithDirector(s.faultDirector),
		tapproxy.WithErrorHandler(s.onError),
		tapproxy.WithObserver(tapproxy.ObserverFunc(s.Recorder.observe)),
	}, c.proxyOpts...)
	p, err := tapproxy.New(u, popts...)
	if err != nil {
		return fail("tapproxytest: %v", err)
	}
	s.proxy = p

	s.front = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Number the request as it arrives; the proxy's hooks and the
		// recorder find its tag in the context.
		t := s.Recorder.arrive()
		ctx := context.WithValue(r.Context(), tagKey{}, t)
		p.ServeHTTP(w, r.WithContext(ctx))
		if t.abort {
			// A connection fault on a connection that cannot be
			// taken over: reset the stream.
			panic(http.ErrAbortHandler)
		}
	}))
	s.front.Config.ErrorLog = slog.NewLogLogger(s.logger().Handler(), slog.LevelError)
	s.front.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		// A ResetAfter fault resets the connection it finds here.
		return context.WithValue(ctx, connKey{}, c)
	}
	s.startFront(c)
	s.URL = s.front.URL
	s.UpstreamURL = u.String()
	if dir := c.harDir; dir != "" {
		// Cleanups run last first: this one after Close, once every
		// exchange has been recorded.
		s.tb.Cleanup(func() { s.writeHAROnFailure(dir) })
	}
	s.tb.Cleanup(s.Close)
	return s
}

// Client returns an HTTP client for the proxy, whose idle connections are
// closed with the server; with [WithTLS] it trusts the front's certificate,
// and with [WithHTTP2] it speaks HTTP/2. It has no timeout; set one on a
// copy, or use request contexts, to test how code under test gives up.
func (s *Server) Client() *http.Client { return s.front.Client() }

// SetFaults replaces the faults the server injects, for the requests that
// arrive from now on; counting matchers start counting afresh. An invalid
// fault fails the test through tb.Fatalf, leaving the faults as they were.
func (s *Server) SetFaults(f ...Fault) {
	s.tb.Helper()
	faults, err := arm(f, s.seed, s.faultGen.Add(1))
	if err != nil {
		s.tb.Fatalf("%v", err)
		return
	}
	s.faults.Store(&faults)
}

// logSeed logs the random seed when some fault makes random choices, so
// that a failing run can be repeated with WithSeed.
func (s *Server) logSeed(faults []*armedFault) {
	for _, a := range faults {
		if a.random() {
			s.tb.Log("tapproxytest: random faults use seed " + strconv.FormatInt(s.seed, 10) +
				"; WithSeed(" + strconv.FormatInt(s.seed, 10) + ") repeats them")
			return
		}
	}
}

// Close releases requests held by faults, shuts the proxy down and waits for
// its requests to finish, then shuts down the fake upstream, if any. With
// [WithCassette] it then writes the cassette, and reports through the TB's
// Errorf what kept exchanges from being replayed or recorded, such as
// misses. It is called when the test ends; calling it again does nothing.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.front.Close()
		s.proxy.Close() // drains asynchronous observers, if any were asked for
		if t, ok := s.transport.(interface{ CloseIdleConnections() }); ok {
			t.CloseIdleConnections()
		}
		if s.upstream != nil {
			s.upstream.Close()
		}
		if s.cassette != nil {
			s.cassette.finish(s.tb)
		}
		s.closed.Store(true)
	})
}

// tag is what the server knows of one request across the proxy's hooks:
// its number in the recording and the faults chosen for it.
type tag struct {
	seq, gen  int
	plan      *plan // set by the fault director
	replayErr error // set by a cassette that had no entry for the request
	abort     bool  // set by a connection fault that could not take the connection over
}

type tagKey struct{}

func tagFrom(ctx context.Context) *tag {
	t, _ := ctx.Value(tagKey{}).(*tag)
	return t
}

// logger logs to the test's log until the server has closed; after that a
// late line could outlive the test, so it is dropped.
func (s *Server) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{s}, nil))
}

type tbWriter struct{ s *Server }

func (w tbWriter) Write(p []byte) (int, error) {
	if !w.s.closed.Load() {
		w.s.tb.Log(string(p))
	}
	return len(p), nil
}
