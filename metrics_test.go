package tapproxy_test

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/tapproxy/tapproxy"
)

// specDurationBuckets are the HTTP semantic conventions' advised boundaries
// for request durations.
var specDurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// sizeBuckets are the documented boundaries for body sizes.
var sizeBuckets = []float64{0, 64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20}

// observerBuckets are the documented boundaries for observer durations.
var observerBuckets = []float64{0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}

// newReader returns a MeterProvider backed by a ManualReader.
func newReader(tb testing.TB) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	tb.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tb.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return mp, reader
}

// collect returns the proxy's metrics by name, checking its scope.
func collect(tb testing.TB, reader *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, reader.Collect(context.Background(), &rm))
	got := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != tapproxy.ScopeName {
			continue
		}
		assert.Equal(tb, tapproxy.Version, sm.Scope.Version)
		assert.Equal(tb, semconv.SchemaURL, sm.Scope.SchemaURL)
		for _, m := range sm.Metrics {
			got[m.Name] = m
		}
	}
	return got
}

// histogramCount sums the counts of a histogram's data points.
func histogramCount(m metricdata.Metrics) uint64 {
	var n uint64
	switch h := m.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, dp := range h.DataPoints {
			n += dp.Count
		}
	case metricdata.Histogram[int64]:
		for _, dp := range h.DataPoints {
			n += dp.Count
		}
	}
	return n
}

// waitRecorded waits until n exchanges have been recorded: the response
// reaches the client before the proxy records it.
func waitRecorded(tb testing.TB, reader *sdkmetric.ManualReader, n uint64) map[string]metricdata.Metrics {
	tb.Helper()
	var got map[string]metricdata.Metrics
	require.Eventually(tb, func() bool {
		got = collect(tb, reader)
		return histogramCount(got[httpconv.ServerRequestDuration{}.Name()]) >= n
	}, waitTimeout, 5*time.Millisecond, "exchanges not recorded")
	return got
}

// hostPort splits a test server's URL into the server.address and
// server.port attributes.
func hostPort(tb testing.TB, rawURL string) []attribute.KeyValue {
	tb.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(tb, err)
	port, err := strconv.Atoi(u.Port())
	require.NoError(tb, err)
	return []attribute.KeyValue{semconv.ServerAddressKey.String(u.Hostname()), semconv.ServerPortKey.Int(port)}
}

func set(kv ...attribute.KeyValue) attribute.Set { return attribute.NewSet(kv...) }

// histogram is an expected one-point histogram: its attributes, its count,
// and its sum when the value is deterministic (sum < 0 says it is not).
type histogram struct {
	attrs attribute.Set
	count uint64
	sum   float64
}

func floatHistogram(name, desc, unit string, bounds []float64, points ...histogram) metricdata.Metrics {
	h := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
	for _, p := range points {
		h.DataPoints = append(h.DataPoints, metricdata.HistogramDataPoint[float64]{
			Attributes: p.attrs, Count: p.count, Bounds: bounds, Sum: p.sum,
		})
	}
	return metricdata.Metrics{Name: name, Description: desc, Unit: unit, Data: h}
}

func intHistogram(name, desc, unit string, bounds []float64, points ...histogram) metricdata.Metrics {
	h := metricdata.Histogram[int64]{Temporality: metricdata.CumulativeTemporality}
	for _, p := range points {
		h.DataPoints = append(h.DataPoints, metricdata.HistogramDataPoint[int64]{
			Attributes: p.attrs, Count: p.count, Bounds: bounds, Sum: int64(p.sum),
		})
	}
	return metricdata.Metrics{Name: name, Description: desc, Unit: unit, Data: h}
}

func intSum(name, desc, unit string, monotonic bool, points ...metricdata.DataPoint[int64]) metricdata.Metrics {
	return metricdata.Metrics{Name: name, Description: desc, Unit: unit, Data: metricdata.Sum[int64]{
		Temporality: metricdata.CumulativeTemporality, IsMonotonic: monotonic, DataPoints: points,
	}}
}

// assertMetrics checks that got holds exactly the metrics in want: names,
// descriptions, units and attributes with metricdatatest, then the counts,
// bounds and deterministic sums of histograms, and the values of sums.
func assertMetrics(t *testing.T, want []metricdata.Metrics, got map[string]metricdata.Metrics) {
	t.Helper()
	var names []string
	for _, w := range want {
		names = append(names, w.Name)
	}
	gotNames := make([]string, 0, len(got))
	for name := range got {
		gotNames = append(gotNames, name)
	}
	assert.ElementsMatch(t, names, gotNames, "recorded instruments")
	for _, w := range want {
		g, ok := got[w.Name]
		if !ok {
			continue
		}
		metricdatatest.AssertEqual(t, w, g, metricdatatest.IgnoreTimestamp(),
			metricdatatest.IgnoreValue(), metricdatatest.IgnoreExemplars())
		switch wd := w.Data.(type) {
		case metricdata.Histogram[float64]:
			gd, ok := g.Data.(metricdata.Histogram[float64])
			require.True(t, ok, w.Name)
			assertPoints(t, w.Name, wd.DataPoints, gd.DataPoints)
		case metricdata.Histogram[int64]:
			gd, ok := g.Data.(metricdata.Histogram[int64])
			require.True(t, ok, w.Name)
			assertPoints(t, w.Name, wd.DataPoints, gd.DataPoints)
		case metricdata.Sum[int64]:
			metricdatatest.AssertEqual(t, w, g, metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
		}
	}
}

func assertPoints[N int64 | float64](t *testing.T, name string, want, got []metricdata.HistogramDataPoint[N]) {
	t.Helper()
	for _, w := range want {
		i := slices.IndexFunc(got, func(g metricdata.HistogramDataPoint[N]) bool { return g.Attributes.Equals(&w.Attributes) })
		if i < 0 {
			continue // metricdatatest reported it
		}
		g := got[i]
		assert.Equal(t, w.Count, g.Count, "%s %s: count", name, w.Attributes.Encoded(attribute.DefaultEncoder()))
		assert.Equal(t, w.Bounds, g.Bounds, "%s: bounds", name)
		var n uint64
		for _, c := range g.BucketCounts {
			n += c
		}
		assert.Equal(t, g.Count, n, "%s: bucket counts", name)
		if w.Sum >= 0 {
			assert.Equal(t, w.Sum, g.Sum, "%s %s: sum", name, w.Attributes.Encoded(attribute.DefaultEncoder()))
		}
	}
}

// exchangeMetrics is the expected record of one exchange without
// observers.
type exchangeMetrics struct {
	upstream           attribute.Set // server.address and server.port
	server, active     attribute.Set
	client, headers    *attribute.Set // nil: not recorded
	reqBytes, resBytes float64        // < 0: not deterministic
}

func (e exchangeMetrics) want() []metricdata.Metrics {
	want := []metricdata.Metrics{
		floatHistogram(httpconv.ServerRequestDuration{}.Name(), httpconv.ServerRequestDuration{}.Description(),
			"s", specDurationBuckets, histogram{e.server, 1, -1}),
		intSum(httpconv.ServerActiveRequests{}.Name(), httpconv.ServerActiveRequests{}.Description(),
			"{request}", false, metricdata.DataPoint[int64]{Attributes: e.active, Value: 0}),
		intHistogram(httpconv.ServerRequestBodySize{}.Name(), httpconv.ServerRequestBodySize{}.Description(),
			"By", sizeBuckets, histogram{e.server, 1, e.reqBytes}),
		intHistogram(httpconv.ServerResponseBodySize{}.Name(), httpconv.ServerResponseBodySize{}.Description(),
			"By", sizeBuckets, histogram{e.server, 1, e.resBytes}),
		heldGauge(0),
		budgetGauge(tapproxy.DefaultCaptureBudget),
	}
	if e.client != nil {
		want = append(want,
			floatHistogram(httpconv.ClientRequestDuration{}.Name(), httpconv.ClientRequestDuration{}.Description(),
				"s", specDurationBuckets, histogram{*e.client, 1, -1}),
			intSum(httpconv.ClientActiveRequests{}.Name(), httpconv.ClientActiveRequests{}.Description(),
				"{request}", false, metricdata.DataPoint[int64]{Attributes: e.upstream, Value: 0}),
		)
	}
	want = append(want, metricdata.Metrics{
		Name: "tapproxy.upstream.healthy", Description: "Whether an upstream is healthy (1) or ejected or down (0).", Unit: "{upstream}",
		Data: metricdata.Gauge[int64]{DataPoints: []metricdata.DataPoint[int64]{{Attributes: e.upstream, Value: 1}}},
	})
	if e.headers != nil {
		want = append(want, floatHistogram("tapproxy.upstream.time_to_headers",
			"Time from receiving a request until the upstream's response headers arrived.",
			"s", specDurationBuckets, histogram{*e.headers, 1, -1}))
	}
	return want
}

// heldGauge is the expected tapproxy.capture.held.
func heldGauge(v int64) metricdata.Metrics {
	return metricdata.Metrics{
		Name:        "tapproxy.capture.held",
		Description: "Bytes that the captures of in-flight exchanges hold now.",
		Unit:        "By",
		Data:        metricdata.Gauge[int64]{DataPoints: []metricdata.DataPoint[int64]{{Value: v}}},
	}
}

// budgetGauge is the expected tapproxy.capture.budget.
func budgetGauge(v int64) metricdata.Metrics {
	return metricdata.Metrics{
		Name:        "tapproxy.capture.budget",
		Description: "The capture budget: the most bytes that captures may hold together.",
		Unit:        "By",
		Data:        metricdata.Gauge[int64]{DataPoints: []metricdata.DataPoint[int64]{{Value: v}}},
	}
}

func TestMetricsPerOutcome(t *testing.T) {
	var (
		get     = semconv.HTTPRequestMethodKey.String("GET")
		other   = semconv.HTTPRequestMethodKey.String("_OTHER")
		http1   = semconv.URLSchemeKey.String("http")
		v11     = semconv.NetworkProtocolVersionKey.String("1.1")
		status  = semconv.HTTPResponseStatusCodeKey.Int
		errType = semconv.ErrorTypeKey.String
	)
	ptr := func(s attribute.Set) *attribute.Set { return &s }
	// client joins the upstream leg's attributes.
	client := func(up string, kv ...attribute.KeyValue) []attribute.KeyValue {
		return append(hostPort(t, up), kv...)
	}

	tests := []struct {
		name string
		// upstream serves the exchange; nil means nothing listens.
		upstream http.HandlerFunc
		opts     []tapproxy.Option
		// do sends the request through the proxy at front.
		do   func(t *testing.T, front string)
		want func(up string) exchangeMetrics
	}{
		{
			name: "success",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Write([]byte("hello"))
			},
			do: func(t *testing.T, front string) {
				res, err := http.Post(front+"/x", "text/plain", strings.NewReader("ping"))
				require.NoError(t, err)
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				require.NoError(t, err)
				require.Equal(t, "hello", string(body))
			},
			want: func(up string) exchangeMetrics {
				post := semconv.HTTPRequestMethodKey.String("POST")
				return exchangeMetrics{
					server:   set(post, http1, v11, status(200)),
					active:   set(post, http1),
					client:   ptr(set(client(up, post, http1, v11, status(200))...)),
					headers:  ptr(set(client(up, post, http1, v11, status(200))...)),
					reqBytes: 4, resBytes: 5,
				}
			},
		},
		{
			name: "upstream 5xx",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte("down"))
			},
			do: getStatus(http.StatusServiceUnavailable),
			want: func(up string) exchangeMetrics {
				return exchangeMetrics{
					server:   set(get, http1, v11, status(503), errType("503")),
					active:   set(get, http1),
					client:   ptr(set(client(up, get, http1, v11, status(503), errType("503"))...)),
					headers:  ptr(set(client(up, get, http1, v11, status(503))...)),
					reqBytes: 0, resBytes: 4,
				}
			},
		},
		{
			name: "upstream 4xx is an error only upstream",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				http.NotFound(w, r)
			},
			do: getStatus(http.StatusNotFound),
			want: func(up string) exchangeMetrics {
				return exchangeMetrics{
					server:   set(get, http1, v11, status(404)),
					active:   set(get, http1),
					client:   ptr(set(client(up, get, http1, v11, status(404), errType("404"))...)),
					headers:  ptr(set(client(up, get, http1, v11, status(404))...)),
					reqBytes: 0, resBytes: float64(len("404 page not found\n")),
				}
			},
		},
		{
			name: "dial error",
			do:   getStatus(http.StatusBadGateway),
			want: func(up string) exchangeMetrics {
				return exchangeMetrics{
					server:   set(get, http1, v11, status(502), errType("upstream_unavailable")),
					active:   set(get, http1),
					client:   ptr(set(client(up, get, http1, errType("upstream_unavailable"))...)),
					reqBytes: 0, resBytes: 0,
				}
			},
		},
		{
			name: "upstream timeout",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done() // until the proxy gives up
			},
			opts: []tapproxy.Option{tapproxy.WithTransport(&http.Transport{ResponseHeaderTimeout: 50 * time.Millisecond})},
			do:   getStatus(http.StatusGatewayTimeout),
			want: func(up string) exchangeMetrics {
				return exchangeMetrics{
					server:   set(get, http1, v11, status(504), errType("upstream_timeout")),
					active:   set(get, http1),
					client:   ptr(set(client(up, get, http1, errType("upstream_timeout"))...)),
					reqBytes: 0, resBytes: 0,
				}
			},
		},
		{
			name: "upstream reset mid-body",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "10")
				w.Write([]byte("12345"))
				http.NewResponseController(w).Flush()
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
			},
			// Flush at once, so that the client gets the headers before the cut.
			opts: []tapproxy.Option{tapproxy.WithFlushInterval(-1)},
			do: func(t *testing.T, front string) {
				res, err := http.Get(front + "/x")
				require.NoError(t, err)
				defer res.Body.Close()
				require.Equal(t, http.StatusOK, res.StatusCode)
				_, err = io.ReadAll(res.Body)
				require.Error(t, err) // the client sees the cut too
			},
			want: func(up string) exchangeMetrics {
				return exchangeMetrics{
					// The headers went out as 200; the failure came after.
					server:   set(get, http1, v11, status(200), errType("upstream_reset")),
					active:   set(get, http1),
					client:   ptr(set(client(up, get, http1, v11, status(200), errType("upstream_reset"))...)),
					headers:  ptr(set(client(up, get, http1, v11, status(200))...)),
					reqBytes: 0, resBytes: 5,
				}
			},
		},
		{
			name: "client abort",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				w.Write([]byte("first"))
				http.NewResponseController(w).Flush()
				<-r.Context().Done() // until the proxy gives up
			},
			do: func(t *testing.T, front string) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, front+"/x", nil)
				require.NoError(t, err)
				res, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				defer res.Body.Close()
				buf := make([]byte, 5)
				_, err = io.ReadFull(res.Body, buf)
				require.NoError(t, err)
				cancel()
			},
			want: func(up string) exchangeMetrics {
				return exchangeMetrics{
					server:   set(get, http1, v11, status(200), errType("client_gone")),
					active:   set(get, http1),
					client:   ptr(set(client(up, get, http1, v11, status(200), errType("client_gone"))...)),
					headers:  ptr(set(client(up, get, http1, v11, status(200))...)),
					reqBytes: 0, resBytes: -1,
				}
			},
		},
		{
			name: "unknown method",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				if r.Method != "FROB" {
					w.WriteHeader(http.StatusBadRequest)
				}
			},
			do: func(t *testing.T, front string) {
				req, err := http.NewRequest("FROB", front+"/x", nil)
				require.NoError(t, err)
				res, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				res.Body.Close()
				require.Equal(t, http.StatusOK, res.StatusCode)
			},
			want: func(up string) exchangeMetrics {
				return exchangeMetrics{
					server:   set(other, http1, v11, status(200)),
					active:   set(other, http1),
					client:   ptr(set(client(up, other, http1, v11, status(200))...)),
					headers:  ptr(set(client(up, other, http1, v11, status(200))...)),
					reqBytes: 0, resBytes: 0,
				}
			},
		},
		{
			name: "upgrade",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				c, err := websocket.Accept(w, r, nil)
				if err != nil {
					return
				}
				defer c.CloseNow()
				typ, msg, err := c.Read(r.Context())
				if err != nil {
					return
				}
				_ = c.Write(r.Context(), typ, msg)
				_ = c.Close(websocket.StatusNormalClosure, "")
			},
			do: func(t *testing.T, front string) {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				c, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(front, "http")+"/ws", nil)
				require.NoError(t, err)
				defer c.CloseNow()
				require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
				require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("echo")))
				_, msg, err := c.Read(ctx)
				require.NoError(t, err)
				require.Equal(t, "echo", string(msg))
				_, _, err = c.Read(ctx)
				require.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(err))
			},
			want: func(up string) exchangeMetrics {
				return exchangeMetrics{
					server:   set(get, http1, v11, status(101)),
					active:   set(get, http1),
					client:   ptr(set(client(up, get, http1, v11, status(101))...)),
					headers:  ptr(set(client(up, get, http1, v11, status(101))...)),
					reqBytes: 0, resBytes: 0,
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var up string
			if tt.upstream != nil {
				up = newUpstream(t, tt.upstream).URL
			} else {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				up = "http://" + ln.Addr().String()
				require.NoError(t, ln.Close())
			}
			mp, reader := newReader(t)
			front := newFrontend(t, up, append(tt.opts, tapproxy.WithMeterProvider(mp))...)

			tt.do(t, front.URL)
			got := waitRecorded(t, reader, 1)
			want := tt.want(up)
			want.upstream = set(hostPort(t, up)...)
			assertMetrics(t, want.want(), got)
		})
	}
}

func TestMetricsRoute(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	mp, reader := newReader(t)
	front := newFrontend(t, up.URL, tapproxy.WithMeterProvider(mp),
		tapproxy.WithRoute(func(r *http.Request) string {
			if strings.HasPrefix(r.URL.Path, "/users/") {
				return "/users/{id}"
			}
			return ""
		}),
		tapproxy.WithRoute(nil)) // ignored

	for _, p := range []string{"/users/1", "/users/2", "/other"} {
		get(t, front.Client(), front.URL+p)
	}
	got := waitRecorded(t, reader, 3)
	base := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String("GET"), semconv.URLSchemeKey.String("http"),
		semconv.NetworkProtocolVersionKey.String("1.1"), semconv.HTTPResponseStatusCodeKey.Int(200),
	}
	metricdatatest.AssertEqual(t,
		floatHistogram(httpconv.ServerRequestDuration{}.Name(), httpconv.ServerRequestDuration{}.Description(), "s",
			specDurationBuckets,
			histogram{set(append(base, semconv.HTTPRouteKey.String("/users/{id}"))...), 2, -1},
			histogram{set(base...), 1, -1}),
		got[httpconv.ServerRequestDuration{}.Name()],
		metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreValue(), metricdatatest.IgnoreExemplars())
	// The upstream leg has no route.
	metricdatatest.AssertHasAttributes(t, got[httpconv.ClientRequestDuration{}.Name()], hostPort(t, up.URL)...)
	routed := []string{httpconv.ServerRequestDuration{}.Name(), httpconv.ServerRequestBodySize{}.Name(),
		httpconv.ServerResponseBodySize{}.Name()}
	for _, m := range got {
		if slices.Contains(routed, m.Name) {
			assert.Contains(t, attributeKeys(m), semconv.HTTPRouteKey, m.Name)
			continue
		}
		assert.NotContains(t, attributeKeys(m), semconv.HTTPRouteKey, m.Name)
	}
}

// attributeKeys lists the attribute keys a metric's data points carry.
func attributeKeys(m metricdata.Metrics) []attribute.Key {
	var keys []attribute.Key
	add := func(s attribute.Set) {
		for _, kv := range s.ToSlice() {
			keys = append(keys, kv.Key)
		}
	}
	switch d := m.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, dp := range d.DataPoints {
			add(dp.Attributes)
		}
	case metricdata.Histogram[int64]:
		for _, dp := range d.DataPoints {
			add(dp.Attributes)
		}
	case metricdata.Sum[int64]:
		for _, dp := range d.DataPoints {
			add(dp.Attributes)
		}
	}
	return keys
}

func TestMetricsRoutePanicIsContained(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	mp, reader := newReader(t)
	rec := newRecorder()
	front := newFrontend(t, up.URL, tapproxy.WithMeterProvider(mp), tapproxy.WithObserver(rec),
		tapproxy.WithRoute(func(*http.Request) string { panic("route bug") }))

	res, _ := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, http.StatusOK, rec.next(t).Status)
	got := waitRecorded(t, reader, 1)
	assert.NotContains(t, attributeKeys(got[httpconv.ServerRequestDuration{}.Name()]), semconv.HTTPRouteKey)
}

func TestErrorTypeOfExchangeErrMatchesTheMetrics(t *testing.T) {
	// semconv.ErrorType gives an observer the value the metrics use.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	up := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	rec := newRecorder()
	front := newFrontend(t, up, tapproxy.WithObserver(rec))
	get(t, front.Client(), front.URL)
	o := rec.next(t)
	require.ErrorIs(t, o.Err, tapproxy.ErrUpstreamUnavailable)
	assert.Equal(t, semconv.ErrorTypeKey.String("upstream_unavailable"), semconv.ErrorType(o.Err))
}

func TestMetricsActiveRequests(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	mp, reader := newReader(t)
	front := newFrontend(t, up.URL, tapproxy.WithMeterProvider(mp))
	name := httpconv.ServerActiveRequests{}.Name()
	active := func(v int64) metricdata.Metrics {
		return intSum(name, httpconv.ServerActiveRequests{}.Description(), "{request}", false,
			metricdata.DataPoint[int64]{Attributes: set(
				semconv.HTTPRequestMethodKey.String("GET"), semconv.URLSchemeKey.String("http")), Value: v})
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		res, err := http.Get(front.URL)
		if err == nil {
			res.Body.Close()
		}
	}()
	select {
	case <-arrived:
	case <-time.After(waitTimeout):
		t.Fatal("request did not reach the upstream")
	}
	metricdatatest.AssertEqual(t, active(1), collect(t, reader)[name], metricdatatest.IgnoreTimestamp())
	close(release)
	<-done
	got := waitRecorded(t, reader, 1)
	metricdatatest.AssertEqual(t, active(0), got[name], metricdatatest.IgnoreTimestamp())
}

func TestMetricsCustomErrorHandlerStatus(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	up := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	mp, reader := newReader(t)
	front := newFrontend(t, up, tapproxy.WithMeterProvider(mp),
		tapproxy.WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}))

	res, _ := get(t, front.Client(), front.URL)
	require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	got := waitRecorded(t, reader, 1)
	metricdatatest.AssertHasAttributes(t, got[httpconv.ServerRequestDuration{}.Name()],
		semconv.HTTPResponseStatusCodeKey.Int(503), semconv.ErrorTypeKey.String("upstream_unavailable"))
}

func TestMetricsHTTPSAndHTTP2Client(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	mp, reader := newReader(t)
	target, err := url.Parse(up.URL)
	require.NoError(t, err)
	p, err := tapproxy.New(target, tapproxy.WithMeterProvider(mp), tapproxy.WithLogger(testLogger(t)))
	require.NoError(t, err)
	front := httptest.NewUnstartedServer(p)
	front.EnableHTTP2 = true
	front.StartTLS()
	t.Cleanup(front.Close)

	res, _ := get(t, front.Client(), front.URL)
	require.Equal(t, 2, res.ProtoMajor)
	got := waitRecorded(t, reader, 1)
	metricdatatest.AssertHasAttributes(t, got[httpconv.ServerRequestDuration{}.Name()],
		semconv.URLSchemeKey.String("https"), semconv.NetworkProtocolVersionKey.String("2"))
	metricdatatest.AssertHasAttributes(t, got[httpconv.ServerActiveRequests{}.Name()],
		semconv.URLSchemeKey.String("https"))
	// The upstream leg is plain HTTP/1.1.
	metricdatatest.AssertHasAttributes(t, got[httpconv.ClientRequestDuration{}.Name()],
		semconv.URLSchemeKey.String("http"), semconv.NetworkProtocolVersionKey.String("1.1"))
}

func TestMetricsStatusAfterModifyResponse(t *testing.T) {
	// The client-facing leg records what the client got, the upstream leg
	// what the upstream sent.
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	})
	mp, reader := newReader(t)
	front := newFrontend(t, up.URL, tapproxy.WithMeterProvider(mp),
		tapproxy.WithModifyResponse(func(res *http.Response) error {
			res.StatusCode = http.StatusOK
			return nil
		}))

	res, _ := get(t, front.Client(), front.URL)
	require.Equal(t, http.StatusOK, res.StatusCode)
	got := waitRecorded(t, reader, 1)
	server := got[httpconv.ServerRequestDuration{}.Name()]
	metricdatatest.AssertHasAttributes(t, server, semconv.HTTPResponseStatusCodeKey.Int(200))
	assert.NotContains(t, attributeKeys(server), semconv.ErrorTypeKey)
	metricdatatest.AssertHasAttributes(t, got[httpconv.ClientRequestDuration{}.Name()],
		semconv.HTTPResponseStatusCodeKey.Int(500), semconv.ErrorTypeKey.String("500"))
}

func TestMetricsObserversAndCapture(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("0123456789"))
	})
	mp, reader := newReader(t)
	rec := newRecorder()
	front := newFrontend(t, up.URL, tapproxy.WithMeterProvider(mp),
		tapproxy.WithCaptureLimit(4),
		tapproxy.WithRequestCaptureLimit(100),
		tapproxy.WithObserver(
			tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) { panic("observer bug") }),
			rec))

	for range 2 {
		res, err := front.Client().Post(front.URL, "text/plain", strings.NewReader("abc"))
		require.NoError(t, err)
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		rec.next(t) // observers run after the metrics are recorded
	}

	got := collect(t, reader)
	first, second := set(attribute.Int("tapproxy.observer.index", 0)), set(attribute.Int("tapproxy.observer.index", 1))
	response, request := set(attribute.String("tapproxy.body", "response")), set(attribute.String("tapproxy.body", "request"))
	want := []metricdata.Metrics{
		intSum("tapproxy.capture.bytes", "Body bytes kept for observers.", "By", true,
			metricdata.DataPoint[int64]{Attributes: response, Value: 2 * 4},
			metricdata.DataPoint[int64]{Attributes: request, Value: 2 * 3}),
		intSum("tapproxy.capture.truncated", "Exchanges whose body was longer than its capture limit.", "{exchange}", true,
			metricdata.DataPoint[int64]{Attributes: response, Value: 2}),
		intSum("tapproxy.observer.panics", "Observer calls that panicked.", "{panic}", true,
			metricdata.DataPoint[int64]{Attributes: first, Value: 2}),
	}
	for _, w := range want {
		metricdatatest.AssertEqual(t, w, got[w.Name], metricdatatest.IgnoreTimestamp())
	}
	// The second observer's second call may still be being timed.
	require.Eventually(t, func() bool {
		return histogramCount(collect(t, reader)["tapproxy.observer.duration"]) == 4
	}, waitTimeout, 5*time.Millisecond)
	dur := floatHistogram("tapproxy.observer.duration", "Time an observer took to handle an exchange.", "s",
		observerBuckets, histogram{first, 2, -1}, histogram{second, 2, -1})
	assertMetrics(t, []metricdata.Metrics{dur},
		map[string]metricdata.Metrics{dur.Name: collect(t, reader)[dur.Name]})
}

// globalReader reads the global MeterProvider, which can be set only once
// per test binary.
var (
	globalReader     = sdkmetric.NewManualReader()
	setGlobalMetrics = sync.OnceFunc(func() {
		otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(globalReader)))
	})
)

func TestMetricsDefaultProviderIsTheGlobalOne(t *testing.T) {
	// Without WithMeterProvider the proxy uses the global provider, a no-op
	// until the application sets one, even after the proxy was created.
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	front := newFrontend(t, up.URL, tapproxy.WithMeterProvider(nil))
	res, body := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "ok", string(body))

	setGlobalMetrics()
	before := histogramCount(collect(t, globalReader)[httpconv.ServerRequestDuration{}.Name()])
	get(t, front.Client(), front.URL+"/2")
	waitRecorded(t, globalReader, before+1)
}

// failingMeter fails to create one instrument.
type failingProvider struct{ noop.MeterProvider }

func (failingProvider) Meter(string, ...metric.MeterOption) metric.Meter { return failingMeter{} }

type failingMeter struct{ noop.Meter }

func (failingMeter) Int64Counter(name string, _ ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return noop.Int64Counter{}, errors.New("no room for " + name)
}

func TestNewFailsWhenAnInstrumentCannotBeCreated(t *testing.T) {
	target, err := url.Parse("http://127.0.0.1:1")
	require.NoError(t, err)
	p, err := tapproxy.New(target, tapproxy.WithMeterProvider(failingProvider{}))
	require.Error(t, err)
	assert.Nil(t, p)
	assert.True(t, strings.HasPrefix(err.Error(), "tapproxy: "), err.Error())
	assert.Contains(t, err.Error(), "no room for tapproxy.capture.bytes")
}

// BenchmarkMetrics compares a proxied request with metrics off (the default,
// a provider that records nothing) and on (the SDK), through real servers.
func BenchmarkMetrics(b *testing.B) {
	up := newUpstream(b, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	cases := []struct {
		name string
		mp   func(b *testing.B) metric.MeterProvider
	}{
		{"off", func(*testing.B) metric.MeterProvider { return noop.NewMeterProvider() }},
		{"on", func(b *testing.B) metric.MeterProvider { mp, _ := newReader(b); return mp }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			front := newFrontend(b, up.URL, tapproxy.WithMeterProvider(c.mp(b)))
			client := front.Client()
			b.ReportAllocs()
			for b.Loop() {
				res, err := client.Get(front.URL)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		})
	}
}

// roundTripFunc answers without a network, to measure the proxy alone.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// BenchmarkMetricsInProcess is BenchmarkMetrics without the network: the
// proxy's ServeHTTP with a canned upstream response, so that the cost of
// recording stands out.
func BenchmarkMetricsInProcess(b *testing.B) {
	target, err := url.Parse("http://127.0.0.1:1")
	require.NoError(b, err)
	upstream := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{
			StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, ContentLength: 2, Body: io.NopCloser(strings.NewReader("ok")), Request: r,
		}, nil
	})
	cases := []struct {
		name string
		mp   func(b *testing.B) metric.MeterProvider
	}{
		{"off", func(*testing.B) metric.MeterProvider { return noop.NewMeterProvider() }},
		{"on", func(b *testing.B) metric.MeterProvider { mp, _ := newReader(b); return mp }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			p, err := tapproxy.New(target, tapproxy.WithTransport(upstream), tapproxy.WithMeterProvider(c.mp(b)),
				tapproxy.WithLogger(testLogger(b)))
			require.NoError(b, err)
			req := httptest.NewRequest(http.MethodGet, "http://proxy/x", nil)
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				p.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatal(w.Code)
				}
			}
		})
	}
}

// attrSets returns the attribute sets of a metric's data points.
func attrSets(m metricdata.Metrics) []attribute.Set {
	var sets []attribute.Set
	switch d := m.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	case metricdata.Histogram[int64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	case metricdata.Sum[int64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	case metricdata.Sum[float64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	}
	return sets
}

func TestMetricsCardinalityIsBounded(t *testing.T) {
	// Whatever methods, hosts and paths clients send, the attribute sets
	// stay few: unknown methods become _OTHER, and neither the Host header
	// nor the path becomes an attribute.
	const n = 10_000
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mp, reader := newReader(t)
	front := newFrontend(t, up.URL, tapproxy.WithMeterProvider(mp),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) {})))

	known := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
	rng := rand.New(rand.NewPCG(1, 2)) // reproducible
	word := func(alphabet string, size int) string {
		b := make([]byte, size)
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	type request struct{ method, host, path string }
	reqs := make([]request, n)
	sent := map[string]bool{} // every random value a client sent
	others := 0
	for i := range reqs {
		r := &reqs[i]
		if rng.IntN(5) == 0 {
			r.method = known[rng.IntN(len(known))]
		} else {
			r.method = "X" + word("ABCDEFGHIJKLMNOPQRSTUVWXYZ-", 3+rng.IntN(8))
			others++
			sent[r.method] = true
		}
		r.host = word("abcdefghijklmnopqrstuvwxyz0123456789", 12) + ".example:" + strconv.Itoa(1+rng.IntN(65535))
		r.path = "/" + word("abcdefghijklmnopqrstuvwxyz0123456789", 16)
		sent[r.host], sent[hostOf("http://"+r.host)], sent[r.path] = true, true, true
	}

	tr := &http.Transport{MaxIdleConnsPerHost: 8}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var (
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for range 8 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < n && !t.Failed(); i = next.Add(1) - 1 {
				r := reqs[i]
				req, err := http.NewRequest(r.method, front.URL+r.path, nil)
				if !assert.NoError(t, err) {
					return
				}
				req.Host = r.host
				res, err := client.Do(req)
				if !assert.NoError(t, err) {
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				assert.Equal(t, http.StatusOK, res.StatusCode)
			}
		})
	}
	wg.Wait()
	require.False(t, t.Failed())

	got := waitRecorded(t, reader, n)
	methods := map[string]uint64{}
	for _, dp := range got[httpconv.ServerRequestDuration{}.Name()].Data.(metricdata.Histogram[float64]).DataPoints {
		m, _ := dp.Attributes.Value(semconv.HTTPRequestMethodKey)
		methods[m.AsString()] += dp.Count
	}
	assert.Equal(t, uint64(others), methods["_OTHER"], "unknown methods are recorded as _OTHER")
	assert.LessOrEqual(t, len(methods), len(known)+1)

	var distinct []attribute.Set
	for name, m := range got {
		sets := attrSets(m)
		// One set per method at most, on every instrument.
		assert.LessOrEqual(t, len(sets), len(known)+1, "%s has %d attribute sets", name, len(sets))
		for _, s := range sets {
			for _, kv := range s.ToSlice() {
				assert.False(t, sent[kv.Value.Emit()], "%s: %s=%q is what a client sent", name, kv.Key, kv.Value.Emit())
			}
			if !slices.ContainsFunc(distinct, func(d attribute.Set) bool { return d.Equals(&s) }) {
				distinct = append(distinct, s)
			}
		}
	}
	// The server, active-request and client sets per method, the
	// observer's and the response capture's, and the upstream's own (its
	// active requests and health).
	assert.LessOrEqual(t, len(distinct), 3*(len(known)+1)+3, "distinct attribute sets across all metrics")
}

// getStatus returns a step that GETs /x through the proxy and requires
// the given status.
func getStatus(code int) func(t *testing.T, front string) {
	return func(t *testing.T, front string) {
		res, err := http.Get(front + "/x")
		require.NoError(t, err)
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		require.Equal(t, code, res.StatusCode)
	}
}

// attemptPoints returns the count of http.client.request.duration points
// by server.port, with the error.type of each ("" for none).
func attemptPoints(tb testing.TB, m metricdata.Metrics) map[int64]map[string]uint64 {
	tb.Helper()
	h, ok := m.Data.(metricdata.Histogram[float64])
	require.True(tb, ok, "http.client.request.duration is a float64 histogram")
	out := map[int64]map[string]uint64{}
	for _, dp := range h.DataPoints {
		port, ok := dp.Attributes.Value(semconv.ServerPortKey)
		require.True(tb, ok, "every point has server.port")
		_, ok = dp.Attributes.Value(semconv.ServerAddressKey)
		require.True(tb, ok, "every point has server.address")
		et, _ := dp.Attributes.Value(semconv.ErrorTypeKey)
		if out[port.AsInt64()] == nil {
			out[port.AsInt64()] = map[string]uint64{}
		}
		out[port.AsInt64()][et.AsString()] += dp.Count
	}
	return out
}

func portOf(tb testing.TB, u *url.URL) int64 {
	tb.Helper()
	p, err := strconv.Atoi(u.Port())
	require.NoError(tb, err)
	return int64(p)
}

func TestMetricsOfEachAttempt(t *testing.T) {
	dead := deadURL(t)
	resetter := mustParse(t, newUpstream(t, func(w http.ResponseWriter, r *http.Request) { resetConn(w) }).URL)
	live := newFleet(t, 1, nil).urls(t)[0]
	mp, reader := newReader(t)
	log := newAttemptLog()
	p := newBalanced(t, []*url.URL{dead, resetter, live}, tapproxy.WithBalancer(tapproxy.First()),
		tapproxy.WithMeterProvider(mp), tapproxy.WithObserver(log), tapproxy.WithRetry(tapproxy.Retry{}))
	front := serve(t, p, false)
	res, _ := get(t, front.Client(), front.URL)
	require.Equal(t, http.StatusOK, res.StatusCode)
	a := log.next(t)
	assert.Equal(t, 3, a.Attempts)
	assert.Equal(t, live.Host, a.Upstream)
	assert.NoError(t, a.Err)

	got := waitRecorded(t, reader, 1)
	assert.Equal(t, map[int64]map[string]uint64{
		portOf(t, dead):     {"upstream_unavailable": 1},
		portOf(t, resetter): {"upstream_reset": 1},
		portOf(t, live):     {"": 1},
	}, attemptPoints(t, got[httpconv.ClientRequestDuration{}.Name()]), "one point per attempt, with its upstream")
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, dead, attribute.String("tapproxy.retry.reason", "dial"))):      1,
		key(upAttrs(t, resetter, attribute.String("tapproxy.retry.reason", "reset"))): 1,
	}, sumPoints(got["tapproxy.retries"]), "retries by reason, with the failed attempt's upstream")
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, dead)):     0,
		key(upAttrs(t, resetter)): 0,
		key(upAttrs(t, live)):     0,
	}, sumPoints(got[httpconv.ClientActiveRequests{}.Name()]), "every attempt's hold ended")
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, dead)):     1,
		key(upAttrs(t, resetter)): 1,
		key(upAttrs(t, live)):     1,
	}, sumPoints(got["tapproxy.upstream.healthy"]), "one failure each ejects nobody")
	assert.EqualValues(t, 1, histogramCount(got[httpconv.ServerRequestDuration{}.Name()]), "one server point per request")
}

func TestMetricsClientActiveRequestsPerUpstream(t *testing.T) {
	held, release := make(chan struct{}, 1), make(chan struct{})
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		if i == 0 {
			held <- struct{}{}
			<-release
		}
	})
	mp, reader := newReader(t)
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithMeterProvider(mp))
	front := serve(t, p, false)
	res, err := front.Client().Get(front.URL)
	require.NoError(t, err)
	defer res.Body.Close()
	<-held
	active := func() map[attribute.Distinct]int64 {
		return sumPoints(collect(t, reader)[httpconv.ClientActiveRequests{}.Name()])
	}
	assert.Equal(t, map[attribute.Distinct]int64{key(upAttrs(t, f.urls(t)[0])): 1}, active(),
		"in flight while the body streams")
	close(release)
	io.Copy(io.Discard, res.Body)
	require.Eventually(t, func() bool { return active()[key(upAttrs(t, f.urls(t)[0]))] == 0 }, waitTimeout, time.Millisecond)
}

func TestOneObserverCallPerRequest(t *testing.T) {
	const requests, workers = 300, 8
	busy := mustParse(t, newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}).URL)
	live := newFleet(t, 1, nil).urls(t)[0]
	dead := deadURL(t)
	mp, reader := newReader(t)
	log := newAttemptLog()
	p := newBalanced(t, []*url.URL{dead, busy, live}, tapproxy.WithBalancer(tapproxy.RoundRobin()),
		tapproxy.WithMeterProvider(mp), tapproxy.WithObserver(log),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: -1}),
		tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}, Budget: 1}))
	front := serve(t, p, false)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= requests {
				res, err := front.Client().Get(front.URL)
				if assert.NoError(t, err) {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					assert.Equal(t, http.StatusOK, res.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	front.Close()
	all := log.snapshot()
	require.Len(t, all, requests)
	attempts := 0
	for _, a := range all {
		assert.Equal(t, live.Host, a.Upstream)
		assert.Equal(t, http.StatusOK, a.Status)
		assert.GreaterOrEqual(t, a.Attempts, 1)
		assert.LessOrEqual(t, a.Attempts, 3)
		attempts += a.Attempts
	}
	got := collect(t, reader)
	assert.EqualValues(t, attempts, histogramCount(got[httpconv.ClientRequestDuration{}.Name()]), "one client point per attempt")
	assert.EqualValues(t, requests, histogramCount(got[httpconv.ServerRequestDuration{}.Name()]))
}
