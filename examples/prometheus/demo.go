package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// ordersJSON is the demo API's data.
//
//go:embed orders.json
var ordersJSON []byte

// demoIndex is what the demo API answers at /: its endpoints, so that a
// first curl shows where to go.
const demoIndex = `tapproxy demo API, behind the proxy. Endpoints:
  GET /api/orders        all orders, as JSON
  GET /api/orders/{id}   one order (1001 to 1005); any other id is a 404
  GET /api/health        {"status":"ok"}
  GET /api/flaky         fails with 503 every third call
  GET /api/slow          answers after 2s: a latency, or a client that gives up
  GET /api/broken        closes the connection unanswered: an upstream failure
  GET /api/export        a large JSON list, longer than the capture limit
Metrics are at /metrics on the metrics port.
`

// slowDelay is how long /api/slow takes to answer.
const slowDelay = 2 * time.Second

// newDemoAPI returns the embedded upstream: a small JSON API over a fixed
// list of orders, with one endpoint that fails every third call and a few
// that fail in other ways, so that errors show in the metrics too.
func newDemoAPI() (*http.ServeMux, error) {
	var orders []json.RawMessage
	if err := json.Unmarshal(ordersJSON, &orders); err != nil {
		return nil, fmt.Errorf("demo data: %w", err)
	}
	byID := map[string]json.RawMessage{}
	for _, o := range orders {
		var id struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(o, &id); err != nil {
			return nil, fmt.Errorf("demo data: %w", err)
		}
		byID[id.ID] = o
	}
	writeJSON := func(w http.ResponseWriter, code int, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		w.Write(body)
	}
	var flaky atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/orders", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, ordersJSON)
	})
	mux.HandleFunc("GET /api/orders/{id}", func(w http.ResponseWriter, r *http.Request) {
		o, ok := byID[r.PathValue("id")]
		if !ok {
			writeJSON(w, http.StatusNotFound, []byte(`{"error":"no such order"}`))
			return
		}
		writeJSON(w, http.StatusOK, o)
	})
	mux.HandleFunc("GET /api/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, []byte(`{"status":"ok"}`))
	})
	mux.HandleFunc("GET /api/flaky", func(w http.ResponseWriter, r *http.Request) {
		if flaky.Add(1)%3 == 0 {
			writeJSON(w, http.StatusServiceUnavailable, []byte(`{"error":"try again"}`))
			return
		}
		writeJSON(w, http.StatusOK, []byte(`{"status":"ok"}`))
	})
	mux.HandleFunc("GET /api/slow", func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(slowDelay)
		defer t.Stop()
		select {
		case <-t.C:
			writeJSON(w, http.StatusOK, []byte(`{"status":"ok"}`))
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("GET /api/broken", func(w http.ResponseWriter, r *http.Request) {
		// Closing the connection without a response is the failure a
		// crashing upstream produces; the proxy answers 502 for it.
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		conn.Close()
	})
	export := exportJSON()
	mux.HandleFunc("GET /api/export", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, export)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, demoIndex)
	})
	return mux, nil
}

// exportJSON is the body of /api/export: 4096 generated orders, about
// 200 KiB, more than the proxy's default capture limit of 64 KiB, so that
// the capture is truncated (and the orders observer, which needs whole
// bodies, leaves it alone).
func exportJSON() []byte {
	statuses := []string{"paid", "pending", "shipped", "cancelled"}
	var b bytes.Buffer
	b.WriteByte('[')
	for i := range 4096 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"e%05d","status":%q,"total":%d.%02d}`, i, statuses[i%len(statuses)], 10+i%90, i%100)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// routeOf names a request's route by the pattern of mux it matches, such as
// "/api/orders/{id}": low-cardinality, as http.route must be. Requests that
// match nothing get none.
func routeOf(mux *http.ServeMux) func(*http.Request) string {
	return func(r *http.Request) string {
		_, pattern := mux.Handler(r)
		if i := strings.IndexByte(pattern, '/'); i >= 0 {
			// Without the method and host, and "/" for "/{$}".
			return strings.TrimSuffix(pattern[i:], "{$}")
		}
		return ""
	}
}

// demoPaths are what -demo requests from the demo API, in turn.
var demoPaths = []string{
	"/api/orders", "/api/orders/1001", "/api/orders/1002", "/api/health",
	"/api/orders/9999", "/api/flaky", "/api/orders/1003", "/api/flaky", "/api/flaky",
}

// sendDemo sends n GET requests through the proxy at base, cycling through
// paths, and reads every response to its end.
func sendDemo(ctx context.Context, client *http.Client, base string, paths []string, n int) error {
	for i := range n {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+paths[i%len(paths)], nil)
		if err != nil {
			return err
		}
		res, err := client.Do(req)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// summarize writes the metrics in rm in a short readable form.
func summarize(w io.Writer, rm metricdata.ResourceMetrics) {
	metrics := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			metrics[m.Name] = m
		}
	}
	var b bytes.Buffer
	durations := func(title, name string, keys ...attribute.Key) {
		h, ok := metrics[name].Data.(metricdata.Histogram[float64])
		if !ok {
			return
		}
		fmt.Fprintf(&b, "%s (%s):\n", title, name)
		var lines []string
		for _, dp := range h.DataPoints {
			var fields []string
			for _, k := range keys {
				if v, ok := dp.Attributes.Value(k); ok {
					fields = append(fields, v.Emit())
				}
			}
			if host, ok := dp.Attributes.Value("server.address"); ok {
				port, _ := dp.Attributes.Value("server.port")
				fields = slices.Insert(fields, 1, net.JoinHostPort(host.Emit(), port.Emit()))
			}
			if v, ok := dp.Attributes.Value("error.type"); ok {
				fields = append(fields, "error.type="+v.Emit())
			}
			noun := "requests"
			if dp.Count == 1 {
				noun = "request"
			}
			lines = append(lines, fmt.Sprintf("  %-40s %4d %-8s avg %v",
				strings.Join(fields, " "), dp.Count, noun+",", avg(dp.Sum, dp.Count)))
		}
		slices.Sort(lines)
		b.WriteString(strings.Join(lines, "\n") + "\n")
	}
	durations("Requests from clients", "http.server.request.duration",
		"http.request.method", "http.route", "http.response.status_code")
	durations("Requests to the upstream", "http.client.request.duration",
		"http.request.method", "http.response.status_code")
	if h, ok := metrics["tapproxy.upstream.time_to_headers"].Data.(metricdata.Histogram[float64]); ok {
		var n uint64
		var sum float64
		for _, dp := range h.DataPoints {
			n, sum = n+dp.Count, sum+dp.Sum
		}
		fmt.Fprintf(&b, "Upstream response headers arrived after avg %v (tapproxy.upstream.time_to_headers).\n", avg(sum, n))
	}
	if h, ok := metrics["http.server.response.body.size"].Data.(metricdata.Histogram[int64]); ok {
		var n uint64
		var sum int64
		for _, dp := range h.DataPoints {
			n, sum = n+dp.Count, sum+dp.Sum
		}
		fmt.Fprintf(&b, "Response bodies: %d bytes in %d responses (http.server.response.body.size).\n", sum, n)
	}
	if s, ok := metrics["shop.orders"].Data.(metricdata.Sum[int64]); ok {
		b.WriteString("Orders in response bodies, counted by a JSON-parsing observer (shop.orders):\n")
		var lines []string
		for _, dp := range s.DataPoints {
			st, _ := dp.Attributes.Value("order.status")
			lines = append(lines, fmt.Sprintf("  %-10s %d", st.Emit(), dp.Value))
		}
		slices.Sort(lines)
		b.WriteString(strings.Join(lines, "\n") + "\n")
	}
	w.Write(b.Bytes())
}

func avg(sum float64, n uint64) time.Duration {
	if n == 0 {
		return 0
	}
	return (time.Duration(sum / float64(n) * float64(time.Second))).Round(time.Microsecond)
}
