package tapproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/tapproxy/tapproxy"
)

func TestObserversRunInOrderEachWithItsOwnBody(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "payload") })
	var calls []string
	reader := func(name string) tapproxy.ObserverFunc {
		return func(ctx context.Context, ex *tapproxy.Exchange) {
			b, err := io.ReadAll(ex.Body())
			require.NoError(t, err)
			calls = append(calls, name+":"+string(b))
		}
	}
	rec := newRecorder()
	front := newFrontend(t, up.URL,
		tapproxy.WithObserver(reader("a")),
		tapproxy.WithObserver(reader("b"), rec))
	for range 3 {
		get(t, front.Client(), front.URL)
		rec.next(t) // the last observer ran, so the others did
	}
	assert.Equal(t, strings.Repeat("a:payload b:payload ", 3), strings.Join(calls, " ")+" ")
	assert.Equal(t, 3, rec.count(), "exactly one call per request")
}

func TestPanickingObserverIsContained(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "intact") })
	rec := newRecorder()
	front := newFrontend(t, up.URL,
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) { panic("observer bug") })),
		tapproxy.WithObserver(rec))
	for range 2 { // and the proxy goes on serving
		res, body := get(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, "intact", string(body))
		o := rec.next(t)
		assert.Equal(t, "intact", string(o.Body), "later observers still run")
	}
}

type ctxKey struct{}

func TestObserverContextOutlivesTheClient(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first part")
		w.(http.Flusher).Flush()
		select { // until the client has left
		case <-r.Context().Done():
		case <-release:
		}
	})
	type call struct {
		ctxErr, err error
		value       any
	}
	calls := make(chan call, 1)
	p, err := tapproxy.New(mustParse(t, up.URL), tapproxy.WithLogger(testLogger(t)),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
			calls <- call{ctx.Err(), ex.Err, ctx.Value(ctxKey{})}
		})))
	require.NoError(t, err)
	front := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		p.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, "kept")))
	})

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, front.URL, nil)
	require.NoError(t, err)
	res, err := front.Client().Do(req)
	require.NoError(t, err)
	got := make([]byte, len("first part"))
	_, err = io.ReadFull(res.Body, got)
	require.NoError(t, err)
	cancel()
	res.Body.Close()

	select {
	case c := <-calls:
		assert.NoError(t, c.ctxErr, "the observer's context is not canceled by the client leaving")
		assert.Equal(t, "kept", c.value, "the observer's context keeps the request's values")
		assert.ErrorIs(t, c.err, tapproxy.ErrClientGone)
	case <-time.After(waitTimeout):
		t.Fatal("observer not called")
	}
}

func TestObserverRunsAfterClientHasDeclaredLengthBody(t *testing.T) {
	// A small body of declared length would sit in the server's buffer
	// until the handler returns; the proxy must deliver it before it runs
	// observers, so the client can read it while the observer waits.
	const body = "all of it"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	})
	clientHasIt := make(chan struct{})
	sawIt := make(chan bool, 1)
	front := newFrontend(t, up.URL, tapproxy.WithObserver(tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) {
		select {
		case <-clientHasIt:
			sawIt <- true
		case <-time.After(waitTimeout):
			sawIt <- false
		}
	})))
	res, err := front.Client().Get(front.URL)
	require.NoError(t, err)
	got := make([]byte, len(body))
	_, err = io.ReadFull(res.Body, got)
	require.NoError(t, err)
	close(clientHasIt)
	res.Body.Close()
	assert.Equal(t, body, string(got))
	assert.True(t, <-sawIt, "the client had every byte while the observer ran")
}

// cannedTransport answers every request in memory, so that allocation
// counts see only the proxy.
type cannedTransport struct{ body string }

func (c cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode:    http.StatusOK,
		Header:        http.Header{"Content-Length": {strconv.Itoa(len(c.body))}},
		ContentLength: int64(len(c.body)),
		Body:          io.NopCloser(strings.NewReader(c.body)),
		Request:       r,
	}, nil
}

func TestCaptureAllocs(t *testing.T) {
	if tapproxy.RaceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	body := strings.Repeat("x", 48<<10)
	nop := tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) {})
	allocs := func(opts ...tapproxy.Option) float64 {
		p, err := tapproxy.New(mustParse(t, "http://upstream.test"),
			append(opts, tapproxy.WithTransport(cannedTransport{body}))...)
		require.NoError(t, err)
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		serve := func() { p.ServeHTTP(httptest.NewRecorder(), req) }
		serve() // warm the pools
		return testing.AllocsPerRun(200, serve)
	}
	none := allocs()
	zero := allocs(tapproxy.WithObserver(nop), tapproxy.WithCaptureLimit(0))
	full := allocs(tapproxy.WithObserver(nop))
	t.Logf("allocs/request: no observer %.1f, observer with limit 0 %.1f, observer with 64 KiB capture %.1f", none, zero, full)
	assert.LessOrEqual(t, zero-none, 1.0, "an observer costs at most its context")
	assert.LessOrEqual(t, full-zero, 0.5, "a pooled capture costs no allocation per request")
}

func TestUploadSurvivesTheServerClosingTheRequestBody(t *testing.T) {
	// Once the upstream has the whole declared body and answers, the
	// proxy's server drains and closes the inbound body as it writes the
	// response headers. The transport must not then fail its final read of
	// that body (golang.org/issue/40747): that would close the upstream
	// connection and cut the response. The upstream holds the rest of its
	// response until the client has the first part, so that a failed read
	// always cuts it; it is a race, and many uploads give it chances.
	var goAhead sync.Map // X-Id: chan struct{}
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "first,")
		http.NewResponseController(w).Flush()
		ch, _ := goAhead.Load(r.Header.Get("X-Id"))
		select {
		case <-ch.(chan struct{}):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second")
	})
	rec := &callLog{}
	front := newFrontend(t, up.URL, tapproxy.WithObserver(rec))
	const n = 3000
	tr := &http.Transport{MaxIdleConnsPerHost: 8}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var (
		wg     sync.WaitGroup
		next   atomic.Int64
		failed atomic.Int64
	)
	upload := strings.Repeat("x", 2000)
	for range 8 {
		wg.Go(func() {
			for i := next.Add(1); i <= n; i = next.Add(1) {
				id := strconv.FormatInt(i, 10)
				ch := make(chan struct{})
				goAhead.Store(id, ch)
				req, err := http.NewRequest(http.MethodPost, front.URL, strings.NewReader(upload))
				if !assert.NoError(t, err) {
					return
				}
				req.Header.Set("X-Id", id)
				res, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					close(ch)
					continue
				}
				first := make([]byte, len("first,"))
				_, err = io.ReadFull(res.Body, first)
				close(ch)
				rest, err2 := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || err2 != nil || string(rest) != "second" {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	assert.Zero(t, failed.Load(), "responses cut")
	bad := 0
	for _, c := range rec.wait(t, n) {
		if c.err != nil {
			bad++
		}
	}
	assert.Zero(t, bad, "exchanges that failed")
}

// heldUpstream sends n bytes of a known pattern, flushes, and holds the
// response open until release is closed, then sends tail more bytes.
func heldUpstream(tb testing.TB, n, tail int, release <-chan struct{}) *httptest.Server {
	tb.Helper()
	return newUpstream(tb, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(n+tail))
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB
		for sent := 0; sent < n; sent += len(chunk) {
			w.Write(chunk[:min(len(chunk), n-sent)])
		}
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		case <-time.After(6 * waitTimeout):
			return
		}
		w.Write(chunk[:tail])
	})
}

func TestCaptureBudgetCutsAndReleases(t *testing.T) {
	const limit, budget, sent = 64 << 10, 100 << 10, 80 << 10
	release := make(chan struct{})
	up := heldUpstream(t, sent, 16, release)
	rec := newRecorder()
	reader := sdkmetric.NewManualReader()
	front := newFrontend(t, up.URL, tapproxy.WithObserver(rec),
		tapproxy.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))),
		tapproxy.WithCaptureLimit(limit), tapproxy.WithCaptureBudget(budget))

	// Two responses held open at once: the first has its whole 64 KiB
	// capture, the second only what is left of the 100 KiB budget.
	var bodies []io.ReadCloser
	for range 2 {
		res, err := front.Client().Get(front.URL)
		require.NoError(t, err)
		defer res.Body.Close()
		// Past the limit, so the proxy has captured all it could; the
		// proxy may still buffer the last bytes sent.
		_, err = io.CopyN(io.Discard, res.Body, limit+1)
		require.NoError(t, err)
		bodies = append(bodies, res.Body)
	}
	close(release)
	for _, b := range bodies {
		_, err := io.Copy(io.Discard, b)
		require.NoError(t, err)
	}
	first, second := rec.next(t), rec.next(t)
	if len(first.Body) < len(second.Body) {
		first, second = second, first
	}
	assert.Len(t, first.Body, limit)
	assert.False(t, first.CaptureSkipped)
	assert.True(t, second.CaptureSkipped, "the budget was spent")
	assert.True(t, second.Truncated)
	assert.LessOrEqual(t, len(second.Body), budget-limit)
	assert.Equal(t, first.Body[:len(second.Body)], second.Body, "a cut capture is still a prefix")
	assert.EqualValues(t, sent+16, second.BodyBytes, "the client got every byte")
	assert.EqualValues(t, 1, counterValue(t, reader, "tapproxy.capture.skipped"))

	// Once both exchanges are released, their reservations are back.
	require.Eventually(t, func() bool {
		get(t, front.Client(), front.URL)
		o := rec.next(t)
		return !o.CaptureSkipped && len(o.Body) == limit
	}, waitTimeout, 10*time.Millisecond)
}

func TestCaptureBudgetBoundsConcurrentCaptures(t *testing.T) {
	if testing.Short() {
		t.Skip("1000 concurrent exchanges")
	}
	const (
		clients = 1000
		limit   = 1 << 20
		budget  = 32 << 20
		sent    = limit + 64<<10
	)
	release := make(chan struct{})
	up := heldUpstream(t, sent, 1<<10, release)
	var (
		mu                  sync.Mutex
		seen, skipped, full int
		captured            int
		bodyBytes           []int64
	)
	front := newFrontend(t, up.URL, tapproxy.WithCaptureLimit(limit), tapproxy.WithCaptureBudget(budget),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(_ context.Context, ex *tapproxy.Exchange) {
			mu.Lock()
			defer mu.Unlock()
			seen++
			n, _ := io.Copy(io.Discard, ex.Body())
			captured += int(n)
			if ex.CaptureSkipped {
				skipped++
			}
			if !ex.CaptureSkipped && ex.Truncated {
				full++
			}
			bodyBytes = append(bodyBytes, ex.BodyBytes)
		})))

	var before, peak runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	// Plain connections keep the client to one goroutine per request,
	// well inside the race detector's goroutine limit.
	var reached, done sync.WaitGroup
	errs := make(chan error, clients)
	reached.Add(clients)
	for range clients {
		done.Go(func() {
			// Past the limit, so the proxy has captured all it could.
			err := heldGet(hostOf(front.URL), limit+1, &reached, release)
			if err != nil {
				errs <- err
			}
		})
	}
	reached.Wait() // every proxy has read and captured its first MiB
	runtime.GC()
	runtime.ReadMemStats(&peak)
	close(release)
	done.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return seen == clients }, waitTimeout, time.Millisecond)

	growth := int64(peak.HeapInuse) - int64(before.HeapInuse)
	t.Logf("heap in use grew %d MiB with %d exchanges in flight; %d captures full, %d skipped or cut, %d MiB captured",
		growth>>20, clients, full, skipped, captured>>20)
	// Every capture was held at once, so what they kept together is what
	// the budget allowed at the peak.
	assert.LessOrEqual(t, captured, budget)
	assert.GreaterOrEqual(t, full, 1)
	assert.GreaterOrEqual(t, skipped, clients-budget/limit)
	for _, n := range bodyBytes {
		require.EqualValues(t, sent+1<<10, n, "every client got every byte")
	}
	// Without the budget the captures alone would hold 1000 MiB.
	assert.Less(t, growth, int64(400<<20))
}

// heldGet reads the first n bytes of a response over a plain connection,
// reports that on reached, and reads the rest once release is closed.
func heldGet(addr string, n int64, reached *sync.WaitGroup, release <-chan struct{}) (err error) {
	signaled := false
	defer func() {
		if !signaled {
			reached.Done()
		}
	}()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(6 * waitTimeout))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if _, err := io.CopyN(io.Discard, res.Body, n); err != nil {
		return err
	}
	signaled = true
	reached.Done()
	<-release
	_, err = io.Copy(io.Discard, res.Body)
	return err
}

func TestNoCaptureWithoutObservers(t *testing.T) {
	const payload = "a request body worth keeping"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body) // echo, so that both bodies could be captured
	})
	nop := tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) {})
	tests := []struct {
		name      string
		observers []tapproxy.ResponseObserver
		want      int64
	}{
		{name: "without observers nothing is captured", want: 0},
		{name: "with an observer both bodies are", observers: []tapproxy.ResponseObserver{nop}, want: 2 * int64(len(payload))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reader := sdkmetric.NewManualReader()
			front := newFrontend(t, up.URL,
				tapproxy.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))),
				tapproxy.WithRequestCaptureLimit(1024),
				tapproxy.WithObserver(tt.observers...))
			res, err := front.Client().Post(front.URL, "text/plain", strings.NewReader(payload))
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			require.NoError(t, err)
			require.Equal(t, payload, string(body))
			front.Close() // waits for the handler, so the exchange is recorded
			assert.Equal(t, tt.want, counterValue(t, reader, "tapproxy.capture.bytes"))
		})
	}
}
