package tapproxy_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
	"go.uber.org/goleak"

	"github.com/tapproxy/tapproxy"
)

// checkStepper answers health checks one at a time, each as the test says:
// a check waits at the upstream until the test replies to it. The next
// check's arrival shows that the previous result was recorded.
type checkStepper struct {
	arrived  chan struct{}
	reply    chan int
	timedOut atomic.Bool
}

func newCheckStepper() *checkStepper {
	return &checkStepper{arrived: make(chan struct{}), reply: make(chan int)}
}

func (s *checkStepper) serve(w http.ResponseWriter, r *http.Request) {
	select {
	case s.arrived <- struct{}{}:
	case <-r.Context().Done():
		return
	}
	select {
	case code := <-s.reply:
		w.WriteHeader(code)
	case <-r.Context().Done():
		s.timedOut.Store(true)
	}
}

// await waits for the next check.
func (s *checkStepper) await(tb testing.TB) {
	tb.Helper()
	select {
	case <-s.arrived:
	case <-time.After(waitTimeout):
		tb.Fatal("no health check arrived")
	}
	require.False(tb, s.timedOut.Load(), "a check timed out while the test held it; the machine is too slow for this test's Timeout")
}

// answer ends the check that arrived last with code.
func (s *checkStepper) answer(tb testing.TB, code int) {
	tb.Helper()
	select {
	case s.reply <- code:
	case <-time.After(waitTimeout):
		tb.Fatal("the health check gave up before its answer")
	}
}

func TestActiveChecksFlap(t *testing.T) {
	flappy := newCheckStepper()
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if i == 0 {
				flappy.serve(w, r)
			}
			return
		}
		io.WriteString(w, strconv.Itoa(i))
	})
	mp, reader := newReader(t)
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithMeterProvider(mp),
		tapproxy.WithHealthCheck(tapproxy.HealthCheck{
			// The test holds each check while it looks at the pool: the
			// Timeout leaves it ample time.
			Path: "/healthz", Interval: time.Second, Timeout: 950 * time.Millisecond,
			UnhealthyInterval: 300 * time.Millisecond, Fails: 2, Passes: 2,
		}))
	front := serve(t, p, false)
	up0 := f.urls(t)[0]
	activeEjections := func() int64 {
		return sumPoints(collect(t, reader)["tapproxy.upstream.ejections"])[key(upAttrs(t, up0, attribute.String("tapproxy.ejection.reason", "active")))]
	}
	healthy := func(want bool, why string) {
		t.Helper()
		s := statusOf(t, p, up0)
		require.Equal(t, want, s.Healthy, why)
		require.Equal(t, !want, s.Down, why)
		to, code := which(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, code)
		if want {
			require.Equal(t, 0, to, "%s: a healthy upstream 0 takes the traffic", why)
		} else {
			require.Equal(t, 1, to, "%s: a down upstream 0 is left out", why)
		}
	}

	steps := []struct {
		answer int
		then   bool // healthy after this check
		why    string
	}{
		{500, true, "one failure of two"},
		{200, true, "a pass resets the failures"},
		{500, true, "one failure of two, again"},
		{500, false, "two failures in a row"},
		{200, false, "one pass of two"},
		{500, false, "a failure resets the passes"},
		{200, false, "one pass of two, again"},
		{200, true, "two passes in a row: re-admitted"},
	}
	flappy.await(t) // the first check runs at once
	healthy(true, "every upstream starts healthy")
	for _, s := range steps {
		flappy.answer(t, s.answer)
		flappy.await(t) // the result is recorded
		healthy(s.then, s.why)
	}
	flappy.answer(t, 200)
	assert.EqualValues(t, 1, activeEjections(), "one down transition, one active ejection")
}

func TestHealthChecksAreNotObserved(t *testing.T) {
	var checks atomic.Int64
	f := newFleet(t, 1, func(i int, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			checks.Add(1)
			return
		}
		io.WriteString(w, "hi")
	})
	var viaTransport atomic.Int64
	tr := tapproxy.NewTransport()
	t.Cleanup(tr.CloseIdleConnections)
	counting := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Path == "/healthz" {
			viaTransport.Add(1)
		}
		return tr.RoundTrip(r)
	})
	mp, reader := newReader(t)
	rec := newRecorder()
	p := newBalanced(t, f.urls(t), tapproxy.WithMeterProvider(mp), tapproxy.WithObserver(rec),
		tapproxy.WithTransport(counting),
		tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/healthz", Interval: 20 * time.Millisecond}))
	front := serve(t, p, false)
	require.Eventually(t, func() bool { return checks.Load() >= 3 }, waitTimeout, time.Millisecond)
	assert.GreaterOrEqual(t, viaTransport.Load(), int64(3), "checks go through the proxy's transport")
	got := collect(t, reader)
	for _, name := range []string{
		httpconv.ServerRequestDuration{}.Name(), httpconv.ClientRequestDuration{}.Name(),
		"tapproxy.upstream.time_to_headers",
	} {
		assert.Zero(t, histogramCount(got[name]), name)
	}
	assert.Zero(t, rec.count())

	_, body := get(t, front.Client(), front.URL)
	assert.Equal(t, "hi", string(body))
	rec.next(t)
	got = waitRecorded(t, reader, 1)
	assert.EqualValues(t, 1, histogramCount(got[httpconv.ServerRequestDuration{}.Name()]))
	assert.EqualValues(t, 1, histogramCount(got[httpconv.ClientRequestDuration{}.Name()]))
	require.NoError(t, p.Close())
	assert.Equal(t, 1, closeAndCount(t, front, rec))
}

func TestHealthCheckRequest(t *testing.T) {
	type seen struct{ host, path, query, token, agent string }
	got := make(chan seen, 1)
	f := newFleet(t, 1, func(i int, w http.ResponseWriter, r *http.Request) {
		select {
		case got <- seen{r.Host, r.URL.Path, r.URL.RawQuery, r.Header.Get("X-Token"), r.Header.Get("User-Agent")}:
		default:
		}
	})
	target := f.urls(t)[0]
	target.Path = "/api"
	tests := []struct {
		name string
		hc   tapproxy.HealthCheck
		want seen
	}{
		{"defaults", tapproxy.HealthCheck{Path: "/healthz"}, seen{host: target.Host, path: "/healthz"}},
		{"options", tapproxy.HealthCheck{Path: "/ready?deep=1", Host: "health.example", Header: http.Header{"X-Token": {"t"}, "User-Agent": {"probe"}}},
			seen{"health.example", "/ready", "deep=1", "t", "probe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.hc.Interval = time.Hour // only the first check, which runs at once
			newBalanced(t, []*url.URL{target}, tapproxy.WithHealthCheck(tt.hc))
			var s seen
			select {
			case s = <-got:
			case <-time.After(waitTimeout):
				t.Fatal("the first check did not run at once")
			}
			if tt.want.agent == "" {
				assert.Contains(t, s.agent, "tapproxy")
				s.agent = ""
			}
			assert.Equal(t, tt.want, s, "the path is absolute on the upstream's host, not joined to /api")
		})
	}
}

func TestHealthCheckStatuses(t *testing.T) {
	tests := []struct {
		code     int
		statuses []int
		wantDown bool
	}{
		{200, nil, false},
		{204, nil, false},
		{302, nil, false},
		{399, nil, false},
		{400, nil, true},
		{503, nil, true},
		{418, []int{418}, false},
		{200, []int{418}, true},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.code)+"_of_"+strconv.Itoa(len(tt.statuses)), func(t *testing.T) {
			t.Parallel()
			var checks atomic.Int64
			f := newFleet(t, 1, func(i int, w http.ResponseWriter, r *http.Request) {
				checks.Add(1)
				w.WriteHeader(tt.code)
			})
			p := newBalanced(t, f.urls(t), tapproxy.WithHealthCheck(tapproxy.HealthCheck{
				Path: "/healthz", Statuses: tt.statuses, Fails: 1, Passes: 1,
				Interval: time.Second, Timeout: 900 * time.Millisecond,
			}))
			// The second check shows that the first was recorded.
			require.Eventually(t, func() bool { return checks.Load() >= 2 }, waitTimeout, time.Millisecond)
			s := p.Upstreams()[0]
			assert.Equal(t, tt.wantDown, s.Down)
			assert.Equal(t, !tt.wantDown, s.Healthy)
			if tt.wantDown {
				assert.ErrorContains(t, s.LastError, "status "+strconv.Itoa(tt.code))
			}
		})
	}
}

func TestHealthCheckBodyIsBounded(t *testing.T) {
	var checks atomic.Int64
	f := newFleet(t, 1, func(i int, w http.ResponseWriter, r *http.Request) {
		checks.Add(1)
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		deadline := time.Now().Add(waitTimeout)
		for r.Context().Err() == nil && time.Now().Before(deadline) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	p := newBalanced(t, f.urls(t), tapproxy.WithHealthCheck(tapproxy.HealthCheck{
		Path: "/healthz", Fails: 1, Interval: time.Second, Timeout: 900 * time.Millisecond,
	}))
	require.Eventually(t, func() bool { return checks.Load() >= 2 }, waitTimeout, time.Millisecond)
	s := p.Upstreams()[0]
	assert.True(t, s.Healthy, "an endless body passes: the check reads a bounded prefix of it")
	assert.NoError(t, s.LastError)
}

func TestCloseStopsHealthChecks(t *testing.T) {
	for _, stop := range []string{"Close", "Shutdown"} {
		t.Run(stop, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			var checks atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { checks.Add(1) }))
			p, err := tapproxy.NewBalanced([]*url.URL{mustParse(t, up.URL)}, tapproxy.WithLogger(testLogger(t)),
				tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/healthz", Interval: 5 * time.Millisecond}))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return checks.Load() >= 3 }, waitTimeout, time.Millisecond)
			if stop == "Close" {
				require.NoError(t, p.Close())
			} else {
				require.NoError(t, p.Shutdown(context.Background()))
			}
			up.Close()
			verifyNoLeaks(t, ignore)
		})
	}
}

func TestActiveChecksIgnoreTheEjectionCapAndFailOpen(t *testing.T) {
	var checks [2]atomic.Int64
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			checks[i].Add(1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		io.WriteString(w, strconv.Itoa(i))
	})
	mp, reader := newReader(t)
	p := newBalanced(t, f.urls(t), tapproxy.WithMeterProvider(mp), tapproxy.WithBalancer(tapproxy.RoundRobin()),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{MaxEjectedPercent: 1}),
		tapproxy.WithHealthCheck(tapproxy.HealthCheck{Path: "/healthz", Fails: 1, Interval: time.Hour}))
	front := serve(t, p, false)
	require.Eventually(t, func() bool {
		s := p.Upstreams()
		return s[0].Down && s[1].Down
	}, waitTimeout, time.Millisecond, "active checks mark both down, whatever the passive cap")

	got := tally(sequence(t, front.Client(), front.URL, 10), 2)
	assert.Equal(t, []int{5, 5}, got, "with none healthy, the pool fails open")
	m := waitRecorded(t, reader, 10)
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, f.urls(t)[0], attribute.String("tapproxy.ejection.reason", "active"))): 1,
		key(upAttrs(t, f.urls(t)[1], attribute.String("tapproxy.ejection.reason", "active"))): 1,
	}, sumPoints(m["tapproxy.upstream.ejections"]))
	assert.Equal(t, map[attribute.Distinct]int64{key(set()): 10}, sumPoints(m["tapproxy.balancer.fail_open"]))
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, f.urls(t)[0])): 0,
		key(upAttrs(t, f.urls(t)[1])): 0,
	}, sumPoints(m["tapproxy.upstream.healthy"]))
}

func TestPassiveEjectionByKindOfFailure(t *testing.T) {
	const failures = 3
	stuck := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(waitTimeout):
		}
	}
	tests := []struct {
		name    string
		handler http.HandlerFunc // nil: a dead port
		opts    []tapproxy.Option
	}{
		{"dial", nil, nil},
		{"reset", func(w http.ResponseWriter, r *http.Request) { resetConn(w) }, nil},
		{"malformed", rawResponse("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), nil},
		{"timeout", stuck, []tapproxy.Option{tapproxy.WithRetry(tapproxy.Retry{Attempts: 1, PerTry: 20 * time.Millisecond})}},
		{"listed status", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := deadURL(t)
			if tt.handler != nil {
				bad = mustParse(t, newUpstream(t, tt.handler).URL)
			}
			good := newFleet(t, 1, nil)
			log := newAttemptLog()
			opts := append([]tapproxy.Option{tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
				tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: failures, Ejection: time.Hour, Statuses: []int{502}})},
				tt.opts...)
			p := newBalanced(t, []*url.URL{bad, good.urls(t)[0]}, opts...)
			front := serve(t, p, false)
			for k := 1; k <= failures; k++ {
				get(t, front.Client(), front.URL)
				a := log.next(t)
				require.Equal(t, bad.Host, firstTried(a, bad, good.urls(t)[0]), "request %d", k)
				s := statusOf(t, p, bad)
				if k < failures {
					require.True(t, s.Healthy, "after %d failures", k)
					require.Equal(t, k, s.Failures)
				} else {
					require.False(t, s.Healthy, "after %d failures", k)
				}
				require.Error(t, s.LastError)
			}
			i, code := which(t, front.Client(), front.URL)
			assert.Equal(t, http.StatusOK, code)
			assert.Equal(t, 0, i, "the ejected upstream is left out")
			a := log.next(t)
			assert.Equal(t, 1, a.Attempts)
		})
	}
}

// firstTried returns the host an exchange tried first, as far as a pool
// of bad and good with First tells: a second attempt started at bad.
func firstTried(a attempt, bad, good *url.URL) string {
	if a.Attempts > 1 || a.Upstream == bad.Host {
		return bad.Host
	}
	return good.Host
}

// scripted returns a handler that answers the codes in turn, then 200.
func scripted(codes ...int) (http.HandlerFunc, *atomic.Int64) {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1)) - 1
		w.Header().Set("X-Upstream", "0")
		if i < len(codes) {
			w.WriteHeader(codes[i])
		}
	}, &n
}

func TestPassiveFailureCount(t *testing.T) {
	tests := []struct {
		name    string
		codes   []int
		retry   []int // Retry.Statuses
		last    bool  // Retry.Attempts 1: the retried status is the last response
		passive []int // PassiveHealth.Statuses
		want    []int // Failures after each answer; -1: ejected
	}{
		{"success resets", []int{502, 502, 200, 502, 502, 502}, nil, false, []int{502}, []int{1, 2, 0, 1, 2, -1}},
		{"retried statuses count neither way", []int{502, 503, 502, 503, 502}, []int{503}, false, []int{502}, []int{1, 1, 2, 2, -1}},
		{"retried statuses count neither way as the last response", []int{502, 503, 502, 503, 502}, []int{503}, true, []int{502}, []int{1, 1, 2, 2, -1}},
		{"retried and listed statuses count", []int{503, 503, 503}, []int{503}, false, []int{503}, []int{1, 2, -1}},
		{"retried and listed statuses count as the last response", []int{503, 503, 503}, []int{503}, true, []int{503}, []int{1, 2, -1}},
		{"unlisted statuses are successes", []int{502, 503, 502}, nil, false, []int{502}, []int{1, 0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := scripted(tt.codes...)
			bad := mustParse(t, newUpstream(t, h).URL)
			good := newFleet(t, 1, nil)
			log := newAttemptLog() // its calls come after the health was told
			opts := []tapproxy.Option{tapproxy.WithBalancer(tapproxy.First()), tapproxy.WithObserver(log),
				tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 3, Ejection: time.Hour, Statuses: tt.passive})}
			if tt.retry != nil {
				r := tapproxy.Retry{Statuses: tt.retry}
				if tt.last {
					r.Attempts = 1
				}
				opts = append(opts, tapproxy.WithRetry(r))
			}
			p := newBalanced(t, []*url.URL{bad, good.urls(t)[0]}, opts...)
			front := serve(t, p, false)
			for k, want := range tt.want {
				get(t, front.Client(), front.URL)
				log.next(t)
				s := statusOf(t, p, bad)
				if want < 0 {
					require.False(t, s.Healthy, "answer %d", k)
					continue
				}
				require.True(t, s.Healthy, "answer %d", k)
				require.Equal(t, want, s.Failures, "answer %d", k)
			}
		})
	}
}

func TestPassiveEjectionDoubles(t *testing.T) {
	const ejection, maxEjection = 60 * time.Millisecond, 200 * time.Millisecond
	good := newFleet(t, 1, nil)
	dead := deadURL(t)
	mp, reader := newReader(t)
	p := newBalanced(t, []*url.URL{dead, good.urls(t)[0]}, tapproxy.WithBalancer(tapproxy.First()),
		tapproxy.WithMeterProvider(mp),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1, Ejection: ejection, MaxEjection: maxEjection}))
	front := serve(t, p, false)
	eject := func(want time.Duration) time.Time {
		t.Helper()
		require.Eventually(t, func() bool { return statusOf(t, p, dead).Healthy }, waitTimeout, time.Millisecond, "re-admitted")
		before := time.Now()
		_, code := which(t, front.Client(), front.URL)
		after := time.Now()
		require.Equal(t, http.StatusOK, code)
		s := statusOf(t, p, dead)
		require.False(t, s.Healthy)
		require.WithinRange(t, s.EjectedUntil, before.Add(want), after.Add(want), "ejected for %v", want)
		return s.EjectedUntil
	}
	eject(ejection)
	eject(2 * ejection)
	eject(maxEjection) // 4×, capped
	until := eject(maxEjection)
	// Healthy for MaxEjection since its re-admission: the doubling starts
	// over. Only time passing can show it.
	time.Sleep(time.Until(until.Add(maxEjection + 10*time.Millisecond)))
	eject(ejection)
	m := collect(t, reader)
	assert.Equal(t, map[attribute.Distinct]int64{
		key(upAttrs(t, dead, attribute.String("tapproxy.ejection.reason", "passive"))): 5,
	}, sumPoints(m["tapproxy.upstream.ejections"]))
}

func TestMaxEjectedPercent(t *testing.T) {
	tests := []struct {
		name        string
		dead, live  int
		percent     int
		wantEjected int
	}{
		{"half of two", 2, 0, 0, 1},
		{"one may always be ejected", 2, 1, 10, 1},
		{"rounded down", 3, 2, 50, 2},
		{"half of four", 3, 1, 50, 2},
		{"all", 3, 1, 100, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var targets []*url.URL
			for range tt.dead {
				targets = append(targets, deadURL(t))
			}
			if tt.live > 0 {
				targets = append(targets, newFleet(t, tt.live, nil).urls(t)...)
			}
			mp, reader := newReader(t)
			log := newAttemptLog()
			p := newBalanced(t, targets, tapproxy.WithBalancer(tapproxy.RoundRobin()), tapproxy.WithMeterProvider(mp),
				tapproxy.WithObserver(log),
				tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1, Ejection: time.Hour, MaxEjectedPercent: tt.percent}))
			front := serve(t, p, false)
			for range 10 * len(targets) {
				get(t, front.Client(), front.URL)
				log.next(t)
			}
			ejected := 0
			for i, s := range p.Upstreams() {
				if !s.Healthy {
					ejected++
					assert.Less(t, i, tt.dead, "a live upstream was ejected")
				}
			}
			assert.Equal(t, tt.wantEjected, ejected)
			var n int64
			for _, v := range sumPoints(collect(t, reader)["tapproxy.upstream.ejections"]) {
				n += v
			}
			assert.EqualValues(t, tt.wantEjected, n)
		})
	}
}

func TestFailOpenWhenAllAreEjected(t *testing.T) {
	t.Run("listed statuses", func(t *testing.T) {
		f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "answer of "+strconv.Itoa(i))
		})
		mp, reader := newReader(t)
		log := newAttemptLog()
		p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.RoundRobin()), tapproxy.WithMeterProvider(mp),
			tapproxy.WithObserver(log),
			tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1, Ejection: time.Hour, MaxEjectedPercent: 100, Statuses: []int{502}}))
		front := serve(t, p, false)
		for range 2 {
			get(t, front.Client(), front.URL)
			log.next(t) // the health was told before the observers
		}
		for _, s := range p.Upstreams() {
			require.False(t, s.Healthy)
		}
		for range 4 {
			res, body := get(t, front.Client(), front.URL)
			assert.Equal(t, http.StatusBadGateway, res.StatusCode, "the upstreams still answer, not a 503")
			assert.Contains(t, string(body), "answer of ")
		}
		m := waitRecorded(t, reader, 6)
		assert.Equal(t, map[attribute.Distinct]int64{key(set()): 4}, sumPoints(m["tapproxy.balancer.fail_open"]))
	})
	t.Run("counted once per request", func(t *testing.T) {
		log := newAttemptLog()
		mp, reader := newReader(t)
		p := newBalanced(t, []*url.URL{deadURL(t), deadURL(t)}, tapproxy.WithMeterProvider(mp), tapproxy.WithObserver(log),
			tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1, Ejection: time.Hour, MaxEjectedPercent: 100}))
		front := serve(t, p, false)
		for range 3 {
			res, _ := get(t, front.Client(), front.URL)
			assert.Equal(t, http.StatusBadGateway, res.StatusCode)
			assert.Equal(t, 2, log.next(t).Attempts, "every upstream is tried anyway")
		}
		// The first request found both healthy; the next two found none.
		m := waitRecorded(t, reader, 3)
		assert.Equal(t, map[attribute.Distinct]int64{key(set()): 2}, sumPoints(m["tapproxy.balancer.fail_open"]))
	})
}

func TestPassiveHealthSwitches(t *testing.T) {
	tests := []struct {
		name        string
		p           func(t *testing.T, dead *url.URL, obs tapproxy.Option) *tapproxy.Proxy
		wantHealthy bool
	}{
		{"off in a pool", func(t *testing.T, dead *url.URL, obs tapproxy.Option) *tapproxy.Proxy {
			return newBalanced(t, []*url.URL{dead, newFleet(t, 1, nil).urls(t)[0]}, tapproxy.WithBalancer(tapproxy.First()),
				obs, tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: -1}))
		}, true},
		{"on in a pool by default", func(t *testing.T, dead *url.URL, obs tapproxy.Option) *tapproxy.Proxy {
			return newBalanced(t, []*url.URL{dead, newFleet(t, 1, nil).urls(t)[0]}, tapproxy.WithBalancer(tapproxy.First()), obs)
		}, false},
		{"off with New by default", func(t *testing.T, dead *url.URL, obs tapproxy.Option) *tapproxy.Proxy {
			return newProxy(t, dead.String(), obs)
		}, true},
		{"on with New", func(t *testing.T, dead *url.URL, obs tapproxy.Option) *tapproxy.Proxy {
			return newProxy(t, dead.String(), obs, tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 2}))
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dead := deadURL(t)
			log := newAttemptLog()
			p := tt.p(t, dead, tapproxy.WithObserver(log))
			front := serve(t, p, false)
			for range 10 {
				get(t, front.Client(), front.URL)
				log.next(t)
			}
			s := statusOf(t, p, dead)
			assert.Equal(t, tt.wantHealthy, s.Healthy)
		})
	}
}

func TestHealthCheckTimeoutDefault(t *testing.T) {
	var checks atomic.Int64
	f := newFleet(t, 1, func(i int, w http.ResponseWriter, r *http.Request) {
		checks.Add(1)
		select { // slower than any timeout below the interval
		case <-r.Context().Done():
		case <-time.After(waitTimeout):
		}
	})
	p := newBalanced(t, f.urls(t), tapproxy.WithHealthCheck(tapproxy.HealthCheck{
		Path: "/healthz", Interval: 200 * time.Millisecond, Fails: 1,
	}))
	require.Eventually(t, func() bool { return p.Upstreams()[0].Down }, waitTimeout, time.Millisecond,
		"a check that does not answer times out at half the interval")
	assert.ErrorIs(t, p.Upstreams()[0].LastError, context.DeadlineExceeded)
}

func TestUnhealthyIntervalBringsItBackSooner(t *testing.T) {
	h, checks := scripted(http.StatusInternalServerError)
	up := newUpstream(t, h)
	p := newBalanced(t, []*url.URL{mustParse(t, up.URL)}, tapproxy.WithHealthCheck(tapproxy.HealthCheck{
		Path: "/healthz", Fails: 1, Passes: 1, Interval: time.Hour, UnhealthyInterval: 10 * time.Millisecond,
	}))
	// The first check fails; only the shorter interval of a down upstream
	// can bring the second within the wait.
	require.Eventually(t, func() bool { return checks.Load() >= 2 }, waitTimeout, time.Millisecond)
	require.Eventually(t, func() bool { return p.Upstreams()[0].Healthy }, waitTimeout, time.Millisecond)
}

func TestSlowStart(t *testing.T) {
	tests := []struct {
		name     string
		balancer tapproxy.Balancer
	}{
		{"weighted round robin", tapproxy.WeightedRoundRobin(1, 1)},
		{"least requests", tapproxy.LeastRequests()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t, 3, nil)
			const window = time.Minute // far longer than the test
			p := newBalanced(t, f.urls(t, 0, 1), tapproxy.WithBalancer(tt.balancer), tapproxy.WithSlowStart(window))
			front := serve(t, p, false)

			// Held requests, so that least requests has loads to weigh.
			c := front.Client()
			require.NoError(t, p.SetUpstreams(f.urls(t, 0, 1, 2)))
			var wg sync.WaitGroup
			var mu sync.Mutex
			seq := []int{}
			for range 4 {
				wg.Go(func() {
					for range 75 {
						i, code := which(t, c, front.URL)
						if !assert.Equal(t, http.StatusOK, code) {
							return
						}
						mu.Lock()
						seq = append(seq, i)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			got := tally(seq, 3)
			// At about a tenth of its weight, the new upstream gets about
			// a twentieth of the requests, not a third.
			assert.Less(t, got[2], 50, "the new upstream warms up: %v", got)
			assert.Positive(t, got[2], "but it gets some traffic: %v", got)
		})
	}

	t.Run("without slow start", func(t *testing.T) {
		f := newFleet(t, 3, nil)
		p := newBalanced(t, f.urls(t, 0, 1), tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(1, 1)))
		front := serve(t, p, false)
		require.NoError(t, p.SetUpstreams(f.urls(t, 0, 1, 2)))
		got := tally(sequence(t, front.Client(), front.URL, 300), 3)
		assert.InDelta(t, 100, got[2], 2, "a new upstream takes its full share at once: %v", got)
	})

	t.Run("ends after the window", func(t *testing.T) {
		f := newFleet(t, 3, nil)
		const window = 50 * time.Millisecond
		p := newBalanced(t, f.urls(t, 0, 1), tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(1, 1)), tapproxy.WithSlowStart(window))
		front := serve(t, p, false)
		require.NoError(t, p.SetUpstreams(f.urls(t, 0, 1, 2)))
		time.Sleep(2 * window) // the clock is what slow start measures
		got := tally(sequence(t, front.Client(), front.URL, 300), 3)
		assert.InDelta(t, 100, got[2], 2, "warm after the window: %v", got)
	})
}

func TestSlowStartAfterReadmission(t *testing.T) {
	var down atomic.Bool
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		if i == 1 && down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, strconv.Itoa(i))
	})
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(1, 1)),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1, Statuses: []int{503}, Ejection: 20 * time.Millisecond}),
		tapproxy.WithSlowStart(time.Minute))
	front := serve(t, p, false)
	down.Store(true)
	require.Eventually(t, func() bool {
		get(t, front.Client(), front.URL)
		return !statusOf(t, p, f.urls(t, 1)[0]).Healthy
	}, waitTimeout, time.Millisecond, "upstream 1 is ejected")
	down.Store(false)
	require.Eventually(t, func() bool { return statusOf(t, p, f.urls(t, 1)[0]).Healthy }, waitTimeout, time.Millisecond)
	got := tally(sequence(t, front.Client(), front.URL, 200), 2)
	assert.Less(t, got[1], 40, "re-admitted, upstream 1 warms up instead of taking half: %v", got)
}

// TestFailuresWhileEjectedDoNotCount: the requests an ejected upstream gets
// while the pool fails open do not count against it once it is back.
func TestFailuresWhileEjectedDoNotCount(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	const ejection = 100 * time.Millisecond
	p := newProxy(t, up.URL, tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 2, Statuses: []int{503}, Ejection: ejection}))
	front := serve(t, p, false)
	for range 2 {
		get(t, front.Client(), front.URL)
	}
	require.False(t, p.Upstreams()[0].Healthy, "two failures eject it")
	for range 5 {
		res, _ := get(t, front.Client(), front.URL) // failing open
		require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	}
	assert.Zero(t, p.Upstreams()[0].Failures, "failures while ejected are not counted")
	require.Eventually(t, func() bool { return p.Upstreams()[0].Healthy }, waitTimeout, time.Millisecond)
	get(t, front.Client(), front.URL)
	s := p.Upstreams()[0]
	assert.True(t, s.Healthy, "one failure after re-admission does not eject it again")
	assert.Equal(t, 1, s.Failures)
}
