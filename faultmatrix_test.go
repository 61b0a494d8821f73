package tapproxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
	"go.uber.org/goleak"

	"github.com/tapproxy/tapproxy"
)

// The messages the fault matrix expects in the logs.
const (
	logUpstreamError = "tapproxy: upstream error"
	logObserverPanic = "tapproxy: observer panicked"
	// What httputil.ReverseProxy logs when the upstream body fails.
	logCopyError = "httputil: ReverseProxy read error during body copy"
)

// outcome is what the fault matrix expects of a number of exchanges: the
// kind their Err matches (nil: a clean exchange), and the error.type and
// status code attributes of the client-facing (server) and upstream (client)
// legs' request durations ("" and 0: the attribute is absent).
type outcome struct {
	n            int
	kind         error
	serverErr    string
	serverStatus int64
	clientErr    string
	clientStatus int64
}

func TestFaultMatrix(t *testing.T) {
	// Upstreams tell the rows' clients when a request reached them.
	arrived, uploadStarted := make(chan struct{}, 1), make(chan struct{}, 1)
	tests := []struct {
		name string
		// upstream starts what the faulty requests go to and returns its URL.
		upstream func(t *testing.T) string
		// opts adds options for the row; the env's observer comes last. A
		// row may add g, an observer that blocks until do releases it.
		opts func(t *testing.T, g *gate) []tapproxy.Option
		// do sends the faulty requests and checks what the client got.
		do   func(t *testing.T, env *faultEnv)
		want []outcome
		// logs counts the messages logged, by prefix.
		logs map[string]int
		// check makes the row's own further checks, after all the others.
		check func(t *testing.T, env *faultEnv)
	}{
		{
			name:     "upstream refuses the connection",
			upstream: func(t *testing.T) string { return "http://" + closedAddr(t) },
			do:       expectStatus(http.StatusBadGateway, ""),
			want:     []outcome{{n: 1, kind: tapproxy.ErrUpstreamUnavailable, serverErr: "upstream_unavailable", serverStatus: 502, clientErr: "upstream_unavailable"}},
			logs:     map[string]int{logUpstreamError: 1},
		},
		{
			name:     "dial timeout",
			upstream: func(t *testing.T) string { return "http://" + fullBacklogAddr(t) },
			opts: func(t *testing.T, g *gate) []tapproxy.Option {
				tr := tapproxy.NewTransport()
				tr.DialContext = (&net.Dialer{Timeout: 200 * time.Millisecond}).DialContext
				return []tapproxy.Option{tapproxy.WithTransport(tr)}
			},
			do:   expectStatus(http.StatusGatewayTimeout, ""),
			want: []outcome{{n: 1, kind: tapproxy.ErrUpstreamTimeout, serverErr: "upstream_timeout", serverStatus: 504, clientErr: "upstream_timeout"}},
			logs: map[string]int{logUpstreamError: 1},
		},
		{
			name: "response header timeout",
			upstream: func(t *testing.T) string {
				return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
					<-r.Context().Done() // until the proxy gives up
				}).URL
			},
			opts: func(t *testing.T, g *gate) []tapproxy.Option {
				tr := tapproxy.NewTransport()
				tr.ResponseHeaderTimeout = 100 * time.Millisecond
				return []tapproxy.Option{tapproxy.WithTransport(tr)}
			},
			do:   expectStatus(http.StatusGatewayTimeout, ""),
			want: []outcome{{n: 1, kind: tapproxy.ErrUpstreamTimeout, serverErr: "upstream_timeout", serverStatus: 504, clientErr: "upstream_timeout"}},
			logs: map[string]int{logUpstreamError: 1},
		},
		{
			name:     "upstream resets mid-body",
			upstream: func(t *testing.T) string { return newUpstream(t, resetMidBody).URL },
			// Flush at once, so that the client has the headers before the cut.
			opts: func(t *testing.T, g *gate) []tapproxy.Option {
				return []tapproxy.Option{tapproxy.WithFlushInterval(-1)}
			},
			do:   expectCut("12345"),
			want: []outcome{{n: 1, kind: tapproxy.ErrUpstreamReset, serverErr: "upstream_reset", serverStatus: 200, clientErr: "upstream_reset", clientStatus: 200}},
			logs: map[string]int{logCopyError: 1},
		},
		{
			name: "fewer bytes than Content-Length",
			upstream: func(t *testing.T) string {
				return newUpstream(t, rawResponse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345")).URL
			},
			opts: func(t *testing.T, g *gate) []tapproxy.Option {
				return []tapproxy.Option{tapproxy.WithFlushInterval(-1)}
			},
			do:   expectCut("12345"),
			want: []outcome{{n: 1, kind: tapproxy.ErrUpstreamReset, serverErr: "upstream_reset", serverStatus: 200, clientErr: "upstream_reset", clientStatus: 200}},
			logs: map[string]int{logCopyError: 1},
		},
		{
			// The client gets the declared body and no more: the rest is
			// not part of the response.
			name: "more bytes than Content-Length",
			upstream: func(t *testing.T) string {
				return newUpstream(t, rawResponse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n1234567890")).URL
			},
			do:   expectStatus(http.StatusOK, "12345"),
			want: []outcome{{n: 1, serverStatus: 200, clientStatus: 200}},
		},
		{
			name: "invalid response",
			upstream: func(t *testing.T) string {
				return newUpstream(t, rawResponse("garbage\r\n\r\n")).URL
			},
			do:   expectStatus(http.StatusBadGateway, ""),
			want: []outcome{{n: 1, kind: tapproxy.ErrUpstreamMalformed, serverErr: "upstream_malformed", serverStatus: 502, clientErr: "upstream_malformed"}},
			logs: map[string]int{logUpstreamError: 1},
		},
		{
			name: "client aborts before the headers",
			upstream: func(t *testing.T) string {
				return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
					arrived <- struct{}{}
					<-r.Context().Done() // until the proxy gives up
				}).URL
			},
			do: func(t *testing.T, env *faultEnv) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go func() {
					select {
					case <-arrived: // the request is upstream
					case <-ctx.Done():
					}
					cancel()
				}()
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, env.front+"/fault", nil)
				require.NoError(t, err)
				_, err = env.client.Do(req)
				require.ErrorIs(t, err, context.Canceled)
			},
			want: []outcome{{n: 1, kind: tapproxy.ErrClientGone, serverErr: "client_gone", clientErr: "client_gone"}},
		},
		{
			name: "client aborts mid-body",
			upstream: func(t *testing.T) string {
				return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "first")
					http.NewResponseController(w).Flush()
					<-r.Context().Done() // until the proxy gives up
				}).URL
			},
			do:   abortAfter("first"),
			want: []outcome{{n: 1, kind: tapproxy.ErrClientGone, serverErr: "client_gone", serverStatus: 200, clientErr: "client_gone", clientStatus: 200}},
		},
		{
			// The transport fails reading the request body, but the
			// failure is the client's leaving, not the upstream's.
			name: "client aborts mid-request-body",
			upstream: func(t *testing.T) string {
				return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
					buf := make([]byte, 5)
					if _, err := io.ReadFull(r.Body, buf); err == nil {
						uploadStarted <- struct{}{}
					}
					io.Copy(io.Discard, r.Body)
				}).URL
			},
			do: func(t *testing.T, env *faultEnv) {
				c, err := net.Dial("tcp", hostOf(env.front))
				require.NoError(t, err)
				defer c.Close()
				_, err = io.WriteString(c, "POST /fault HTTP/1.1\r\nHost: tapproxy.test\r\nContent-Length: 100\r\n\r\n12345")
				require.NoError(t, err)
				select {
				case <-uploadStarted:
				case <-time.After(waitTimeout):
					t.Fatal("the upload never reached the upstream")
				}
				require.NoError(t, c.Close())
			},
			want: []outcome{{n: 1, kind: tapproxy.ErrClientGone, serverErr: "client_gone", clientErr: "client_gone"}},
		},
		{
			name:     "an observer panics",
			upstream: func(t *testing.T) string { return newUpstream(t, hello).URL },
			opts: func(t *testing.T, g *gate) []tapproxy.Option {
				return []tapproxy.Option{tapproxy.WithObserver(panicOn("/fault"))}
			},
			do:   expectStatus(http.StatusOK, "hello"),
			want: []outcome{{n: 1, serverStatus: 200, clientStatus: 200}},
			logs: map[string]int{logObserverPanic: 1},
			check: func(t *testing.T, env *faultEnv) {
				assert.Equal(t, int64(1), counterValue(t, env.reader, "tapproxy.observer.panics"))
			},
		},
		{
			name:     "a slow synchronous observer",
			upstream: func(t *testing.T) string { return newUpstream(t, hello).URL },
			opts: func(t *testing.T, g *gate) []tapproxy.Option {
				return []tapproxy.Option{tapproxy.WithObserver(g)}
			},
			do: func(t *testing.T, env *faultEnv) {
				// The body has a declared length: the client has all of it
				// while the observer still holds the handler.
				expectStatus(http.StatusOK, "hello")(t, env)
				assert.Zero(t, env.calls.len())
				env.gate.release()
			},
			want: []outcome{{n: 1, serverStatus: 200, clientStatus: 200}},
		},
		{
			name: "a slow asynchronous observer",
			// A body of unknown length ends only when the handler returns.
			upstream: func(t *testing.T) string { return chunkedUpstream(t) },
			opts: func(t *testing.T, g *gate) []tapproxy.Option {
				return []tapproxy.Option{tapproxy.WithObserver(g), tapproxy.WithAsyncObservers(1, 8)}
			},
			do: func(t *testing.T, env *faultEnv) {
				// Both responses end, on one connection, while the
				// observer is still busy with the first.
				expectStatus(http.StatusOK, "part one, part two")(t, env)
				reused := false
				trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
				req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, env.front+"/fault", nil)
				require.NoError(t, err)
				res, err := env.client.Do(req)
				require.NoError(t, err)
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				require.NoError(t, err)
				assert.Equal(t, "part one, part two", string(body))
				assert.True(t, reused, "the second request went on the first one's connection")
				assert.Zero(t, env.calls.len())
				env.gate.release()
			},
			want: []outcome{{n: 2, serverStatus: 200, clientStatus: 200}},
		},
		{
			name:     "2,000 concurrent requests with mixed faults",
			upstream: func(t *testing.T) string { return newUpstream(t, mixedFaults).URL },
			opts: func(t *testing.T, g *gate) []tapproxy.Option {
				refused := closedAddr(t)
				return []tapproxy.Option{
					tapproxy.WithFlushInterval(-1),
					tapproxy.WithObserver(panicOn("/panic")),
					tapproxy.WithDirector(func(pr *httputil.ProxyRequest) {
						if pr.In.URL.Path == "/refused" {
							pr.Out.URL.Host = refused
						}
					}),
				}
			},
			do: concurrentMix(2000),
			want: []outcome{
				{n: mixCount(2000, "/ok") + mixCount(2000, "/panic"), serverStatus: 200, clientStatus: 200},
				{n: mixCount(2000, "/reset") + mixCount(2000, "/short"), kind: tapproxy.ErrUpstreamReset, serverErr: "upstream_reset", serverStatus: 200, clientErr: "upstream_reset", clientStatus: 200},
				{n: mixCount(2000, "/garbage"), kind: tapproxy.ErrUpstreamMalformed, serverErr: "upstream_malformed", serverStatus: 502, clientErr: "upstream_malformed"},
				{n: mixCount(2000, "/refused"), kind: tapproxy.ErrUpstreamUnavailable, serverErr: "upstream_unavailable", serverStatus: 502, clientErr: "upstream_unavailable"},
				{n: mixCount(2000, "/abort"), kind: tapproxy.ErrClientGone, serverErr: "client_gone", serverStatus: 200, clientErr: "client_gone", clientStatus: 200},
			},
			logs: map[string]int{
				logUpstreamError: mixCount(2000, "/garbage") + mixCount(2000, "/refused"),
				logCopyError:     mixCount(2000, "/reset") + mixCount(2000, "/short"),
				logObserverPanic: mixCount(2000, "/panic"),
			},
			check: func(t *testing.T, env *faultEnv) {
				assert.Equal(t, int64(mixCount(2000, "/panic")), counterValue(t, env.reader, "tapproxy.observer.panics"))
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Registered first, so that it runs after every other cleanup
			// has closed what the row opened.
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { verifyNoLeaks(t, ignore) })

			target := tt.upstream(t)
			g := newGate()
			var opts []tapproxy.Option
			if tt.opts != nil {
				opts = tt.opts(t, g)
			}
			env := newFaultEnv(t, target, opts...)
			env.gate = g
			t.Cleanup(g.release) // before the server closes, should the row fail first

			tt.do(t, env)
			total := 0
			for _, o := range tt.want {
				total += o.n
			}
			calls := env.calls.wait(t, total)

			// The proxy goes on serving.
			res, body := get(t, env.client, env.front+"/healthy")
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, "healthy", string(body))
			last := env.calls.wait(t, total+1)[total]
			assert.Equal(t, "/healthy", last.path)
			assert.NoError(t, last.err)

			// Exactly one call per request, of the expected kinds.
			wantKinds, gotKinds := map[string]int{}, map[string]int{}
			wantServer, wantClient := map[legKey]uint64{{status: 200}: 1}, map[legKey]uint64{{status: 200}: 1}
			for _, o := range tt.want {
				wantKinds[kindName(o.kind)] += o.n
				wantServer[legKey{o.serverErr, o.serverStatus}] += uint64(o.n)
				wantClient[legKey{o.clientErr, o.clientStatus}] += uint64(o.n)
			}
			for _, c := range calls {
				gotKinds[kindName(c.err)]++
			}
			assert.Equal(t, wantKinds, gotKinds, "observed kinds")

			// The metrics agree, error.type included.
			got := collect(t, env.reader)
			assert.Equal(t, wantServer, legCounts(got[httpconv.ServerRequestDuration{}.Name()]), "server request durations")
			assert.Equal(t, wantClient, legCounts(got[httpconv.ClientRequestDuration{}.Name()]), "client request durations")

			// Upstream failures are logged, and what ReverseProxy logs
			// reaches the logger; clients that left are not logged.
			assert.Equal(t, nonZero(tt.logs), env.logs.counts(logUpstreamError, logObserverPanic, logCopyError), "logs:\n%s", env.logs)

			if tt.check != nil {
				tt.check(t, env)
			}
			// Nothing is observed twice, even once every handler returned.
			env.srv.Close()
			assert.Equal(t, total+1, env.calls.len())
		})
	}
}

// faultEnv is one fault matrix row's proxy, served on loopback, with what
// it observed, logged and recorded. Requests for /healthy go to a healthy
// upstream, whatever the row's target.
type faultEnv struct {
	front  string
	srv    *httptest.Server
	client *http.Client
	calls  *callLog
	logs   *logRecorder
	reader *sdkmetric.ManualReader
	gate   *gate
}

func newFaultEnv(tb testing.TB, target string, opts ...tapproxy.Option) *faultEnv {
	tb.Helper()
	healthy := hostOf(newUpstream(tb, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "healthy")
	}).URL)
	mp, reader := newReader(tb)
	env := &faultEnv{calls: &callLog{}, logs: &logRecorder{}, reader: reader}
	all := []tapproxy.Option{
		tapproxy.WithLogger(slog.New(env.logs)),
		tapproxy.WithMeterProvider(mp),
		tapproxy.WithDirector(func(pr *httputil.ProxyRequest) {
			if pr.In.URL.Path == "/healthy" {
				pr.Out.URL.Host = healthy
			}
		}),
	}
	all = append(append(all, opts...), tapproxy.WithObserver(env.calls))
	p, err := tapproxy.New(mustParse(tb, target), all...)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, p.Close()) }) // after the server closed
	srv := httptest.NewUnstartedServer(p)
	srv.Config.ErrorLog = slog.NewLogLogger(testLogger(tb).Handler(), slog.LevelError)
	srv.Start()
	tb.Cleanup(srv.Close)
	env.srv, env.front, env.client = srv, srv.URL, srv.Client()
	return env
}

// gate is an observer that holds every call until released.
type gate struct {
	open chan struct{}
	once sync.Once
}

func (g *gate) ObserveResponse(context.Context, *tapproxy.Exchange) { <-g.open }

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

func newGate() *gate { return &gate{open: make(chan struct{})} }

// call is what a callLog keeps of one exchange.
type call struct {
	path, id string
	status   int
	err      error
}

// callLog is an observer that keeps every call.
type callLog struct {
	mu    sync.Mutex
	calls []call
}

func (l *callLog) ObserveResponse(ctx context.Context, ex *tapproxy.Exchange) {
	c := call{err: ex.Err}
	if ex.Request != nil {
		c.path, c.id = ex.Request.URL.Path, ex.Request.Header.Get("X-Request-Id")
	}
	if ex.Response != nil {
		c.status = ex.Response.StatusCode
	}
	l.mu.Lock()
	l.calls = append(l.calls, c)
	l.mu.Unlock()
}

func (l *callLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.calls)
}

// wait waits until at least n calls were made and returns them all.
func (l *callLog) wait(tb testing.TB, n int) []call {
	tb.Helper()
	require.Eventually(tb, func() bool { return l.len() >= n }, waitTimeout, 5*time.Millisecond,
		"want %d observer calls", n)
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]call(nil), l.calls...)
}

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%q", a.Key, a.Value.String())
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, b.String())
	h.mu.Unlock()
	return nil
}

func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// counts counts the records by which of prefixes their message starts
// with; others are counted under their whole text.
func (h *logRecorder) counts(prefixes ...string) map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	got := map[string]int{}
	for _, r := range h.recs {
		_, msg, _ := strings.Cut(r, " ")
		key := r
		for _, p := range prefixes {
			if strings.HasPrefix(msg, p) {
				key = p
			}
		}
		got[key]++
	}
	return got
}

func (h *logRecorder) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(h.recs, "\n")
}

func nonZero(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// legKey is a request duration data point's error.type and status code.
type legKey struct {
	errType string
	status  int64
}

// legCounts counts a request duration histogram's measurements by their
// error.type and status code.
func legCounts(m metricdata.Metrics) map[legKey]uint64 {
	got := map[legKey]uint64{}
	h, _ := m.Data.(metricdata.Histogram[float64])
	for _, dp := range h.DataPoints {
		var k legKey
		if v, ok := dp.Attributes.Value(semconv.ErrorTypeKey); ok {
			k.errType = v.AsString()
		}
		if v, ok := dp.Attributes.Value(semconv.HTTPResponseStatusCodeKey); ok {
			k.status = v.AsInt64()
		}
		got[k] += dp.Count
	}
	return got
}

// kindName names the kind err matches, "nil" for no error and "none" for
// an error of no kind.
func kindName(err error) string {
	if err == nil {
		return "nil"
	}
	for _, k := range []error{tapproxy.ErrUpstreamUnavailable, tapproxy.ErrUpstreamTimeout,
		tapproxy.ErrUpstreamReset, tapproxy.ErrUpstreamMalformed, tapproxy.ErrClientGone} {
		if errors.Is(err, k) {
			return k.Error()
		}
	}
	return "none"
}

// verifyNoLeaks waits, generously, for goroutines other than ignored ones
// to end, then reports those that did not.
func verifyNoLeaks(tb testing.TB, opts ...goleak.Option) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for goleak.Find(opts...) != nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	goleak.VerifyNone(tb, opts...)
}

func hello(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }

// resetMidBody declares ten bytes, sends five, then resets the connection.
func resetMidBody(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", "10")
	io.WriteString(w, "12345")
	rc := http.NewResponseController(w)
	rc.Flush()
	conn, _, err := rc.Hijack()
	if err != nil {
		return
	}
	conn.(*net.TCPConn).SetLinger(0) // RST, not FIN
	conn.Close()
}

// rawResponse returns a handler that writes raw to the connection, then
// closes it.
func rawResponse(raw string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, raw)
	}
}

// panicOn returns an observer that panics on requests for path.
func panicOn(path string) tapproxy.ResponseObserver {
	return tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
		if ex.Request.URL.Path == path {
			panic("observer bug")
		}
	})
}

// expectStatus returns a row's do: GET /fault answers code with body.
func expectStatus(code int, body string) func(*testing.T, *faultEnv) {
	return func(t *testing.T, env *faultEnv) {
		res, got := get(t, env.client, env.front+"/fault")
		assert.Equal(t, code, res.StatusCode)
		assert.Equal(t, body, string(got))
	}
}

// expectCut returns a row's do: GET /fault answers 200 and the client gets
// prefix, then an error instead of the end of the body.
func expectCut(prefix string) func(*testing.T, *faultEnv) {
	return func(t *testing.T, env *faultEnv) {
		res, err := env.client.Get(env.front + "/fault")
		require.NoError(t, err)
		defer res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode)
		got, err := io.ReadAll(res.Body)
		assert.Error(t, err, "the client sees the cut")
		assert.Equal(t, prefix, string(got))
	}
}

// abortAfter returns a row's do: GET /fault, read first, then leave.
func abortAfter(first string) func(*testing.T, *faultEnv) {
	return func(t *testing.T, env *faultEnv) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, env.front+"/fault", nil)
		require.NoError(t, err)
		res, err := env.client.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		buf := make([]byte, len(first))
		_, err = io.ReadFull(res.Body, buf)
		require.NoError(t, err)
		assert.Equal(t, first, string(buf))
		cancel()
	}
}

// mixPaths are the faults of the concurrent row, by path; request i asks
// for mixPaths[i%len(mixPaths)].
var mixPaths = []string{"/ok", "/reset", "/short", "/garbage", "/refused", "/abort", "/panic"}

// mixCount is how many of n requests ask for path.
func mixCount(n int, path string) int {
	c := 0
	for i := range n {
		if mixPaths[i%len(mixPaths)] == path {
			c++
		}
	}
	return c
}

// mixedFaults serves the concurrent row's upstream faults by path.
func mixedFaults(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body) // so that the kinds do not depend on the upload
	switch r.URL.Path {
	case "/reset":
		resetMidBody(w, r)
	case "/short":
		rawResponse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345")(w, r)
	case "/garbage":
		rawResponse("garbage\r\n\r\n")(w, r)
	case "/abort":
		io.WriteString(w, "first")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	default:
		io.WriteString(w, "ok")
	}
}

// concurrentMix returns a row's do: n requests at once over fresh
// connections, asking for the faults of mixPaths in turn, each checked for
// what its client got and for exactly one observer call of its kind.
func concurrentMix(n int) func(*testing.T, *faultEnv) {
	return func(t *testing.T, env *faultEnv) {
		// Fresh connections: a client never retries a request the proxy
		// already saw.
		tr := &http.Transport{DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()

		var (
			wg     sync.WaitGroup
			failed atomic.Int64
			start  = make(chan struct{})
		)
		for i := range n {
			path := mixPaths[i%len(mixPaths)]
			wg.Go(func() {
				<-start
				if err := mixRequest(ctx, client, env.front, path, i); err != nil {
					if failed.Add(1) <= 5 {
						t.Errorf("request %d for %s: %v", i, path, err)
					}
				}
			})
		}
		close(start)
		wg.Wait()
		require.Zero(t, failed.Load(), "requests that did not get what they should")

		wantKind := map[string]error{
			"/ok": nil, "/panic": nil, "/reset": tapproxy.ErrUpstreamReset, "/short": tapproxy.ErrUpstreamReset,
			"/garbage": tapproxy.ErrUpstreamMalformed, "/refused": tapproxy.ErrUpstreamUnavailable, "/abort": tapproxy.ErrClientGone,
		}
		seen := make([]int, n)
		for _, c := range env.calls.wait(t, n) {
			i, err := strconv.Atoi(c.id)
			require.NoError(t, err, "call without a request id")
			seen[i]++
			if want := wantKind[mixPaths[i%len(mixPaths)]]; kindName(c.err) != kindName(want) {
				t.Errorf("request %d for %s: Err %v, want kind %v", i, c.path, c.err, want)
			}
		}
		for i, s := range seen {
			if s != 1 {
				t.Errorf("request %d observed %d times", i, s)
			}
		}
	}
}

// mixRequest sends request i for path and checks what the client got.
func mixRequest(ctx context.Context, client *http.Client, front, path string, i int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, front+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Request-Id", strconv.Itoa(i))
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	want := map[string]int{"/garbage": 502, "/refused": 502}[path]
	if want == 0 {
		want = 200
	}
	if res.StatusCode != want {
		return fmt.Errorf("status %d, want %d", res.StatusCode, want)
	}
	if path == "/abort" {
		buf := make([]byte, len("first"))
		_, err := io.ReadFull(res.Body, buf)
		cancel()
		return err
	}
	body, err := io.ReadAll(res.Body)
	switch path {
	case "/reset", "/short":
		if err == nil || string(body) != "12345" {
			return fmt.Errorf("body %q, %v: want a cut after 12345", body, err)
		}
	case "/ok", "/panic":
		if err != nil || string(body) != "ok" {
			return fmt.Errorf("body %q, %v", body, err)
		}
	}
	return nil
}
