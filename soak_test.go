//go:build soak

package tapproxy_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tapproxy/tapproxy"
)

// The soak runs only with -tags soak:
//
//	go test -race -tags soak -run TestSoak -count=1 . -soak.duration=60s
var soakDuration = flag.Duration("soak.duration", 60*time.Second, "how long TestSoak sends requests")

// soakScenarios are what the soak's clients ask for, by path, with the kind
// each exchange's Err must match ("nil": a clean one).
var soakScenarios = []struct{ path, kind string }{
	{"/ok", "nil"},
	{"/big", "nil"},
	{"/panic", "nil"},
	{"/reset", tapproxy.ErrUpstreamReset.Error()},
	{"/short", tapproxy.ErrUpstreamReset.Error()},
	{"/garbage", tapproxy.ErrUpstreamMalformed.Error()},
	{"/refused", tapproxy.ErrUpstreamUnavailable.Error()},
	{"/stall", tapproxy.ErrUpstreamTimeout.Error()},
	{"/abort", tapproxy.ErrClientGone.Error()}, // mid-body
	{"/hang", tapproxy.ErrClientGone.Error()},  // before the headers
}

// soakBig is the /big body: larger than the capture limit.
var soakBig = strings.Repeat("0123456789abcdef", 16<<10)

// soakObserver counts calls and checks each exchange's kind against its
// scenario. It sleeps up to maxSleep per call, to be a slow observer.
type soakObserver struct {
	maxSleep   time.Duration
	calls      atomic.Int64
	mu         sync.Mutex
	kinds      map[string]int // calls by the kind of their Err
	mismatches []string
}

func (o *soakObserver) ObserveResponse(ctx context.Context, ex *tapproxy.Exchange) {
	o.calls.Add(1)
	o.mu.Lock()
	o.kinds[kindName(ex.Err)]++
	o.mu.Unlock()
	if o.maxSleep > 0 {
		time.Sleep(rand.N(o.maxSleep))
	}
	for _, s := range soakScenarios {
		if s.path != ex.Request.URL.Path {
			continue
		}
		if got := kindName(ex.Err); got != s.kind {
			o.mu.Lock()
			if len(o.mismatches) < 10 {
				o.mismatches = append(o.mismatches, fmt.Sprintf("%s %s: Err %v, want kind %s (body %d bytes, request body %d bytes, %v)",
					ex.Request.Method, s.path, ex.Err, s.kind, ex.BodyBytes, ex.RequestBodyBytes, ex.Duration))
			}
			o.mu.Unlock()
		}
	}
}

// soakProxy is one proxy under soak, with what it served and observed.
type soakProxy struct {
	name     string
	proxy    *tapproxy.Proxy
	srv      *httptest.Server
	client   *http.Client
	observer *soakObserver
	served   atomic.Int64 // requests that reached the proxy
	sent     atomic.Int64 // requests the clients sent
	dropped  func() int64
	logs     *logCounter
}

// logCounter is a slog.Handler that counts records by message: the soak
// logs too much to keep.
type logCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }

func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	if p, rest, ok := strings.Cut(msg, ": "); ok {
		// Up to the error's text: "httputil: ReverseProxy read error during body copy".
		what, _, _ := strings.Cut(rest, ": ")
		msg = p + ": " + what
	}
	h.mu.Lock()
	h.n[msg]++
	h.mu.Unlock()
	return nil
}

func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCounter) WithGroup(string) slog.Handler      { return h }

func TestSoak(t *testing.T) {
	require.Positive(t, *soakDuration)
	ignore := goleak.IgnoreCurrent()
	baseGoroutines := runtime.NumGoroutine()
	baseHeap := heapInuse()

	soakRun(t)

	// Everything is closed: goroutines and heap return to where they were.
	verifyNoLeaks(t, ignore)
	heap := heapInuse()
	t.Logf("goroutines: %d before, %d after", baseGoroutines, runtime.NumGoroutine())
	t.Logf("heap in use: %.1f MiB before, %.1f MiB after", mib(baseHeap), mib(heap))
	// Generous: the runtime and the test's own records keep some (about
	// 2 MiB in a minute's run), but a leak of exchanges, their captures or
	// connections over this many requests would be far larger.
	assert.Less(t, heap, baseHeap+16<<20, "heap in use grew by %.1f MiB", mib(heap-baseHeap))
}

// soakRun runs the soak and checks what was observed and logged. It closes
// everything it opened and keeps nothing.
func soakRun(t *testing.T) {
	refused := closedAddr(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the kinds do not depend on the upload
		switch r.URL.Path {
		case "/big":
			io.WriteString(w, soakBig)
		case "/stall", "/hang":
			<-r.Context().Done() // until the proxy gives up
		default:
			mixedFaults(w, r)
		}
	}))
	defer up.Close()

	newProxy := func(name string, o *soakObserver, opts ...tapproxy.Option) *soakProxy {
		tr := tapproxy.NewTransport()
		// For /stall; far longer than /hang takes to leave (at most 20 ms),
		// however loaded the machine, so that the two never mix.
		tr.ResponseHeaderTimeout = time.Second
		mp, reader := newReader(t)
		sp := &soakProxy{name: name, observer: o, logs: &logCounter{n: map[string]int{}}}
		opts = append([]tapproxy.Option{
			tapproxy.WithLogger(slog.New(sp.logs)),
			tapproxy.WithTransport(tr),
			tapproxy.WithMeterProvider(mp),
			tapproxy.WithFlushInterval(-1),
			tapproxy.WithCaptureLimit(32 << 10),
			tapproxy.WithRequestCaptureLimit(1 << 10),
			tapproxy.WithObserver(panicOn("/panic"), o),
			tapproxy.WithDirector(func(pr *httputil.ProxyRequest) {
				if pr.In.URL.Path == "/refused" {
					pr.Out.URL.Host = refused
				}
			}),
		}, opts...)
		p, err := tapproxy.New(mustParse(t, up.URL), opts...)
		require.NoError(t, err)
		sp.proxy = p
		sp.dropped = func() int64 { return counterValue(t, reader, "tapproxy.observer.dropped") }
		sp.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sp.served.Add(1)
			p.ServeHTTP(w, r)
		}))
		sp.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		sp.srv.Start()
		sp.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
		return sp
	}
	proxies := []*soakProxy{
		newProxy("sync", &soakObserver{maxSleep: 2 * time.Millisecond, kinds: map[string]int{}}),
		// Small and slow: the queue fills and drops.
		newProxy("async", &soakObserver{maxSleep: 20 * time.Millisecond, kinds: map[string]int{}}, tapproxy.WithAsyncObservers(1, 4)),
	}

	ctx, cancel := context.WithTimeout(context.Background(), *soakDuration)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 0))
			for ctx.Err() == nil {
				p := proxies[rng.IntN(len(proxies))]
				s := soakScenarios[rng.IntN(len(soakScenarios))]
				p.sent.Add(1)
				soakRequest(p, s.path, rng)
			}
		})
	}
	wg.Wait()

	for _, p := range proxies {
		// The proxy still serves.
		res, body := get(t, p.client, p.srv.URL+"/ok")
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, "ok", string(body))
		p.sent.Add(1)

		p.srv.Close() // waits for every handler
		require.NoError(t, p.proxy.Close())
		p.client.CloseIdleConnections()

		calls, dropped, served := p.observer.calls.Load(), p.dropped(), p.served.Load()
		assert.Positive(t, served, "%s served nothing", p.name)
		t.Logf("%s: %d requests sent, %d served, %d observed, %d dropped; logged %v", p.name, p.sent.Load(), served, calls, dropped, p.logs.n)
		assert.Equal(t, served, calls+dropped, "%s: every exchange observed once or counted as dropped", p.name)
		if p.name == "sync" {
			// Every exchange was observed: the logs can be checked
			// against them. A client that left is not logged.
			k := p.observer.kinds
			assert.Zero(t, dropped)
			assert.Equal(t, map[string]int{
				logUpstreamError: k[tapproxy.ErrUpstreamUnavailable.Error()] + k[tapproxy.ErrUpstreamTimeout.Error()] + k[tapproxy.ErrUpstreamMalformed.Error()],
				logCopyError:     k[tapproxy.ErrUpstreamReset.Error()],
				logObserverPanic: p.logs.n[logObserverPanic],
			}, p.logs.n, "sync: logs, given the kinds %v", k)
		}
		assert.Empty(t, p.observer.mismatches, "%s: exchanges of the wrong kind", p.name)
	}
}

// soakRequest sends one request for path through p, leaving early for
// the client-abort scenarios. Outcomes are checked by the observers.
func soakRequest(p *soakProxy, path string, rng *rand.Rand) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if path == "/hang" {
		// Leave before the headers, at some point of the exchange.
		time.AfterFunc(time.Duration(rng.IntN(20))*time.Millisecond, cancel)
	}
	method, body := http.MethodGet, io.Reader(nil)
	if rng.IntN(4) == 0 {
		method, body = http.MethodPost, strings.NewReader(soakBig[:rng.IntN(4<<10)])
	}
	req, err := http.NewRequestWithContext(ctx, method, p.srv.URL+path, body)
	if err != nil {
		panic(err)
	}
	res, err := p.client.Do(req)
	if err != nil {
		return
	}
	defer res.Body.Close()
	if path == "/abort" {
		io.ReadFull(res.Body, make([]byte, len("first")))
		cancel()
		return
	}
	io.Copy(io.Discard, res.Body)
}

// heapInuse returns the bytes of heap in use after a full collection.
func heapInuse() uint64 {
	var ms runtime.MemStats
	for range 3 { // sync.Pool items survive one collection
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
