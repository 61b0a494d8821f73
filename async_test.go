package tapproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tapproxy/tapproxy"
)

// gatedObserver blocks every call until open is closed, then counts it.
type gatedObserver struct {
	open  chan struct{}
	calls atomic.Int64
}

func (g *gatedObserver) ObserveResponse(ctx context.Context, ex *tapproxy.Exchange) {
	<-g.open
	g.calls.Add(1)
}

// chunkedUpstream answers with a body of unknown length, so that the
// response ends only when the proxy's handler returns.
func chunkedUpstream(tb testing.TB) string {
	return newUpstream(tb, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part one, ")
		w.(http.Flusher).Flush()
		io.WriteString(w, "part two")
	}).URL
}

// newAsyncProxy builds a proxy with asynchronous observers and serves it.
func newAsyncProxy(tb testing.TB, upstream string, opts ...tapproxy.Option) (*tapproxy.Proxy, string, *http.Client) {
	tb.Helper()
	p, err := tapproxy.New(mustParse(tb, upstream), append([]tapproxy.Option{tapproxy.WithLogger(testLogger(tb))}, opts...)...)
	require.NoError(tb, err)
	front := newUpstream(tb, p.ServeHTTP)
	tb.Cleanup(func() { p.Close() }) // after front closes: cleanups run last-in first-out
	return p, front.URL, front.Client()
}

func TestAsyncObserversDoNotHoldTheResponse(t *testing.T) {
	gate := &gatedObserver{open: make(chan struct{})}
	_, front, client := newAsyncProxy(t, chunkedUpstream(t),
		tapproxy.WithObserver(gate), tapproxy.WithAsyncObservers(1, 8))
	// With synchronous observers the first chunked response could not end
	// while the observer is blocked, and the second request on the same
	// connection would wait behind it.
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, front, nil)
		res, err := client.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		cancel()
		require.NoError(t, err)
		assert.Equal(t, "part one, part two", string(body))
	}
	assert.Zero(t, gate.calls.Load(), "the observer is still blocked")
	close(gate.open)
}

func TestAsyncQueueFullDropsAndCounts(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	gate := &gatedObserver{open: make(chan struct{})}
	p, front, client := newAsyncProxy(t, chunkedUpstream(t),
		tapproxy.WithMeterProvider(mp),
		tapproxy.WithObserver(gate), tapproxy.WithAsyncObservers(1, 1))
	// One exchange blocks the worker and one waits in the queue; the rest
	// are dropped, and no request waits for room.
	const requests = 5
	for range requests {
		_, body := get(t, client, front)
		require.Equal(t, "part one, part two", string(body))
	}
	close(gate.open)
	require.NoError(t, p.Close())
	observed := gate.calls.Load()
	assert.GreaterOrEqual(t, observed, int64(1))
	assert.LessOrEqual(t, observed, int64(2), "at most one running and one queued")
	assert.Equal(t, requests-observed, counterValue(t, reader, "tapproxy.observer.dropped"),
		"every exchange is either observed or counted as dropped")
}

func TestShutdownDrainsTheQueue(t *testing.T) {
	gate := &gatedObserver{open: make(chan struct{})}
	p, front, client := newAsyncProxy(t, chunkedUpstream(t),
		tapproxy.WithObserver(gate), tapproxy.WithAsyncObservers(1, 16))
	for range 5 {
		get(t, client, front)
	}
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, p.Shutdown(expired), context.Canceled, "the observer is still blocked")

	close(gate.open)
	require.NoError(t, p.Close())
	assert.EqualValues(t, 5, gate.calls.Load(), "every queued exchange was observed")

	// After Shutdown, exchanges are observed on the request's goroutine.
	get(t, client, front)
	require.Eventually(t, func() bool { return gate.calls.Load() == 6 }, waitTimeout, 5*time.Millisecond)
}

func TestAsyncCaptureLivesUntilTheLastObserver(t *testing.T) {
	// Each response's body names its path; observers on other workers
	// check that the capture they read is still their exchange's, while
	// new requests reuse pooled buffers. Under -race an early release is
	// also reported as a data race.
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat(r.URL.Path, 512))
	})
	var mismatches, calls atomic.Int64
	check := tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
		want := strings.Repeat(ex.Request.URL.Path, 512)
		got, _ := io.ReadAll(ex.Body())
		if !bytes.Equal(got, []byte(want)) {
			mismatches.Add(1)
		}
		calls.Add(1)
	})
	p, front, client := newAsyncProxy(t, up.URL,
		tapproxy.WithObserver(check, check), tapproxy.WithAsyncObservers(4, 1024))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				res, err := client.Get(fmt.Sprintf("%s/g%d-r%02d", front, g, i))
				if assert.NoError(t, err) {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, p.Close())
	assert.EqualValues(t, 2*8*25, calls.Load())
	assert.Zero(t, mismatches.Load())
}

func TestWithAsyncObserversRejectsBadSizes(t *testing.T) {
	tests := []struct{ workers, queue int }{{0, 1}, {-1, 1}, {1, -1}}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.workers, tt.queue), func(t *testing.T) {
			_, err := tapproxy.New(mustParse(t, "http://a"), tapproxy.WithAsyncObservers(tt.workers, tt.queue))
			require.ErrorContains(t, err, "tapproxy: asynchronous observers need workers > 0")
		})
	}
}

// counterValue collects reader and returns the sum of the named counter.
func counterValue(tb testing.TB, reader sdkmetric.Reader, name string) int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, reader.Collect(context.Background(), &rm))
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				total += dp.Value
			}
		}
	}
	return total
}
