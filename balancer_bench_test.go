package tapproxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"
)

// benchPool returns a pool of n upstreams balanced by b, with the
// instruments of a provider that records nothing.
func benchPool(tb testing.TB, n int, b Balancer) *pool {
	tb.Helper()
	m, err := newMeters(&config{meterProvider: noop.NewMeterProvider()})
	if err != nil {
		tb.Fatal(err)
	}
	p := &pool{balancer: b, metrics: m}
	ups := make([]*Upstream, n)
	for i := range ups {
		ups[i] = p.newUpstream(&url.URL{Scheme: "http", Host: "10.0.0." + strconv.Itoa(i) + ":8080"}, 1)
	}
	p.store(ups, time.Now())
	return p
}

// pickBalancers are the balancers whose pick must be cheap.
func pickBalancers() []struct {
	name string
	b    Balancer
} {
	return []struct {
		name string
		b    Balancer
	}{
		{"LeastRequests", LeastRequests()},
		{"RoundRobin", RoundRobin()},
		{"HashBy", HashBy(func(r *http.Request) string { return r.Header.Get("X-User") })},
	}
}

// pickOnce is the per-request work of picking: the pick that counts the
// upstream in flight, and the release once its response ended. rs stands
// for the route state, which lives in the pooled exchange state.
func pickOnce(p *pool, rs *routeState, set *upstreamSet, r *http.Request) {
	*rs = routeState{set: set}
	u := p.pick(rs, r)
	p.done(u, r)
}

// BenchmarkPick measures picking an upstream for a request, in flight count
// included: go test -run '^$' -bench BenchmarkPick -benchmem .
func BenchmarkPick(b *testing.B) {
	r, _ := http.NewRequest(http.MethodGet, "http://front/x", nil)
	r.Header.Set("X-User", "user-1234")
	for _, n := range []int{3, 100} {
		for _, tt := range pickBalancers() {
			b.Run(fmt.Sprintf("balancer=%s/upstreams=%d", tt.name, n), func(b *testing.B) {
				p := benchPool(b, n, tt.b)
				set, rs := p.current(), new(routeState)
				pickOnce(p, rs, set, r) // HashBy builds its table on the
				pickOnce(p, rs, set, r) // second pick of a set
				b.ReportAllocs()
				for b.Loop() {
					pickOnce(p, rs, set, r)
				}
			})
		}
	}
}

func TestPickAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under -race")
	}
	r, _ := http.NewRequest(http.MethodGet, "http://front/x", nil)
	r.Header.Set("X-User", "user-1234")
	for _, n := range []int{3, 100} {
		for _, tt := range pickBalancers() {
			t.Run(fmt.Sprintf("%s/%d", tt.name, n), func(t *testing.T) {
				p := benchPool(t, n, tt.b)
				set, rs := p.current(), new(routeState)
				if allocs := testing.AllocsPerRun(1000, func() { pickOnce(p, rs, set, r) }); allocs != 0 {
					t.Errorf("picking allocates %v times per request, want 0", allocs)
				}
			})
		}
	}
}
