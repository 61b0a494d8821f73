package observability_test

import (
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// panelRef names one query of a panel: its title and refId.
type panelRef struct{ title, refID string }

// emptyPanels are the panel queries that the test traffic must leave
// empty: its observers are healthy and its requests go one at a time, so
// no observer panics and nothing fills the observer queue. Everything else
// has data under -faults, which the test runs the example with.
var emptyPanels = map[panelRef]bool{
	{"Observer panics and drops", "A"}: true,
	{"Observer panics and drops", "B"}: true,
}

// TestPanelQueriesAgainstPrometheus runs a real Prometheus, scraping the
// example every second, sends the demo traffic through the proxy, takes
// its upstreams down for a while, and runs every panel query through
// /api/v1/query: each returns samples, with a value that is a number,
// except those listed as empty, which return none. The example runs with
// -faults, so that it balances over two replicas with health checks and
// retries, and has a capture budget that /api/export exceeds; the
// observers' own faults are left out, so that their panel stays empty.
func TestPanelQueriesAgainstPrometheus(t *testing.T) {
	bin := lookTool(t, "prometheus")
	a := startExample(t, "-faults")
	promURL := startPrometheus(t, bin, a.metricsHost)
	client := &http.Client{Timeout: requestTimeout}
	defer client.CloseIdleConnections()

	// Scraped before the traffic, after one round and after another: so
	// that each series has samples before and after an increase.
	waitFor := func(query string, want float64) {
		t.Helper()
		var got []sample
		require.Eventually(t, func() bool {
			got = instantQuery(t, client, promURL, query)
			return len(got) == 1 && value(got[0]) >= want
		}, waitTimeout, 100*time.Millisecond, "%s: want %v, got %v", query, want, got)
	}
	waitFor(`up{job="tapproxy"}`, 1)
	count := `sum(http_server_request_duration_seconds_count{job="tapproxy"})`
	for round := 1; round <= 2; round++ {
		send(t, client, a.proxyURL, demoTraffic)
		waitFor(count, float64(round*len(demoTraffic)))
	}
	// Last, so that no /api/health of the demo traffic meets its 503s.
	upstreamsDown(t, client, a)
	waitFor(`sum(tapproxy_balancer_fail_open_total{job="tapproxy"})`, 1)

	d := loadDashboard(t)
	exprs := map[panelRef]string{}
	for _, q := range d.panelQueries() {
		exprs[panelRef{q.panelTitle, q.refID}] = q.expr
	}
	for ref := range emptyPanels {
		require.Contains(t, exprs, ref, "emptyPanels names no panel query")
	}

	for _, q := range d.panelQueries() {
		t.Run(q.where, func(t *testing.T) {
			expr := d.substitute(q.expr, ".*", "1m", false)
			require.NotRegexp(t, leftoverVariable, expr)
			ref := panelRef{q.panelTitle, q.refID}
			switch {
			case emptyPanels[ref]:
				assert.Empty(t, instantQuery(t, client, promURL, expr), expr)
			default:
				// Recording rules and fresh samples can trail the
				// scrape a little: poll.
				var got []sample
				assert.Eventually(t, func() bool {
					got = instantQuery(t, client, promURL, expr)
					for _, s := range got {
						if !math.IsNaN(value(s)) {
							return true
						}
					}
					return false
				}, waitTimeout, 200*time.Millisecond, "%s: want a sample with a number, got %v", expr, got)
			}
		})
	}

	// What some panels show, beyond having data.
	byLabel := func(ref panelRef, route, label string) map[string]float64 {
		t.Helper()
		require.Contains(t, exprs, ref)
		expr := d.substitute(exprs[ref], ".*", "1m", false)
		if route != "" {
			expr = strings.ReplaceAll(expr, `http_route=~".*"`, `http_route=~"`+route+`"`)
		}
		got := map[string]float64{}
		for _, s := range instantQuery(t, client, promURL, expr) {
			got[s.Metric[label]] = value(s)
		}
		return got
	}
	keys := func(m map[string]float64) []string { return slices.Sorted(maps.Keys(m)) }
	t.Run("status classes", func(t *testing.T) {
		assert.Equal(t, []string{"2xx", "4xx", "5xx"}, keys(byLabel(panelRef{"Request rate by status class", "A"}, "", "status_class")))
	})
	t.Run("failures by error type", func(t *testing.T) {
		assert.Equal(t, []string{"503", "upstream_reset"}, keys(byLabel(panelRef{"Failures by error type", "A"}, "", "error_type")),
			"client-facing: the 503s and the upstream failure, not the client that left")
		assert.Equal(t, []string{"404", "405", "503", "upstream_reset"}, keys(byLabel(panelRef{"Failures by error type", "B"}, "", "error_type")),
			"upstream leg: its 4xx too")
	})
	t.Run("ejections and retries by reason", func(t *testing.T) {
		// A rate needs two samples of each series: poll.
		var got []string
		assert.Eventually(t, func() bool {
			got = keys(byLabel(panelRef{"Ejections and retries by reason", "A"}, "", "tapproxy_ejection_reason"))
			return slices.Equal(got, []string{"active", "passive"})
		}, waitTimeout, 200*time.Millisecond, "the checks took a replica down, and the reset of /api/broken ejected one: got %v", got)
		assert.Equal(t, []string{"reset"}, keys(byLabel(panelRef{"Ejections and retries by reason", "B"}, "", "tapproxy_retry_reason")),
			"/api/broken was retried on the other replica")
	})
	t.Run("two upstreams", func(t *testing.T) {
		got := byLabel(panelRef{"Healthy upstreams", "B"}, "", "")
		assert.Equal(t, map[string]float64{"": 2}, got, "the demo API's replicas")
		assert.Len(t, byLabel(panelRef{"In-flight upstream requests", "A"}, "", "server_port"), 2)
	})
	t.Run("the 5xx ratio is 0, not empty, where there are no 5xx", func(t *testing.T) {
		assert.Equal(t, map[string]float64{"": 0}, byLabel(panelRef{"5xx ratio", "A"}, "/api/health", ""))
		got := byLabel(panelRef{"5xx ratio", "A"}, "/api/flaky", "")
		assert.Greater(t, got[""], 0.0, "%v", got)
	})
	t.Run("route All matches series without a route", func(t *testing.T) {
		got := byLabel(panelRef{"p99 by route", "A"}, "", "http_route")
		assert.Contains(t, got, "", "the 404 of /nowhere and the 405 have no route")
		assert.Contains(t, got, "/api/orders/{id}")
	})

	t.Run("the README's queries", func(t *testing.T) {
		for _, q := range readmeQueries(t) {
			assert.NotEmpty(t, instantQuery(t, client, promURL, q.expr), q.expr)
		}
	})

	// The rules loaded and ran: the recorded series exist.
	t.Run("recording rules", func(t *testing.T) {
		rf := loadRules(t)
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				if r.Record == "" {
					continue
				}
				assert.Eventually(t, func() bool {
					return len(instantQuery(t, client, promURL, r.Record+`{job="tapproxy"}`)) == 1
				}, waitTimeout, 200*time.Millisecond, "recorded series %s", r.Record)
			}
		}
	})
}

// value is a sample's value; Prometheus sends it as a string.
func value(s sample) float64 {
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return math.NaN()
	}
	return v
}
