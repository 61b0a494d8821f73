package tapproxy_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tapproxy/tapproxy"
)

// byType is a common policy: JSON in full (past the default limit), event
// streams not at all, everything else its first KiB.
func byType(res *http.Response) int64 {
	switch ct := res.Header.Get("Content-Type"); {
	case strings.HasPrefix(ct, "application/json"):
		return 1 << 20
	case strings.HasPrefix(ct, "text/event-stream"):
		return 0
	}
	return 1 << 10
}

func TestCapturePolicy(t *testing.T) {
	big := strings.Repeat("j", 100<<10) // more than DefaultCaptureLimit
	tests := []struct {
		name      string
		policy    func(*http.Response) int64
		modify    func(*http.Response) error
		ctype     string
		body      string
		wantBody  string
		truncated bool
	}{{
		name: "json in full, past the capture limit", policy: byType,
		ctype: "application/json", body: big, wantBody: big,
	}, {
		name: "event stream not at all", policy: byType,
		ctype: "text/event-stream", body: "data: x\n\n", wantBody: "", truncated: true,
	}, {
		name: "other types their first KiB", policy: byType,
		ctype: "text/plain", body: big, wantBody: big[:1<<10], truncated: true,
	}, {
		name:   "a negative limit keeps nothing",
		policy: func(*http.Response) int64 { return -1 },
		ctype:  "text/plain", body: "abc", wantBody: "", truncated: true,
	}, {
		name: "the policy sees the response after the hook",
		policy: func(res *http.Response) int64 {
			if res.Header.Get("X-Capture") == "yes" {
				return 2
			}
			return 0
		},
		modify: func(res *http.Response) error { res.Header.Set("X-Capture", "yes"); return nil },
		ctype:  "text/plain", body: "abc", wantBody: "ab", truncated: true,
	}, {
		name:   "a panicking policy keeps nothing",
		policy: func(*http.Response) int64 { panic("policy bug") },
		ctype:  "text/plain", body: "abc", wantBody: "", truncated: true,
	}, {
		name:  "without a policy, the capture limit",
		ctype: "text/plain", body: big, wantBody: big[:tapproxy.DefaultCaptureLimit], truncated: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ctype)
				io.WriteString(w, tt.body)
			})
			rec := newRecorder()
			opts := []tapproxy.Option{tapproxy.WithObserver(rec)}
			if tt.policy != nil {
				opts = append(opts, tapproxy.WithCapturePolicy(tt.policy))
			}
			if tt.modify != nil {
				opts = append(opts, tapproxy.WithModifyResponse(tt.modify))
			}
			front := newFrontend(t, up.URL, opts...)

			_, body := get(t, front.Client(), front.URL)
			assert.Equal(t, tt.body, string(body), "the client gets the whole body")
			o := rec.next(t)
			assert.Equal(t, tt.wantBody, string(o.Body))
			assert.EqualValues(t, len(tt.body), o.BodyBytes)
			assert.Equal(t, tt.truncated, o.Truncated)
			assert.NoError(t, o.Err)
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

func TestCapturePolicyCalledOncePerResponseAndOnlyWhenSomeoneReads(t *testing.T) {
	nop := tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) {})
	tests := []struct {
		name      string
		observers []tapproxy.ResponseObserver
		calls     int64
	}{
		{"an observer that reads bodies", []tapproxy.ResponseObserver{nop}, 3},
		{"no observer", nil, 0},
		{"only bodyless observers", []tapproxy.ResponseObserver{tapproxy.HeadersOnly(nop), tapproxy.HeadersOnly(nop)}, 0},
		{"one of them reads bodies", []tapproxy.ResponseObserver{tapproxy.HeadersOnly(nop), nop}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "body") })
			var calls atomic.Int64
			front := newFrontend(t, up.URL, tapproxy.WithObserver(tt.observers...),
				tapproxy.WithCapturePolicy(func(*http.Response) int64 { calls.Add(1); return 1 }))
			for range 3 {
				get(t, front.Client(), front.URL)
			}
			front.Close() // waits for the handlers
			assert.Equal(t, tt.calls, calls.Load())
		})
	}
}

func TestBodylessObserversCaptureNothing(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "response body")
	})
	tests := []struct {
		name          string
		alsoReader    bool
		wantResponse  string
		wantReqBody   string
		wantTruncated bool
	}{
		{"every observer bodyless", false, "", "", true},
		{"one observer reads bodies", true, "response body", "request body", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			var seen atomic.Pointer[observed]
			obs := []tapproxy.ResponseObserver{
				tapproxy.HeadersOnly(tapproxy.ObserverFunc(func(_ context.Context, ex *tapproxy.Exchange) {
					o := observed{Status: ex.Response.StatusCode, BodyBytes: ex.BodyBytes, ReqBodyBytes: ex.RequestBodyBytes}
					o.Body, _ = io.ReadAll(ex.Body())
					o.ReqBody, _ = io.ReadAll(ex.RequestBody())
					seen.Store(&o)
				})),
			}
			if tt.alsoReader {
				obs = append(obs, rec)
			} else {
				obs = append(obs, tapproxy.HeadersOnly(rec))
			}
			front := newFrontend(t, up.URL, tapproxy.WithObserver(obs...), tapproxy.WithRequestCaptureLimit(100))

			res, err := front.Client().Post(front.URL, "text/plain", strings.NewReader("request body"))
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			require.NoError(t, err)
			assert.Equal(t, "response body", string(body))

			o := rec.next(t)
			assert.Equal(t, tt.wantResponse, string(o.Body))
			assert.Equal(t, tt.wantReqBody, string(o.ReqBody))
			assert.Equal(t, tt.wantTruncated, o.Truncated)
			assert.EqualValues(t, len("response body"), o.BodyBytes, "bodies are still counted")
			assert.EqualValues(t, len("request body"), o.ReqBodyBytes)
			first := seen.Load()
			require.NotNil(t, first)
			assert.Equal(t, http.StatusOK, first.Status)
			assert.EqualValues(t, len("response body"), first.BodyBytes)
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

func TestHeadersOnly(t *testing.T) {
	assert.Nil(t, tapproxy.HeadersOnly(nil))
	var called bool
	o := tapproxy.HeadersOnly(tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) { called = true }))
	b, ok := o.(tapproxy.BodylessObserver)
	require.True(t, ok)
	assert.True(t, b.Bodyless())
	o.ObserveResponse(context.Background(), &tapproxy.Exchange{})
	assert.True(t, called, "it calls the observer it wraps")
}

// gaugeValue reads an int64 gauge of the proxy; ok is false when it was
// not reported.
func gaugeValue(tb testing.TB, reader sdkmetric.Reader, name string) (v int64, ok bool) {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, reader.Collect(context.Background(), &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			g, isGauge := m.Data.(metricdata.Gauge[int64])
			require.True(tb, isGauge, "%s is an int64 gauge", name)
			require.Len(tb, g.DataPoints, 1)
			return g.DataPoints[0].Value, true
		}
	}
	return 0, false
}

func TestCaptureHeldGauge(t *testing.T) {
	const limit, sent = 16 << 10, 20 << 10
	tests := []struct {
		name       string
		budget     int64 // < 0: the default
		wantBudget int64 // 0: no budget gauge
	}{
		{"default budget", -1, tapproxy.DefaultCaptureBudget},
		{"no budget", 0, 0},
		{"with a budget", 1 << 20, 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			up := heldUpstream(t, sent, 16, release)
			reader := sdkmetric.NewManualReader()
			rec := newRecorder()
			opts := []tapproxy.Option{tapproxy.WithObserver(rec), tapproxy.WithCaptureLimit(limit),
				tapproxy.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))}
			if tt.budget >= 0 {
				opts = append(opts, tapproxy.WithCaptureBudget(tt.budget))
			}
			p := newProxy(t, up.URL, opts...)
			front := serve(t, p, false)

			held, ok := gaugeValue(t, reader, "tapproxy.capture.held")
			assert.True(t, ok)
			assert.Zero(t, held, "nothing in flight")
			limitSeen, ok := gaugeValue(t, reader, "tapproxy.capture.budget")
			assert.Equal(t, tt.wantBudget > 0, ok, "the budget gauge is there with a budget")
			assert.Equal(t, tt.wantBudget, limitSeen)

			// Two responses held open past the capture limit: each capture
			// holds exactly the limit.
			var bodies []io.ReadCloser
			for range 2 {
				res, err := front.Client().Get(front.URL)
				require.NoError(t, err)
				defer res.Body.Close()
				_, err = io.CopyN(io.Discard, res.Body, limit+1)
				require.NoError(t, err)
				bodies = append(bodies, res.Body)
			}
			held, _ = gaugeValue(t, reader, "tapproxy.capture.held")
			assert.EqualValues(t, 2*limit, held)

			close(release)
			for _, b := range bodies {
				_, err := io.Copy(io.Discard, b)
				require.NoError(t, err)
			}
			rec.next(t)
			rec.next(t)
			front.Close() // the handlers, and so the releases, are done
			held, _ = gaugeValue(t, reader, "tapproxy.capture.held")
			assert.Zero(t, held, "every capture gave its bytes back")

			require.NoError(t, p.Close())
			_, ok = gaugeValue(t, reader, "tapproxy.capture.held")
			assert.False(t, ok, "a closed proxy reports no gauges")
		})
	}
}

func TestCapturePolicyZeroAllocs(t *testing.T) {
	if tapproxy.RaceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	body := strings.Repeat("x", 48<<10)
	nop := tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) {})
	allocs := func(opts ...tapproxy.Option) float64 {
		// A fresh proxy each time, so that its capture pool starts empty:
		// a capture that takes a buffer then allocates it.
		up := mustParse(t, "http://upstream.test")
		req, _ := http.NewRequest(http.MethodGet, "http://front.test/", nil)
		return testing.AllocsPerRun(100, func() {
			p, err := tapproxy.New(up, append(opts, tapproxy.WithTransport(cannedTransport{body}))...)
			if err != nil {
				panic(err)
			}
			p.ServeHTTP(discardWriter{}, req)
		})
	}
	zeroPolicy := tapproxy.WithCapturePolicy(func(*http.Response) int64 { return 0 })
	off := allocs(tapproxy.WithObserver(nop), tapproxy.WithCaptureLimit(0))
	policy0 := allocs(tapproxy.WithObserver(nop), zeroPolicy)
	captured := allocs(tapproxy.WithObserver(nop))
	t.Logf("allocs per new proxy and request: capture limit 0 %.1f, policy returning 0 %.1f, 64 KiB capture %.1f", off, policy0, captured)
	assert.Equal(t, off, policy0, "a policy returning 0 takes no buffer")
	assert.Greater(t, captured, policy0, "a capture takes a buffer, which a fresh pool allocates")
}

// discardWriter is a ResponseWriter that keeps nothing, so that allocation
// counts see only the proxy.
type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}
