package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// counters sums the int64 counters that a has recorded by name, and by
// name and reason ("tapproxy.retries/reset") for those with a reason.
func counters(tb testing.TB, a *app) map[string]int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, a.reader.Collect(context.Background(), &rm))
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			s, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range s.DataPoints {
				got[m.Name] += dp.Value
				for _, k := range []attribute.Key{"tapproxy.ejection.reason", "tapproxy.retry.reason"} {
					if v, ok := dp.Attributes.Value(k); ok {
						got[m.Name+"/"+v.Emit()] += dp.Value
					}
				}
			}
		}
	}
	return got
}

func TestFaultsBalanceOverDemoReplicas(t *testing.T) {
	tests := []struct {
		name   string
		cfg    config
		want   int
		target string
	}{
		{"default: one demo API", config{}, 1, "(the embedded demo API)"},
		{"faults: replicas", config{faults: true}, demoReplicas, "(2 replicas of the embedded demo API)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startApp(t, tt.cfg)
			assert.Len(t, a.tp.Upstreams(), tt.want)
			assert.Contains(t, a.target, tt.target)
		})
	}
}

func TestFaultsSetOffTheUpstreamPaths(t *testing.T) {
	a := startApp(t, config{faults: true})
	client := &http.Client{Timeout: waitTimeout}
	defer client.CloseIdleConnections()

	// Both replicas start healthy: the reset of /api/broken ejects the
	// first (passively) and is retried once on the second, which resets
	// too, so that the client still sees the upstream failure.
	status, _ := get(t, client, a, "/api/broken")
	assert.Equal(t, http.StatusBadGateway, status)
	got := counters(t, a)
	assert.Equal(t, int64(1), got["tapproxy.retries/reset"], "%v", got)
	assert.Equal(t, int64(1), got["tapproxy.upstream.ejections/passive"], "at most one of two at a time: %v", got)

	// No status is retried: every third /api/flaky is still a 503.
	var codes []int
	for range 3 {
		status, _ := get(t, client, a, "/api/flaky")
		codes = append(codes, status)
	}
	assert.Equal(t, []int{200, 200, 503}, codes)

	// upstreams-down fails both replicas' /api/health: the checks mark
	// them down, and the requests meanwhile fail open, served still.
	status, _ = get(t, client, a, "/api/orders", faultHeader, "upstreams-down")
	assert.Equal(t, http.StatusOK, status, "the request that sets the fault is answered as usual")
	require.Eventually(t, func() bool {
		status, _ := get(t, client, a, "/api/orders")
		assert.Equal(t, http.StatusOK, status, "a request that fails open is still served")
		got = counters(t, a)
		return got["tapproxy.balancer.fail_open"] >= 1
	}, waitTimeout, 50*time.Millisecond, "%v", got)
	// The replica still ejected after /api/broken needs no active
	// ejection to be out: one at least.
	assert.GreaterOrEqual(t, got["tapproxy.upstream.ejections/active"], int64(1), "%v", got)

	// And they come back by themselves.
	require.Eventually(t, func() bool {
		for _, u := range a.tp.Upstreams() {
			if !u.Healthy {
				return false
			}
		}
		return true
	}, waitTimeout, 50*time.Millisecond, "%v", a.tp.Upstreams())
}
