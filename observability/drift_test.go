package observability_test

import (
	"bufio"
	"bytes"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// promql is Prometheus's own PromQL parser, with its default options.
var promql = parser.NewParser(parser.Options{})

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = []string{"job", "instance"}

// metricLabels maps each metric name in a scrape to the labels it has.
type metricLabels map[string]map[string]bool

// parseScrape reads Prometheus's text format, with the parser's own
// ParseMetric for each series.
func parseScrape(tb testing.TB, body []byte) metricLabels {
	tb.Helper()
	ml := metricLabels{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, _, _ := strings.Cut(line, " ")
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			series = line[:i+1]
		}
		lset, err := promql.ParseMetric(series)
		require.NoError(tb, err, "scrape line %q", line)
		name := lset.Get(labels.MetricName)
		if ml[name] == nil {
			ml[name] = map[string]bool{}
		}
		lset.Range(func(l labels.Label) {
			if l.Name != labels.MetricName {
				ml[name][l.Name] = true
			}
		})
	}
	require.NoError(tb, sc.Err())
	return ml
}

func (ml metricLabels) add(name string, ls ...string) {
	if ml[name] == nil {
		ml[name] = map[string]bool{}
	}
	for _, l := range ls {
		ml[name][l] = true
	}
}

// checkExpr parses expr with Prometheus's parser and reports every metric
// name it selects that known lacks, and every label it selects, groups by
// or matches on that none of the metrics it selects has.
func checkExpr(t *testing.T, known metricLabels, expr string) {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	require.NoError(t, err, "%s", expr)

	// The labels that can exist below a node: those of the metrics it
	// selects, plus those label_replace makes.
	var available func(parser.Node) map[string]bool
	available = func(n parser.Node) map[string]bool {
		got := map[string]bool{}
		for _, l := range targetLabels {
			got[l] = true
		}
		parser.Inspect(n, func(n parser.Node, _ []parser.Node) error {
			switch n := n.(type) {
			case *parser.VectorSelector:
				for l := range known[n.Name] {
					got[l] = true
				}
			case *parser.Call:
				if n.Func.Name == "label_replace" || n.Func.Name == "label_join" {
					if s, ok := n.Args[1].(*parser.StringLiteral); ok {
						got[s.Val] = true
					}
				}
			}
			return nil
		})
		return got
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			if _, ok := known[n.Name]; !assert.True(t, ok, "metric %s is in no scrape of examples/prometheus (selected by %s)", n.Name, expr) {
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName {
					continue
				}
				assert.True(t, known[n.Name][m.Name] || slices.Contains(targetLabels, m.Name),
					"metric %s has no label %s (selected by %s)", n.Name, m.Name, expr)
			}
		case *parser.AggregateExpr:
			have := available(n.Expr)
			for _, l := range n.Grouping {
				assert.True(t, have[l], "no metric below %s has the label %s it groups by", n, l)
			}
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				have := available(n)
				for _, l := range append(slices.Clone(n.VectorMatching.MatchingLabels), n.VectorMatching.Include...) {
					assert.True(t, have[l], "no metric of %s has the label %s it matches on", n, l)
				}
			}
		case *parser.Call:
			if n.Func.Name == "label_replace" {
				if s, ok := n.Args[3].(*parser.StringLiteral); ok {
					assert.True(t, available(n.Args[0])[s.Val], "no metric below %s has the source label %s", n, s.Val)
				}
			}
		}
		return nil
	})
}

// TestQueriesMatchTheMetrics is the drift test: every PromQL expression of
// the dashboard and the rules parses, and selects only metrics and labels
// that a real scrape of examples/prometheus has, after demo traffic that
// reaches every metric (with -faults for the proxy's own failure paths and
// its upstreams': balancing, health, ejections, retries, fail-open).
func TestQueriesMatchTheMetrics(t *testing.T) {
	a := startExample(t, "-faults")
	client := &http.Client{Timeout: requestTimeout}
	defer client.CloseIdleConnections()
	send(t, client, a.proxyURL, demoTraffic)
	send(t, client, a.proxyURL, faultTraffic)
	upstreamsDown(t, client, a)

	d := loadDashboard(t)
	rf := loadRules(t)
	recorded := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	queries := append(d.panelQueries(), rf.ruleQueries()...)
	queries = append(queries, readmeQueries(t)...)
	for _, vq := range d.variableQueries(t) {
		if vq.selector != "" {
			queries = append(queries, query{where: "variable " + vq.name, expr: vq.selector})
		}
	}
	require.NotEmpty(t, queries)

	// Observers run on a worker under -faults, and the slow one holds the
	// rest back: poll until the scrape has every metric the queries
	// select, or the wait ends and the checks below name what is missing.
	selected := map[string]bool{}
	for _, q := range queries {
		e, err := promql.ParseExpr(d.substitute(q.expr, ".*", "1m", true))
		if err != nil {
			continue // reported below
		}
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok && !recorded[vs.Name] {
				selected[vs.Name] = true
			}
			return nil
		})
	}
	var known metricLabels
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(50 * time.Millisecond) {
		known = parseScrape(t, scrape(t, client, a.metricsURL))
		missing := 0
		for name := range selected {
			if known[name] == nil {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
	}
	// Recorded series are metrics too, with the label they keep.
	for name := range recorded {
		known.add(name, "job")
	}

	for _, q := range queries {
		t.Run(q.where, func(t *testing.T) {
			expr := d.substitute(q.expr, ".*", "1m", true)
			require.NotRegexp(t, leftoverVariable, expr, "a variable left unreplaced")
			checkExpr(t, known, expr)
		})
	}
	for _, vq := range d.variableQueries(t) {
		t.Run("variable "+vq.name+" label", func(t *testing.T) {
			if vq.selector == "" {
				return
			}
			e, err := promql.ParseExpr(d.substitute(vq.selector, ".*", "1m", true))
			require.NoError(t, err)
			vs, ok := e.(*parser.VectorSelector)
			require.True(t, ok, "variable %s: want a series selector", vq.name)
			assert.True(t, known[vs.Name][vq.label] || slices.Contains(targetLabels, vq.label),
				"variable %s lists label %s, which %s lacks", vq.name, vq.label, vs.Name)
		})
	}
}
