package tapproxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
