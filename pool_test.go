package tapproxy_test

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/tapproxy/tapproxy"
)

// fleet is a set of upstreams on loopback that answer with their index, in
// the body and in X-Upstream, and count what they were sent.
type fleet struct {
	srvs []*httptest.Server
	hits []atomic.Int64
}

// newFleet starts n upstreams. h, if not nil, serves upstream i in place
// of the default answer.
func newFleet(tb testing.TB, n int, h func(i int, w http.ResponseWriter, r *http.Request)) *fleet {
	tb.Helper()
	f := &fleet{hits: make([]atomic.Int64, n)}
	for i := range n {
		f.srvs = append(f.srvs, newUpstream(tb, func(w http.ResponseWriter, r *http.Request) {
			f.hits[i].Add(1)
			w.Header().Set("X-Upstream", strconv.Itoa(i))
			if h != nil {
				h(i, w, r)
				return
			}
			io.WriteString(w, strconv.Itoa(i))
		}))
	}
	return f
}

// urls returns the targets of the upstreams at idx, all of them if idx is
// empty.
func (f *fleet) urls(tb testing.TB, idx ...int) []*url.URL {
	tb.Helper()
	if len(idx) == 0 {
		for i := range f.srvs {
			idx = append(idx, i)
		}
	}
	var out []*url.URL
	for _, i := range idx {
		out = append(out, mustParse(tb, f.srvs[i].URL))
	}
	return out
}

// counts returns how many requests each upstream was sent.
func (f *fleet) counts() []int64 {
	out := make([]int64, len(f.hits))
	for i := range f.hits {
		out[i] = f.hits[i].Load()
	}
	return out
}

// newBalanced builds a Proxy over targets whose logs go to tb.Log, and
// closes it when the test ends.
func newBalanced(tb testing.TB, targets []*url.URL, opts ...tapproxy.Option) *tapproxy.Proxy {
	tb.Helper()
	opts = append([]tapproxy.Option{tapproxy.WithLogger(testLogger(tb))}, opts...)
	p, err := tapproxy.NewBalanced(targets, opts...)
	require.NoError(tb, err)
	tb.Cleanup(func() { p.Close() })
	return p
}

// which sends a GET through c and returns the X-Upstream of the answer,
// -1 if there was none, with the status.
func which(tb testing.TB, c *http.Client, u string) (int, int) {
	tb.Helper()
	res, _ := get(tb, c, u)
	i, err := strconv.Atoi(res.Header.Get("X-Upstream"))
	if err != nil {
		return -1, res.StatusCode
	}
	return i, res.StatusCode
}

// statusOf returns the status of the upstream at u among those of p.
func statusOf(tb testing.TB, p *tapproxy.Proxy, u *url.URL) tapproxy.UpstreamStatus {
	tb.Helper()
	for _, s := range p.Upstreams() {
		if s.URL.String() == u.String() {
			return s
		}
	}
	tb.Fatalf("%s is not an upstream of the proxy", u)
	return tapproxy.UpstreamStatus{}
}

// sumPoints returns the values of an int64 sum or gauge by attribute set.
func sumPoints(m metricdata.Metrics) map[attribute.Distinct]int64 {
	out := map[attribute.Distinct]int64{}
	var dps []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		dps = d.DataPoints
	case metricdata.Gauge[int64]:
		dps = d.DataPoints
	}
	for _, dp := range dps {
		out[dp.Attributes.Equivalent()] += dp.Value
	}
	return out
}

// upAttrs returns the server.address and server.port of an upstream's URL,
// plus extra attributes, as a set.
func upAttrs(tb testing.TB, u *url.URL, extra ...attribute.KeyValue) attribute.Set {
	tb.Helper()
	return set(append(hostPort(tb, u.String()), extra...)...)
}

// key returns the map key of an attribute set.
func key(s attribute.Set) attribute.Distinct { return s.Equivalent() }

func TestEmptyPoolAnswersNoUpstream(t *testing.T) {
	f := newFleet(t, 1, nil)
	mp, reader := newReader(t)
	rec := newRecorder()
	p := newBalanced(t, f.urls(t), tapproxy.WithObserver(rec), tapproxy.WithMeterProvider(mp))
	front := serve(t, p, false)

	require.NoError(t, p.SetUpstreams(nil))
	assert.Empty(t, p.Upstreams())
	res, _ := get(t, front.Client(), front.URL+"/x")
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	o := rec.next(t)
	assert.ErrorIs(t, o.Err, tapproxy.ErrNoUpstream)
	assert.Equal(t, "/x", o.Path, "the exchange holds the inbound request")

	got := waitRecorded(t, reader, 1)
	assert.Equal(t, []attribute.Set{set(
		semconv.HTTPRequestMethodKey.String("GET"),
		semconv.URLSchemeKey.String("http"),
		semconv.HTTPResponseStatusCode(http.StatusServiceUnavailable),
		semconv.NetworkProtocolVersion("1.1"),
		semconv.ErrorTypeKey.String("no_upstream"),
	)}, attrSets(got[httpconv.ServerRequestDuration{}.Name()]))
	assert.NotContains(t, got, httpconv.ClientRequestDuration{}.Name(), "no attempt was made")
	assert.Empty(t, sumPoints(got["tapproxy.balancer.fail_open"]), "an empty pool is not a fail-open")
	assert.Empty(t, sumPoints(got["tapproxy.upstream.healthy"]), "no upstream reports health")

	// Maintenance ends with the next set.
	require.NoError(t, p.SetUpstreams(f.urls(t)))
	i, code := which(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, 0, i)
	assert.Equal(t, 2, closeAndCount(t, front, rec), "one observer call per request")
}

func TestEmptyPoolObservedOnce(t *testing.T) {
	var calls atomic.Int64
	var ex struct {
		attempts int
		upstream *url.URL
		err      error
	}
	obs := tapproxy.ObserverFunc(func(_ context.Context, e *tapproxy.Exchange) {
		calls.Add(1)
		ex.attempts, ex.upstream, ex.err = e.Attempts, e.Upstream, e.Err
	})
	f := newFleet(t, 1, nil)
	p := newBalanced(t, f.urls(t), tapproxy.WithObserver(obs),
		tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{503}}))
	front := serve(t, p, false)
	require.NoError(t, p.SetUpstreams(nil))
	res, _ := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	front.Close()
	assert.EqualValues(t, 1, calls.Load())
	assert.Zero(t, ex.attempts)
	assert.Nil(t, ex.upstream)
	assert.ErrorIs(t, ex.err, tapproxy.ErrNoUpstream)
	assert.Zero(t, f.hits[0].Load())
}

func TestSetUpstreamsUnderLoad(t *testing.T) {
	f := newFleet(t, 4, nil)
	mp, reader := newReader(t)
	p := newBalanced(t, f.urls(t, 0, 1, 2), tapproxy.WithMeterProvider(mp))
	front := serve(t, p, false)

	sets := [][]int{{1, 2, 3}, {3}, {0, 3}, {2, 3}, {0, 1, 2, 3}, {1, 3}}
	var (
		wg     sync.WaitGroup
		failed atomic.Int64
		sent   atomic.Int64
		stop   = make(chan struct{})
	)
	c := front.Client()
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := c.Get(front.URL)
				sent.Add(1)
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
	for _, s := range sets {
		// Let some requests run against each set.
		n := sent.Load()
		require.Eventually(t, func() bool { return sent.Load() >= n+50 }, waitTimeout, time.Millisecond)
		require.NoError(t, p.SetUpstreams(f.urls(t, s...)))
	}
	n := sent.Load()
	require.Eventually(t, func() bool { return sent.Load() >= n+50 }, waitTimeout, time.Millisecond)
	close(stop)
	wg.Wait()
	front.Close() // waits for the handlers: every request has settled
	assert.Zero(t, failed.Load(), "requests failed while the set changed")

	final := f.urls(t, 1, 3)
	var urls []string
	for _, s := range p.Upstreams() {
		urls = append(urls, s.URL.String())
	}
	assert.Equal(t, []string{final[0].String(), final[1].String()}, urls)

	got := collect(t, reader)
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, final[0])): 1,
		key(upAttrs(t, final[1])): 1,
	}, sumPoints(got["tapproxy.upstream.healthy"]), "removed upstreams stop reporting health")
	for _, v := range sumPoints(got[httpconv.ClientActiveRequests{}.Name()]) {
		assert.Zero(t, v, "requests still counted in flight")
	}
}

func TestSetUpstreamsKeepsHealthAndInFlight(t *testing.T) {
	hold, held := make(chan struct{}), make(chan struct{}, 1)
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		if i == 0 {
			// Headers now, the body once released: the request is in
			// flight until its body has ended.
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			held <- struct{}{}
			<-hold
		}
		io.WriteString(w, strconv.Itoa(i))
	})
	dead := deadURL(t)
	targets := append([]*url.URL{dead}, f.urls(t)...)
	p := newBalanced(t, targets, tapproxy.WithBalancer(tapproxy.First()),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1, Ejection: time.Hour}))
	front := serve(t, p, false)

	// The dead upstream is ejected, and the request goes on to upstream 0,
	// which holds its body.
	res, err := front.Client().Get(front.URL)
	require.NoError(t, err)
	defer res.Body.Close()
	<-held
	before := p.Upstreams()
	require.False(t, before[0].Healthy)
	require.False(t, before[0].EjectedUntil.IsZero())
	require.Equal(t, 1, before[1].InFlight)

	// A new set with the same targets in another order, and a new one.
	fresh := newFleet(t, 1, nil)
	next := []*url.URL{fresh.urls(t)[0], f.urls(t)[0], dead, f.urls(t)[1]}
	require.NoError(t, p.SetUpstreams(next))
	after := p.Upstreams()
	require.Len(t, after, 4)
	assert.True(t, after[0].Healthy, "a new upstream starts healthy")
	assert.Zero(t, after[0].InFlight)
	assert.Equal(t, 1, after[1].InFlight, "a kept upstream keeps its in-flight count")
	assert.False(t, after[2].Healthy, "a kept upstream keeps its ejection")
	assert.Equal(t, before[0].EjectedUntil, after[2].EjectedUntil)
	assert.Error(t, after[2].LastError)

	close(hold)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	assert.Equal(t, "0", string(body))
	require.Eventually(t, func() bool { return statusOf(t, p, f.urls(t)[0]).InFlight == 0 },
		waitTimeout, time.Millisecond, "the held request ends its hold on the kept upstream")
}

func TestSetUpstreamsWeights(t *testing.T) {
	f := newFleet(t, 3, nil)
	p := newBalanced(t, f.urls(t, 0, 1), tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(3, 2)))
	weights := func() []int {
		var w []int
		for _, s := range p.Upstreams() {
			w = append(w, s.Weight)
		}
		return w
	}
	assert.Equal(t, []int{3, 2}, weights())
	require.NoError(t, p.SetUpstreams(f.urls(t, 2, 1, 0)))
	assert.Equal(t, []int{1, 2, 3}, weights(), "kept targets keep their weight, a new one gets 1")

	front := serve(t, p, false)
	for range 60 {
		i, code := which(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, code)
		require.NotEqual(t, -1, i)
	}
	got := f.counts()
	// 60 requests over weights 3:2:1, give or take the state carried over.
	assert.InDelta(t, 30, got[0], 2)
	assert.InDelta(t, 20, got[1], 2)
	assert.InDelta(t, 10, got[2], 2)
}

func TestInFlightRequestsFinishAgainstTheirSet(t *testing.T) {
	held, hold := make(chan struct{}, 1), make(chan struct{})
	var paths [4]atomic.Value
	f := newFleet(t, 4, func(i int, w http.ResponseWriter, r *http.Request) {
		paths[i].Store(r.URL.Path)
		if i == 0 {
			held <- struct{}{}
			<-hold
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, strconv.Itoa(i))
	})
	base := func(i int, path string) *url.URL {
		u := f.urls(t, i)[0]
		u.Path = path
		return u
	}
	p := newBalanced(t, []*url.URL{base(0, "/v1"), base(1, "/v1")},
		tapproxy.WithBalancer(tapproxy.First()),
		tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{http.StatusServiceUnavailable}}))
	front := serve(t, p, false)

	type result struct {
		i, code int
	}
	done := make(chan result, 1)
	go func() {
		res, err := front.Client().Get(front.URL + "/x")
		if err != nil {
			done <- result{-1, 0}
			return
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		i, _ := strconv.Atoi(res.Header.Get("X-Upstream"))
		done <- result{i, res.StatusCode}
	}()
	<-held
	// Another scheme's worth of change: another base path, other hosts.
	require.NoError(t, p.SetUpstreams([]*url.URL{base(2, "/v2"), base(3, "/v2/")}))
	close(hold)
	r := <-done
	assert.Equal(t, result{1, http.StatusOK}, r, "the retry goes to the set the request started with")
	assert.Equal(t, "/v1/x", paths[1].Load())
	assert.Zero(t, f.hits[2].Load()+f.hits[3].Load())

	i, code := which(t, front.Client(), front.URL+"/x")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, 2, i)
	assert.Equal(t, "/v2/x", paths[2].Load())
}

func TestUpstreamsReportsState(t *testing.T) {
	f := newFleet(t, 1, nil)
	dead := deadURL(t)
	p := newBalanced(t, []*url.URL{dead, f.urls(t)[0]}, tapproxy.WithBalancer(tapproxy.First()),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 2, Ejection: time.Hour}))
	front := serve(t, p, false)

	st := p.Upstreams()
	require.Len(t, st, 2)
	for i, s := range st {
		assert.Equal(t, []*url.URL{dead, f.urls(t)[0]}[i].String(), s.URL.String())
		assert.True(t, s.Healthy)
		assert.Zero(t, s.InFlight)
		assert.Zero(t, s.EjectedUntil)
		assert.False(t, s.Down)
		assert.Zero(t, s.Failures)
		assert.NoError(t, s.LastError)
		assert.Equal(t, 1, s.Weight)
	}
	st[0].URL.Host = "changed.example" // a copy: the pool's is untouched
	assert.Equal(t, dead.String(), p.Upstreams()[0].URL.String())

	_, code := which(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, code)
	s := p.Upstreams()[0]
	assert.True(t, s.Healthy)
	assert.Equal(t, 1, s.Failures)
	assert.Error(t, s.LastError)

	before := time.Now()
	_, code = which(t, front.Client(), front.URL)
	after := time.Now()
	assert.Equal(t, http.StatusOK, code)
	s = p.Upstreams()[0]
	assert.False(t, s.Healthy)
	assert.False(t, s.Down, "ejected by passive health, not down by checks")
	assert.WithinRange(t, s.EjectedUntil, before.Add(time.Hour), after.Add(time.Hour))
	assert.Equal(t, 1, p.Upstreams()[1].Weight)
}

func TestPoolTargetRules(t *testing.T) {
	f := newFleet(t, 2, nil)
	a, b := f.srvs[0].URL, f.srvs[1].URL
	tests := []struct {
		name    string
		targets []string
		want    string // "" for no error
	}{
		{"empty path equals slash", []string{a, b + "/"}, ""},
		{"trailing slash ignored", []string{a + "/v1", b + "/v1/"}, ""},
		{"escaped paths compare", []string{a + "/a%2Fb", b + "/a%2Fb"}, ""},
		{"different base paths", []string{a + "/v1", b + "/v2"}, "base path"},
		{"escaped and unescaped differ", []string{a + "/a%2Fb", b + "/a/b"}, "base path"},
		{"different schemes", []string{a, strings.Replace(b, "http:", "https:", 1)}, "scheme"},
		{"duplicate", []string{a, a}, "twice"},
		{"duplicate with a slash", []string{a, a + "/"}, "twice"},
		{"duplicate in another case", []string{a, strings.Replace(a, "127.0.0.1", "LOCALHOST", 1), strings.Replace(a, "127.0.0.1", "localhost", 1)}, "twice"},
		{"default port is the same port", []string{"http://example.test", "http://example.test:80"}, "twice"},
		{"query", []string{a + "/?x=1", b}, "query"},
		{"userinfo", []string{"http://u:p@" + hostOf(a), b}, "userinfo"},
		{"bad scheme", []string{"ftp://" + hostOf(a), b}, "scheme"},
		{"no host", []string{"http:///x"}, "no host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var targets []*url.URL
			for _, s := range tt.targets {
				targets = append(targets, mustParse(t, s))
			}
			var err error
			require.NotPanics(t, func() {
				var p *tapproxy.Proxy
				p, err = tapproxy.NewBalanced(targets, tapproxy.WithLogger(testLogger(t)))
				if p != nil {
					p.Close()
				}
			})
			p := newBalanced(t, f.urls(t))
			var setErr error
			require.NotPanics(t, func() { setErr = p.SetUpstreams(targets) })
			if tt.want == "" {
				assert.NoError(t, err)
				assert.NoError(t, setErr)
				return
			}
			for _, e := range []error{err, setErr} {
				require.Error(t, e)
				assert.True(t, strings.HasPrefix(e.Error(), "tapproxy: "), e.Error())
				assert.Contains(t, e.Error(), tt.want)
			}
			assert.Len(t, p.Upstreams(), 2, "a failed SetUpstreams leaves the set as it was")
		})
	}
}

func TestSetUpstreamsMayMoveSchemeAndBasePath(t *testing.T) {
	f := newFleet(t, 1, func(_ int, w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) })
	h2 := newH2Upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "tls "+r.URL.Path) })
	u := f.urls(t)[0]
	u.Path = "/v1"
	p := newBalanced(t, []*url.URL{u}, tapproxy.WithTransport(trustingTransport(t, h2)))
	front := serve(t, p, false)
	_, body := get(t, front.Client(), front.URL+"/x")
	assert.Equal(t, "/v1/x", string(body))

	next := mustParse(t, h2.URL+"/v2/")
	require.NoError(t, p.SetUpstreams([]*url.URL{next}))
	_, body = get(t, front.Client(), front.URL+"/x")
	assert.Equal(t, "tls /v2/x", string(body))
}

func TestBadInput(t *testing.T) {
	f := newFleet(t, 2, nil)
	good := f.urls(t)
	nan := math.NaN()
	tests := []struct {
		name    string
		targets []*url.URL // nil: good
		opts    []tapproxy.Option
		want    []string // substrings of the one error, one per problem
		set     bool     // SetUpstreams(targets) must fail the same way
		newOK   bool     // New, which has no weights, accepts the options
	}{
		{name: "no targets", targets: []*url.URL{}, want: []string{"at least one target"}},
		{name: "nil target", targets: []*url.URL{good[0], nil}, want: []string{"target 1 is nil"}, set: true},
		{name: "duplicate", targets: []*url.URL{good[0], good[1], good[0]}, want: []string{"twice"}, set: true},
		{name: "bad scheme", targets: []*url.URL{good[0], mustParse(t, "gopher://"+good[1].Host)}, want: []string{"scheme"}, set: true},
		{name: "weights for fewer targets", opts: []tapproxy.Option{tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(1))}, want: []string{"1 weights for 2 targets"}, newOK: true},
		{name: "weights for more targets", opts: []tapproxy.Option{tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(1, 2, 3))}, want: []string{"3 weights for 2 targets"}, newOK: true},
		{name: "no weights", opts: []tapproxy.Option{tapproxy.WithBalancer(tapproxy.WeightedRoundRobin())}, want: []string{"0 weights for 2 targets"}, newOK: true},
		{name: "weight below 1", opts: []tapproxy.Option{tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(1, 0))}, want: []string{"below 1"}, newOK: true},
		{name: "negative weight", opts: []tapproxy.Option{tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(-2, 1))}, want: []string{"below 1"}, newOK: true},
		{name: "different schemes", targets: []*url.URL{good[0], mustParse(t, "https://"+good[1].Host)}, want: []string{"scheme"}, set: true},
		{name: "different base paths", targets: []*url.URL{mustParse(t, good[0].String()+"/a"), mustParse(t, good[1].String()+"/b")}, want: []string{"base path"}, set: true},
		{name: "negative Attempts", opts: []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{Attempts: -1})}, want: []string{"Attempts -1"}},
		{name: "negative BodyLimit", opts: []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{BodyLimit: -1})}, want: []string{"BodyLimit -1"}},
		{name: "negative PerTry", opts: []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{PerTry: -time.Second})}, want: []string{"PerTry -1s"}},
		{name: "negative Budget", opts: []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{Budget: -0.1})}, want: []string{"Budget"}},
		{name: "Budget above 1", opts: []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{Budget: 1.5})}, want: []string{"Budget"}},
		{name: "Budget NaN", opts: []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{Budget: nan})}, want: []string{"Budget"}},
		{name: "negative Fails", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/h", Fails: -1})}, want: []string{"Fails -1"}},
		{name: "negative Passes", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/h", Passes: -1})}, want: []string{"Passes -1"}},
		{name: "negative Interval", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/h", Interval: -time.Second})}, want: []string{"negative duration"}},
		{name: "negative Timeout", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/h", Timeout: -time.Second})}, want: []string{"negative duration"}},
		{name: "negative UnhealthyInterval", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/h", UnhealthyInterval: -time.Second})}, want: []string{"negative duration"}},
		{name: "no Path", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Interval: time.Second})}, want: []string{"Path is required"}},
		{name: "relative Path", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "healthz"})}, want: []string{"absolute path"}},
		{name: "Timeout equals Interval", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/h", Interval: time.Second, Timeout: time.Second})}, want: []string{"must be below Interval"}},
		{name: "Timeout above Interval", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/h", Interval: time.Second, Timeout: 2 * time.Second})}, want: []string{"must be below Interval"}},
		{name: "Timeout above the default Interval", opts: []tapproxy.Option{tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/h", Timeout: time.Minute})}, want: []string{"must be below Interval"}},
		{name: "negative Ejection", opts: []tapproxy.Option{tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Ejection: -time.Second})}, want: []string{"negative duration"}},
		{name: "negative MaxEjection", opts: []tapproxy.Option{tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{MaxEjection: -time.Second})}, want: []string{"negative duration"}},
		{name: "bad fields of a passive health turned off", opts: []tapproxy.Option{tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: -1, Ejection: -time.Second, MaxEjectedPercent: 200})}, want: []string{"negative duration", "outside [0, 100]"}},
		{name: "negative MaxEjectedPercent", opts: []tapproxy.Option{tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{MaxEjectedPercent: -1})}, want: []string{"MaxEjectedPercent -1"}},
		{name: "MaxEjectedPercent above 100", opts: []tapproxy.Option{tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{MaxEjectedPercent: 101})}, want: []string{"MaxEjectedPercent 101"}},
		{
			name:    "several at once",
			targets: []*url.URL{nil, good[0], good[0]},
			opts: []tapproxy.Option{
				tapproxy.WithRetry(tapproxy.Retry{Attempts: -1, Budget: 2}),
				tapproxy.WithHealthCheck(tapproxy.HealthCheck{Interval: time.Second, Timeout: time.Second}),
				tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{MaxEjectedPercent: 200}),
			},
			want: []string{"target 0 is nil", "twice", "Attempts -1", "Budget", "Path is required", "must be below Interval", "MaxEjectedPercent 200"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			targets := tt.targets
			if targets == nil {
				targets = good
			}
			var (
				p   *tapproxy.Proxy
				err error
			)
			require.NotPanics(t, func() { p, err = tapproxy.NewBalanced(targets, tt.opts...) })
			require.Error(t, err)
			assert.Nil(t, p)
			checkJoined(t, err, tt.want)
			if tt.set {
				p := newBalanced(t, good)
				require.NotPanics(t, func() { err = p.SetUpstreams(targets) })
				require.Error(t, err)
				checkJoined(t, err, tt.want)
			}
			if len(tt.opts) > 0 && tt.targets == nil {
				// The options are checked by New as well.
				require.NotPanics(t, func() { p, err = tapproxy.New(good[0], tt.opts...) })
				if tt.newOK {
					require.NoError(t, err)
					p.Close()
				} else {
					require.Error(t, err)
					assert.Nil(t, p)
					checkJoined(t, err, tt.want)
				}
			}
		})
	}
}

// checkJoined checks that err is prefixed "tapproxy: " in each of its
// lines, and says each of want.
func checkJoined(tb testing.TB, err error, want []string) {
	tb.Helper()
	for _, line := range strings.Split(err.Error(), "\n") {
		assert.True(tb, strings.HasPrefix(line, "tapproxy: "), "%q lacks the prefix", line)
	}
	for _, w := range want {
		assert.Contains(tb, err.Error(), w)
	}
	if len(want) > 1 {
		var joined interface{ Unwrap() []error }
		require.True(tb, errors.As(err, &joined), "several problems make one joined error")
		assert.GreaterOrEqual(tb, len(strings.Split(err.Error(), "\n")), len(want))
	}
}

func TestSetUpstreamsChecksNewUpstreams(t *testing.T) {
	var checks [3]atomic.Int64
	f := newFleet(t, 3, func(i int, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			checks[i].Add(1)
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	p := newBalanced(t, f.urls(t, 0, 1), tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/healthz", Fails: 1, Interval: time.Hour}))
	require.Eventually(t, func() bool { return checks[0].Load() == 1 && checks[1].Load() == 1 }, waitTimeout, time.Millisecond)
	require.NoError(t, p.SetUpstreams(f.urls(t, 1, 2)))
	require.Eventually(t, func() bool { return statusOf(t, p, f.urls(t)[2]).Down }, waitTimeout, time.Millisecond,
		"a new upstream is checked at once")
	assert.EqualValues(t, 1, checks[1].Load(), "a kept upstream is not checked anew")
	assert.True(t, statusOf(t, p, f.urls(t)[1]).Down, "a kept upstream keeps its check state")
}

func TestNewGrowsIntoAPool(t *testing.T) {
	f := newFleet(t, 2, nil)
	p := newProxy(t, f.srvs[0].URL, tapproxy.WithBalancer(tapproxy.RoundRobin()))
	front := serve(t, p, false)
	assert.Equal(t, []int{0, 0}, sequence(t, front.Client(), front.URL, 2))
	require.NoError(t, p.SetUpstreams(f.urls(t)))
	assert.Equal(t, []int{2, 2}, tally(sequence(t, front.Client(), front.URL, 4), 2))
	err := p.SetUpstreams([]*url.URL{f.urls(t)[0], f.urls(t)[0]})
	assert.ErrorContains(t, err, "twice", "a proxy from New follows the pool's rules too")
}
