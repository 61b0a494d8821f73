package tapproxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/tapproxy/tapproxy"
)

// attempt is what an attemptLog keeps of one exchange.
type attempt struct {
	Attempts int
	Upstream string // host:port, "" when none was tried
	Host     string // of the final attempt's request
	URLHost  string // of the final attempt's request URL
	Err      error
	Status   int
	ReqBytes int64
	ReqBody  []byte
}

// attemptLog is an observer that keeps each exchange's route.
type attemptLog struct {
	mu  sync.Mutex
	all []attempt
	ch  chan attempt
}

func newAttemptLog() *attemptLog { return &attemptLog{ch: make(chan attempt, 4096)} }

func (l *attemptLog) ObserveResponse(_ context.Context, ex *tapproxy.Exchange) {
	a := attempt{Attempts: ex.Attempts, Host: ex.Request.Host, URLHost: ex.Request.URL.Host, Err: ex.Err, ReqBytes: ex.RequestBodyBytes}
	if ex.Upstream != nil {
		a.Upstream = ex.Upstream.Host
	}
	if ex.Response != nil {
		a.Status = ex.Response.StatusCode
	}
	a.ReqBody, _ = io.ReadAll(ex.RequestBody())
	l.mu.Lock()
	l.all = append(l.all, a)
	l.mu.Unlock()
	l.ch <- a
}

func (l *attemptLog) next(tb testing.TB) attempt {
	tb.Helper()
	select {
	case a := <-l.ch:
		return a
	case <-time.After(waitTimeout):
		tb.Fatal("no exchange observed")
		return attempt{}
	}
}

func (l *attemptLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.all)
}

func (l *attemptLog) snapshot() []attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]attempt(nil), l.all...)
}

// resetConn breaks the connection under w with a RST.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	conn.(*net.TCPConn).SetLinger(0)
	conn.Close()
}

// send sends method to u with body, of declared length unless chunked, and
// header pairs; it returns the response with its body read.
func send(tb testing.TB, c *http.Client, method, u string, body []byte, chunked bool, header ...string) (*http.Response, []byte) {
	tb.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
		if chunked {
			r = io.MultiReader(r) // of no known length
		}
	}
	req, err := http.NewRequest(method, u, r)
	require.NoError(tb, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	require.NoError(tb, err)
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	require.NoError(tb, err)
	return res, got
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.IntN(256))
	}
	return b
}

func TestDeadUpstreamUnderLoad(t *testing.T) {
	const requests, workers, failures = 2000, 32, 5
	f := newFleet(t, 2, nil)
	dead := deadURL(t)
	mp, reader := newReader(t)
	log := newAttemptLog()
	p := newBalanced(t, []*url.URL{f.urls(t)[0], dead, f.urls(t)[1]},
		tapproxy.WithMeterProvider(mp), tapproxy.WithObserver(log))
	front := serve(t, p, false)

	var (
		next, failed atomic.Int64
		wg           sync.WaitGroup
	)
	c := front.Client()
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= requests {
				res, err := c.Get(front.URL)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	assert.Zero(t, failed.Load(), "clients saw failures")
	assert.EqualValues(t, requests, f.hits[0].Load()+f.hits[1].Load(), "the dead upstream's share moved")

	s := statusOf(t, p, dead)
	assert.False(t, s.Healthy, "ejected")
	assert.False(t, s.EjectedUntil.IsZero())

	got := collect(t, reader)
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, dead, attribute.String("tapproxy.ejection.reason", "passive"))): 1,
	}, sumPoints(got["tapproxy.upstream.ejections"]))
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, f.urls(t)[0])): 1,
		key(upAttrs(t, dead)):         0,
		key(upAttrs(t, f.urls(t)[1])): 1,
	}, sumPoints(got["tapproxy.upstream.healthy"]))
	dials := sumPoints(got["tapproxy.retries"])[key(upAttrs(t, dead, attribute.String("tapproxy.retry.reason", "dial")))]
	// It took Failures failed dials to eject it; only the requests already
	// under way could still pick it.
	assert.GreaterOrEqual(t, dials, int64(failures))
	assert.LessOrEqual(t, dials, int64(failures+2*workers))

	front.Close()
	all := log.snapshot()
	require.Len(t, all, requests, "one observer call per request")
	retried := 0
	for _, a := range all {
		require.NoError(t, a.Err)
		require.NotEqual(t, dead.Host, a.Upstream)
		retried += a.Attempts - 1
	}
	assert.EqualValues(t, dials, retried)
}

func TestPOSTRetriedOnDialFailure(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		chunked bool
		opts    []tapproxy.Option
	}{
		{"below BodyLimit, by default", 10 << 10, false, nil},
		{"below BodyLimit, chunked", 10 << 10, true, nil},
		{"above BodyLimit", 100 << 10, false, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{BodyLimit: 1 << 10})}},
		{"above BodyLimit, chunked", 100 << 10, true, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{BodyLimit: 1 << 10})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got atomic.Value
			f := newFleet(t, 1, func(_ int, w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got.Store(b)
			})
			dead := deadURL(t)
			log := newAttemptLog()
			mp, reader := newReader(t)
			opts := append([]tapproxy.Option{tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
				tapproxy.WithMeterProvider(mp), tapproxy.WithRequestCaptureLimit(1 << 20)}, tt.opts...)
			p := newBalanced(t, []*url.URL{dead, f.urls(t)[0]}, opts...)
			front := serve(t, p, false)
			body := randomBytes(tt.size)
			res, _ := send(t, front.Client(), http.MethodPost, front.URL, body, tt.chunked)
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, body, got.Load(), "the body arrives byte for byte")
			a := log.next(t)
			assert.Equal(t, 2, a.Attempts)
			assert.Equal(t, f.urls(t)[0].Host, a.Upstream)
			assert.EqualValues(t, tt.size, a.ReqBytes, "counted once")
			assert.Equal(t, body, a.ReqBody, "captured once")
			m := waitRecorded(t, reader, 1)
			assert.Equal(t, map[attribute.Distinct]int64{
				key(upAttrs(t, dead, attribute.String("tapproxy.retry.reason", "dial"))): 1,
			}, sumPoints(m["tapproxy.retries"]))
		})
	}
}

func TestRetryAfterReset(t *testing.T) {
	tests := []struct {
		name        string
		method      string
		header      []string
		opts        []tapproxy.Option
		wantRetried bool
	}{
		{"POST", http.MethodPost, nil, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{})}, false},
		{"POST with Idempotency-Key", http.MethodPost, []string{"Idempotency-Key", "k1"}, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{})}, true},
		{"PUT", http.MethodPut, nil, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{})}, true},
		{"GET", http.MethodGet, nil, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{})}, true},
		{"DELETE", http.MethodDelete, nil, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{})}, true},
		{"PATCH", http.MethodPatch, nil, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{})}, false},
		{"GET without WithRetry", http.MethodGet, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got atomic.Value
			f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body) // the upstream has read the body
				if i == 0 {
					resetConn(w)
					return
				}
				got.Store(b)
			})
			log := newAttemptLog()
			mp, reader := newReader(t)
			opts := append([]tapproxy.Option{tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
				tapproxy.WithMeterProvider(mp)}, tt.opts...)
			p := newBalanced(t, f.urls(t), opts...)
			front := serve(t, p, false)
			var body []byte
			if tt.method != http.MethodGet && tt.method != http.MethodDelete {
				body = randomBytes(5000)
			}
			res, _ := send(t, front.Client(), tt.method, front.URL, body, false, tt.header...)
			a := log.next(t)
			m := waitRecorded(t, reader, 1)
			if !tt.wantRetried {
				assert.Equal(t, http.StatusBadGateway, res.StatusCode)
				assert.ErrorIs(t, a.Err, tapproxy.ErrUpstreamReset)
				assert.Equal(t, 1, a.Attempts)
				assert.Equal(t, f.urls(t)[0].Host, a.Upstream)
				assert.Zero(t, f.hits[1].Load())
				assert.Empty(t, sumPoints(m["tapproxy.retries"]))
				return
			}
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, "1", res.Header.Get("X-Upstream"), "retried on a different upstream")
			assert.Equal(t, 2, a.Attempts)
			assert.Equal(t, f.urls(t)[1].Host, a.Upstream)
			if body != nil {
				assert.Equal(t, body, got.Load(), "replayed byte for byte")
				assert.EqualValues(t, len(body), a.ReqBytes)
			}
			assert.Equal(t, map[attribute.Distinct]int64{
				key(upAttrs(t, f.urls(t)[0], attribute.String("tapproxy.retry.reason", "reset"))): 1,
			}, sumPoints(m["tapproxy.retries"]))
		})
	}
}

func TestRetryOnStatus(t *testing.T) {
	busy := func(codes ...int) func(i int, w http.ResponseWriter, r *http.Request) {
		return func(i int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Busy", "busy "+strconv.Itoa(i))
			w.WriteHeader(codes[i])
			io.WriteString(w, "answer of "+strconv.Itoa(i))
		}
	}
	tests := []struct {
		name     string
		codes    []int
		retry    *tapproxy.Retry
		wantCode int
		wantFrom int
		attempts int
	}{
		{"listed", []int{503, 200, 200}, &tapproxy.Retry{Statuses: []int{503}}, 200, 1, 2},
		{"not listed", []int{503, 200, 200}, &tapproxy.Retry{Statuses: []int{502}}, 503, 0, 1},
		{"no statuses", []int{503, 200, 200}, &tapproxy.Retry{}, 503, 0, 1},
		{"not by default", []int{503, 200, 200}, nil, 503, 0, 1},
		{"attempts run out", []int{503, 502, 503}, &tapproxy.Retry{Attempts: 2, Statuses: []int{502, 503}}, 502, 1, 2},
		{"every upstream tried", []int{503, 503, 503}, &tapproxy.Retry{Attempts: 10, Statuses: []int{503}}, 503, 2, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t, 3, busy(tt.codes...))
			log := newAttemptLog()
			opts := []tapproxy.Option{tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log)}
			if tt.retry != nil {
				opts = append(opts, tapproxy.WithRetry(*tt.retry))
			}
			p := newBalanced(t, f.urls(t), opts...)
			front := serve(t, p, false)
			res, body := get(t, front.Client(), front.URL)
			assert.Equal(t, tt.wantCode, res.StatusCode)
			assert.Equal(t, "answer of "+strconv.Itoa(tt.wantFrom), string(body), "the last response as it was")
			assert.Equal(t, "busy "+strconv.Itoa(tt.wantFrom), res.Header.Get("X-Busy"))
			a := log.next(t)
			assert.Equal(t, tt.attempts, a.Attempts)
			assert.Equal(t, f.urls(t)[tt.wantFrom].Host, a.Upstream)
			assert.Equal(t, tt.wantCode, a.Status)
			assert.NoError(t, a.Err)
			var hits int64
			for _, h := range f.counts() {
				hits += h
			}
			assert.EqualValues(t, tt.attempts, hits, "each upstream at most once")
		})
	}
}

func TestRetriedResponseIsDrained(t *testing.T) {
	// A retried response's connection is reused when its body is short
	// enough to drain, so the next request to that upstream needs no new
	// connection; a longer body is closed, and so is its connection.
	tests := []struct {
		name      string
		size      int
		wantConns int64
	}{
		{"short", 10 << 10, 1},
		{"long", 300 << 10, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var conns atomic.Int64
			busy := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(tt.size))
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write(bytes.Repeat([]byte("b"), tt.size))
			}))
			busy.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}
			busy.Start()
			t.Cleanup(busy.Close)
			f := newFleet(t, 1, nil)
			p := newBalanced(t, []*url.URL{mustParse(t, busy.URL), f.urls(t)[0]}, tapproxy.WithBalancer(tapproxy.First()),
				tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
			front := serve(t, p, false)
			for range 3 {
				res, body := get(t, front.Client(), front.URL)
				require.Equal(t, http.StatusOK, res.StatusCode)
				require.Equal(t, "0", string(body))
			}
			assert.EqualValues(t, tt.wantConns, conns.Load())
		})
	}
}

func TestStreamingResponseNeverRetried(t *testing.T) {
	tests := []struct {
		name    string
		handler func(w http.ResponseWriter, r *http.Request)
		check   func(t *testing.T, front *httptest.Server)
	}{
		{
			name: "reset mid-body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100")
				io.WriteString(w, "partial")
				http.NewResponseController(w).Flush()
				resetConn(w)
			},
			check: func(t *testing.T, front *httptest.Server) {
				res, err := front.Client().Get(front.URL)
				require.NoError(t, err)
				defer res.Body.Close()
				assert.Equal(t, http.StatusOK, res.StatusCode)
				b, err := io.ReadAll(res.Body)
				assert.Error(t, err)
				assert.Equal(t, "partial", string(b))
			},
		},
		{
			name: "reset after 103 Early Hints",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Link", "</a.css>; rel=preload")
				w.WriteHeader(http.StatusEarlyHints)
				resetConn(w)
			},
			check: func(t *testing.T, front *httptest.Server) {
				res, _ := get(t, front.Client(), front.URL)
				assert.Equal(t, http.StatusBadGateway, res.StatusCode)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
				if i == 0 {
					tt.handler(w, r)
					return
				}
				io.WriteString(w, "whole")
			})
			log := newAttemptLog()
			p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
				tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{502}}))
			front := serve(t, p, false)
			tt.check(t, front)
			a := log.next(t)
			assert.Equal(t, 1, a.Attempts)
			assert.ErrorIs(t, a.Err, tapproxy.ErrUpstreamReset)
			assert.Zero(t, f.hits[1].Load(), "a response byte reached the client: no retry")
		})
	}
}

func TestRetryBudgetUnderConcurrency(t *testing.T) {
	const n = 20
	tests := []struct {
		name   string
		budget float64
		want   int // requests that retry
	}{
		{"three may always retry", 0.01, 3},
		// 0.2 of 20 in flight: the holders keep their slots while the
		// others give up, so exactly four retry.
		{"default budget", 0, 4},
		{"budget of all", 1, n},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			firstGate, retryGate := make(chan struct{}), make(chan struct{})
			f := newFleet(t, 3, func(i int, w http.ResponseWriter, r *http.Request) {
				switch i {
				case 0:
					<-firstGate
				case 1:
					<-retryGate
				}
				w.WriteHeader(http.StatusServiceUnavailable)
			})
			log := newAttemptLog()
			mp, reader := newReader(t)
			p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
				tapproxy.WithMeterProvider(mp),
				tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}, Budget: tt.budget}))
			front := serve(t, p, false)
			var wg sync.WaitGroup
			c := front.Client()
			for range n {
				wg.Go(func() {
					res, err := c.Get(front.URL)
					if assert.NoError(t, err) {
						io.Copy(io.Discard, res.Body)
						res.Body.Close()
						assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
					}
				})
			}
			// Every request is in flight at upstream 0; then they all fail
			// at once.
			require.Eventually(t, func() bool { return f.hits[0].Load() == n }, waitTimeout, time.Millisecond)
			close(firstGate)
			// Each either ends or holds its retry at upstream 1.
			require.Eventually(t, func() bool { return int64(log.len())+f.hits[1].Load() == n }, waitTimeout, time.Millisecond)
			assert.EqualValues(t, tt.want, f.hits[1].Load(), "requests retrying at once")
			close(retryGate)
			wg.Wait()
			front.Close()

			attempts := 0
			for _, a := range log.snapshot() {
				attempts += a.Attempts
			}
			assert.Equal(t, n+2*tt.want, attempts, "a request that may retry goes on to the third upstream")
			assert.EqualValues(t, tt.want, f.hits[2].Load())
			var total int64
			for _, v := range sumPoints(collect(t, reader)["tapproxy.retries"]) {
				total += v
			}
			assert.EqualValues(t, 2*tt.want, total)
		})
	}
}

func TestDialRetriesIgnoreTheBudget(t *testing.T) {
	const n = 10
	gate := make(chan struct{})
	f := newFleet(t, 1, func(_ int, w http.ResponseWriter, r *http.Request) { <-gate })
	p := newBalanced(t, []*url.URL{deadURL(t), f.urls(t)[0]}, tapproxy.WithBalancer(tapproxy.First()),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: -1}),
		tapproxy.WithRetry(tapproxy.Retry{Budget: 0.01}))
	front := serve(t, p, false)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			res, err := front.Client().Get(front.URL)
			if assert.NoError(t, err) {
				res.Body.Close()
				assert.Equal(t, http.StatusOK, res.StatusCode)
			}
		})
	}
	require.Eventually(t, func() bool { return f.hits[0].Load() == n }, waitTimeout, time.Millisecond,
		"every request retried its failed dial at once, beyond the three the budget allows")
	close(gate)
	wg.Wait()
}

func TestPerTry(t *testing.T) {
	const perTry = 50 * time.Millisecond
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		if i == 0 {
			select { // stuck until the attempt is given up
			case <-r.Context().Done():
			case <-time.After(waitTimeout):
			}
			return
		}
		w.Header().Set("Content-Length", "4")
		io.WriteString(w, "he")
		http.NewResponseController(w).Flush()
		time.Sleep(4 * perTry) // the body may outlast PerTry
		io.WriteString(w, "ll")
	})
	log := newAttemptLog()
	mp, reader := newReader(t)
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
		tapproxy.WithMeterProvider(mp), tapproxy.WithRetry(tapproxy.Retry{PerTry: perTry}))
	front := serve(t, p, false)
	res, body := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "hell", string(body), "PerTry does not cut a body that streams")
	a := log.next(t)
	assert.Equal(t, 2, a.Attempts)
	assert.NoError(t, a.Err)
	m := waitRecorded(t, reader, 1)
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, f.urls(t)[0], attribute.String("tapproxy.retry.reason", "timeout"))): 1,
	}, sumPoints(m["tapproxy.retries"]))

	// With every upstream stuck, the client gets a timeout.
	require.NoError(t, p.SetUpstreams(f.urls(t, 0)))
	res, _ = get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusGatewayTimeout, res.StatusCode)
	a = log.next(t)
	assert.ErrorIs(t, a.Err, tapproxy.ErrUpstreamTimeout)
	assert.Equal(t, 3, a.Attempts, "a single upstream takes its own retries")
}

func TestBodyLimitBoundsReplay(t *testing.T) {
	const limit = 1 << 10
	tests := []struct {
		name        string
		size        int
		chunked     bool
		wantRetried bool
	}{
		{"below", limit / 2, false, true},
		{"at the limit", limit, false, true},
		{"at the limit, chunked", limit, true, true},
		{"above", 4 * limit, false, false},
		{"above, chunked", 4 * limit, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got [2]atomic.Value
			f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got[i].Store(b)
				if i == 0 {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
			})
			log := newAttemptLog()
			p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
				tapproxy.WithRequestCaptureLimit(1<<20),
				tapproxy.WithRetry(tapproxy.Retry{BodyLimit: limit, Statuses: []int{503}}))
			front := serve(t, p, false)
			body := randomBytes(tt.size)
			res, _ := send(t, front.Client(), http.MethodPost, front.URL, body, tt.chunked, "Idempotency-Key", "k")
			a := log.next(t)
			assert.Equal(t, body, got[0].Load())
			assert.EqualValues(t, tt.size, a.ReqBytes, "counted once")
			assert.Equal(t, body, a.ReqBody)
			if !tt.wantRetried {
				assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
				assert.Equal(t, 1, a.Attempts)
				assert.Zero(t, f.hits[1].Load())
				return
			}
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, 2, a.Attempts)
			assert.Equal(t, body, got[1].Load(), "replayed byte for byte")
		})
	}
}

func TestRetryHostHeader(t *testing.T) {
	hosts := make(chan string, 4)
	f := newFleet(t, 1, func(_ int, w http.ResponseWriter, r *http.Request) {
		hosts <- r.Host
		w.Header().Set("X-Dir", r.Header.Get("X-Dir"))
	})
	live := f.urls(t)[0]
	tests := []struct {
		name      string
		directors []tapproxy.Director
		want      func(front string) string
	}{
		{"follows the upstream", nil, func(string) string { return live.Host }},
		{"PreserveHost", []tapproxy.Director{tapproxy.PreserveHost()}, hostOf},
		{"explicit Out.Host", []tapproxy.Director{tapproxy.Mutate(func(out *http.Request) { out.Host = "set.example" })},
			func(string) string { return "set.example" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var runs atomic.Int64
			count := func(*httputil.ProxyRequest) { runs.Add(1) }
			log := newAttemptLog()
			dirs := append([]tapproxy.Director{count, tapproxy.SetHeader("X-Dir", "kept")}, tt.directors...)
			p := newBalanced(t, []*url.URL{deadURL(t), live}, tapproxy.WithBalancer(tapproxy.First()),
				tapproxy.WithObserver(log), tapproxy.WithDirector(dirs...))
			front := serve(t, p, false)
			res, _ := get(t, front.Client(), front.URL)
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, tt.want(front.URL), <-hosts)
			assert.Equal(t, "kept", res.Header.Get("X-Dir"), "the directors' effects stay")
			assert.EqualValues(t, 1, runs.Load(), "the directors ran once")
			a := log.next(t)
			assert.Equal(t, 2, a.Attempts)
			assert.Equal(t, live.Host, a.Upstream)
			assert.Equal(t, live.Host, a.URLHost, "Exchange.Request is the final attempt's")
		})
	}
}

func TestSingleUpstreamRetries(t *testing.T) {
	flaky := func() (*httptest.Server, *atomic.Int64) {
		var n atomic.Int64
		return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			switch n.Add(1) {
			case 1:
				// A fresh connection for the next request: the transport
				// would resend on its own after a reset of a reused one.
				w.Header().Set("Connection", "close")
				w.WriteHeader(http.StatusServiceUnavailable)
			case 2:
				resetConn(w)
			default:
				io.WriteString(w, "ok")
			}
		}), &n
	}
	t.Run("New with WithRetry retries the same upstream", func(t *testing.T) {
		up, hits := flaky()
		log := newAttemptLog()
		front := newFrontend(t, up.URL, tapproxy.WithObserver(log),
			tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
		res, body := get(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, "ok", string(body))
		assert.EqualValues(t, 3, hits.Load())
		a := log.next(t)
		assert.Equal(t, 3, a.Attempts)
		assert.Equal(t, hostOf(up.URL), a.Upstream)
	})
	t.Run("pool of one with WithRetry retries the same upstream", func(t *testing.T) {
		up, hits := flaky()
		log := newAttemptLog()
		p := newBalanced(t, []*url.URL{mustParse(t, up.URL)}, tapproxy.WithObserver(log),
			tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
		front := serve(t, p, false)
		res, _ := get(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.EqualValues(t, 3, hits.Load())
		assert.Equal(t, 3, log.next(t).Attempts)
	})
	t.Run("New without WithRetry", func(t *testing.T) {
		up, hits := flaky()
		log := newAttemptLog()
		front := newFrontend(t, up.URL, tapproxy.WithObserver(log))
		res, _ := get(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
		res, _ = get(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusBadGateway, res.StatusCode)
		assert.EqualValues(t, 2, hits.Load())
		assert.Equal(t, 1, log.next(t).Attempts)
		assert.Equal(t, 1, log.next(t).Attempts)
	})
	deadTests := []struct {
		name string
		p    func(t *testing.T, log *attemptLog, dead *url.URL) *tapproxy.Proxy
	}{
		{"New, dead, without WithRetry", func(t *testing.T, log *attemptLog, dead *url.URL) *tapproxy.Proxy {
			return newProxy(t, dead.String(), tapproxy.WithObserver(log))
		}},
		{"pool of one, dead, without WithRetry", func(t *testing.T, log *attemptLog, dead *url.URL) *tapproxy.Proxy {
			return newBalanced(t, []*url.URL{dead}, tapproxy.WithObserver(log))
		}},
	}
	for _, tt := range deadTests {
		t.Run(tt.name, func(t *testing.T) {
			log := newAttemptLog()
			front := serve(t, tt.p(t, log, deadURL(t)), false)
			res, _ := get(t, front.Client(), front.URL)
			assert.Equal(t, http.StatusBadGateway, res.StatusCode)
			a := log.next(t)
			assert.ErrorIs(t, a.Err, tapproxy.ErrUpstreamUnavailable)
			assert.Equal(t, 1, a.Attempts, "a single upstream is not retried")
		})
	}
}

func TestRequestBodyCountedOnce(t *testing.T) {
	var got [2]atomic.Value
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got[i].Store(b)
		if i == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	log := newAttemptLog()
	mp, reader := newReader(t)
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
		tapproxy.WithMeterProvider(mp), tapproxy.WithRequestCaptureLimit(1<<20),
		tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
	front := serve(t, p, false)
	body := randomBytes(3000)
	res, _ := send(t, front.Client(), http.MethodPut, front.URL, body, false)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, body, got[0].Load())
	assert.Equal(t, body, got[1].Load())
	a := log.next(t)
	assert.Equal(t, 2, a.Attempts)
	assert.EqualValues(t, len(body), a.ReqBytes)
	assert.Equal(t, body, a.ReqBody)
	m := waitRecorded(t, reader, 1)
	h := m[httpconv.ServerRequestBodySize{}.Name()]
	assert.EqualValues(t, 1, histogramCount(h))
	assert.Equal(t, []float64{3000}, histogramSums(h), "the body is counted once")
}

// histogramSums returns the sums of an int64 histogram's points.
func histogramSums(m metricdata.Metrics) []float64 {
	var out []float64
	if h, ok := m.Data.(metricdata.Histogram[int64]); ok {
		for _, dp := range h.DataPoints {
			out = append(out, float64(dp.Sum))
		}
	}
	return out
}

func TestTransportResendsAreNotAttempts(t *testing.T) {
	// The upstream drops every second request on a connection without an
	// answer, after reading it, as a server that closed an idle connection
	// just as it was reused. Go's transport then sends the request again
	// on a new connection, by itself.
	type connKey struct{}
	var handled atomic.Int64
	got := make(chan []byte, 8)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		b, _ := io.ReadAll(r.Body)
		if r.Context().Value(connKey{}).(*atomic.Int64).Add(1) == 2 {
			resetConn(w)
			return
		}
		got <- b
		io.WriteString(w, "ok")
	}))
	up.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, new(atomic.Int64))
	}
	up.Start()
	t.Cleanup(up.Close)
	target := mustParse(t, up.URL)
	tests := []struct {
		name   string
		p      func(log *attemptLog) *tapproxy.Proxy
		method string
		header []string
	}{
		{"New, GET", func(log *attemptLog) *tapproxy.Proxy {
			return newProxy(t, up.URL, tapproxy.WithObserver(log), tapproxy.WithRequestCaptureLimit(1<<20))
		}, http.MethodGet, nil},
		{"NewBalanced, GET", func(log *attemptLog) *tapproxy.Proxy {
			return newBalanced(t, []*url.URL{target}, tapproxy.WithObserver(log))
		}, http.MethodGet, nil},
		{"WithRetry, POST with Idempotency-Key", func(log *attemptLog) *tapproxy.Proxy {
			return newBalanced(t, []*url.URL{target}, tapproxy.WithObserver(log), tapproxy.WithRequestCaptureLimit(1<<20),
				tapproxy.WithRetry(tapproxy.Retry{}))
		}, http.MethodPost, []string{"Idempotency-Key", "k"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := newAttemptLog()
			front := serve(t, tt.p(log), false)
			var body []byte
			if tt.method == http.MethodPost {
				body = randomBytes(2000)
			}
			before := handled.Load()
			for i := range 2 {
				res, b := send(t, front.Client(), tt.method, front.URL, body, false, tt.header...)
				require.Equal(t, http.StatusOK, res.StatusCode, "request %d", i)
				assert.Equal(t, "ok", string(b))
				if body != nil {
					assert.Equal(t, body, <-got)
				} else {
					<-got
				}
				a := log.next(t)
				assert.Equal(t, 1, a.Attempts, "request %d", i)
				assert.EqualValues(t, len(body), a.ReqBytes, "request %d", i)
				if body != nil {
					assert.Equal(t, body, a.ReqBody)
				}
			}
			require.EqualValues(t, 3, handled.Load()-before, "the transport sent the second request twice")
		})
	}
}

func TestClientThatLeavesIsNotRetriedNorBlamed(t *testing.T) {
	arrived := make(chan struct{}, 1)
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		if i == 0 {
			arrived <- struct{}{}
			<-r.Context().Done()
		}
	})
	log := newAttemptLog()
	mp, reader := newReader(t)
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
		tapproxy.WithMeterProvider(mp),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1}),
		tapproxy.WithRetry(tapproxy.Retry{PerTry: time.Hour, Statuses: []int{503}}))
	front := serve(t, p, false)
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, front.URL, nil)
	require.NoError(t, err)
	go func() {
		<-arrived
		cancel()
	}()
	_, err = front.Client().Do(req)
	require.ErrorIs(t, err, context.Canceled)

	a := log.next(t)
	assert.ErrorIs(t, a.Err, tapproxy.ErrClientGone)
	assert.Equal(t, 1, a.Attempts)
	assert.Zero(t, f.hits[1].Load(), "not retried")
	s := p.Upstreams()[0]
	assert.True(t, s.Healthy, "not counted against the upstream")
	assert.Zero(t, s.Failures)
	assert.NoError(t, s.LastError)
	m := waitRecorded(t, reader, 1)
	assert.Empty(t, sumPoints(m["tapproxy.retries"]))
	assert.Empty(t, sumPoints(m["tapproxy.upstream.ejections"]))
	assert.False(t, errors.Is(a.Err, tapproxy.ErrUpstreamTimeout))
}

func TestRetryOverHTTP2ReplaysTheBody(t *testing.T) {
	var got [2]atomic.Value
	var srvs [2]*httptest.Server
	for i := range srvs {
		srvs[i] = newH2Upstream(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			got[i].Store(b)
			if r.ProtoMajor != 2 {
				w.WriteHeader(http.StatusHTTPVersionNotSupported)
				return
			}
			if i == 0 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		})
	}
	log := newAttemptLog()
	p := newBalanced(t, []*url.URL{mustParse(t, srvs[0].URL), mustParse(t, srvs[1].URL)},
		tapproxy.WithTransport(trustingTransport(t, srvs[0])), tapproxy.WithBalancer(tapproxy.First()),
		tapproxy.WithObserver(log), tapproxy.WithRequestCaptureLimit(1<<20),
		tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
	front := serve(t, p, true)
	body := randomBytes(20 << 10)
	res, _ := send(t, front.Client(), http.MethodPost, front.URL, body, true, "Idempotency-Key", "k")
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, body, got[0].Load())
	assert.Equal(t, body, got[1].Load(), "replayed byte for byte over HTTP/2")
	a := log.next(t)
	assert.Equal(t, 2, a.Attempts)
	assert.EqualValues(t, len(body), a.ReqBytes)
	assert.Equal(t, body, a.ReqBody)
}

func TestRetryWhileTheFirstAttemptStillSendsTheBody(t *testing.T) {
	// Upstream 0 answers before reading the body: the transport may still
	// be sending it when the retry begins, and the retry must send the
	// same bytes from the start.
	for _, size := range []int{60 << 10, 1 << 20} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			var got atomic.Value
			f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
				if i == 0 {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				b, _ := io.ReadAll(r.Body)
				got.Store(b)
			})
			log := newAttemptLog()
			p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
				tapproxy.WithRequestCaptureLimit(4<<20),
				tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}, BodyLimit: 2 << 20}))
			front := serve(t, p, false)
			body := randomBytes(size)
			res, _ := send(t, front.Client(), http.MethodPut, front.URL, body, false)
			require.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, body, got.Load())
			a := log.next(t)
			assert.Equal(t, 2, a.Attempts)
			assert.EqualValues(t, size, a.ReqBytes)
			assert.Equal(t, body, a.ReqBody)
		})
	}
}

func TestClientThatLeavesDuringARetry(t *testing.T) {
	arrived := make(chan struct{}, 1)
	f := newFleet(t, 3, func(i int, w http.ResponseWriter, r *http.Request) {
		switch i {
		case 0:
			w.WriteHeader(http.StatusServiceUnavailable)
		case 1:
			arrived <- struct{}{}
			<-r.Context().Done()
		}
	})
	log := newAttemptLog()
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1}),
		tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
	front := serve(t, p, false)
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, front.URL, nil)
	require.NoError(t, err)
	go func() {
		<-arrived
		cancel()
	}()
	_, err = front.Client().Do(req)
	require.ErrorIs(t, err, context.Canceled)
	a := log.next(t)
	assert.ErrorIs(t, a.Err, tapproxy.ErrClientGone)
	assert.Equal(t, 2, a.Attempts)
	assert.Equal(t, f.urls(t)[1].Host, a.Upstream)
	assert.Zero(t, f.hits[2].Load(), "not retried once the client left")
	for _, s := range p.Upstreams() {
		assert.True(t, s.Healthy)
		assert.Zero(t, s.Failures)
	}
}

func TestExchangeDescribesTheFinalResponse(t *testing.T) {
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		if i == 0 {
			w.Header().Set("X-Busy", "yes")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "busy, try elsewhere")
			return
		}
		io.WriteString(w, "done")
	})
	rec := newRecorder()
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(rec),
		tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
	front := serve(t, p, false)
	res, body := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "done", string(body))
	assert.Empty(t, res.Header.Get("X-Busy"), "nothing of the retried response reaches the client")
	o := rec.next(t)
	assert.Equal(t, http.StatusOK, o.Status)
	assert.Equal(t, "done", string(o.Body))
	assert.EqualValues(t, 4, o.BodyBytes)
	assert.Empty(t, o.Header.Get("X-Busy"))
	assert.NoError(t, o.Err)
	assert.Equal(t, 1, closeAndCount(t, front, rec))
}

// TestFullDuplexBodyIsNotHeldBack: a client that sends part of its body and
// waits for the answer, as a bidirectional stream does, gets the response
// headers while the body is still open, retries on or off.
func TestFullDuplexBodyIsNotHeldBack(t *testing.T) {
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		require.NoError(t, rc.EnableFullDuplex())
		w.WriteHeader(http.StatusOK)
		rc.Flush()
		// Echo each message as it comes, until the client ends the body.
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			w.Write(buf[:n])
			rc.Flush()
			if err != nil {
				return
			}
		}
	})
	tests := []struct {
		name string
		new  func(t *testing.T) http.Handler
	}{
		{"New", func(t *testing.T) http.Handler { return newProxy(t, f.srvs[0].URL) }},
		{"New with WithRetry", func(t *testing.T) http.Handler {
			return newProxy(t, f.srvs[0].URL, tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
		}},
		{"NewBalanced", func(t *testing.T) http.Handler { return newBalanced(t, f.urls(t)) }},
		{"NewBalanced with WithRetry", func(t *testing.T) http.Handler {
			return newBalanced(t, f.urls(t), tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			front := serve(t, tt.new(t), true) // HTTP/2: the body and the answer flow at once
			pr, pw := io.Pipe()
			defer pw.Close()
			req, err := http.NewRequest(http.MethodPost, front.URL+"/stream", pr)
			require.NoError(t, err)
			go pw.Write([]byte("ping"))
			res, err := front.Client().Do(req) // returns with the headers
			require.NoError(t, err)
			defer res.Body.Close()
			require.Equal(t, http.StatusOK, res.StatusCode)
			got := make([]byte, len("ping"))
			_, err = io.ReadFull(res.Body, got)
			require.NoError(t, err)
			assert.Equal(t, "ping", string(got), "the upstream answered the first message")
			pw.Close()
			rest, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			assert.Empty(t, rest)
		})
	}
}

// TestRetryTriesUnhealthyUpstreamsLast: once the healthy upstreams have all
// been tried, a retry goes to one that is down rather than giving up.
func TestRetryTriesUnhealthyUpstreamsLast(t *testing.T) {
	f := newFleet(t, 3, func(i int, w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/healthz" && i == 2:
			w.WriteHeader(http.StatusInternalServerError) // down, by its checks
		case r.URL.Path == "/healthz":
		case i < 2:
			panic(http.ErrAbortHandler) // a reset
		default:
			io.WriteString(w, strconv.Itoa(i))
		}
	})
	p := newBalanced(t, f.urls(t),
		tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/healthz", Fails: 1, Interval: time.Hour}),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: -1}),
		tapproxy.WithRetry(tapproxy.Retry{Attempts: 3}))
	require.Eventually(t, func() bool { return p.Upstreams()[2].Down }, waitTimeout, time.Millisecond)
	front := serve(t, p, false)
	i, code := which(t, front.Client(), front.URL+"/x")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, 2, i, "the third attempt went to the upstream that is down, the only one left")
}
