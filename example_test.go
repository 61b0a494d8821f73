package tapproxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tapproxy/tapproxy"
)

// A proxy in front of a service, with an observer that reads each response.
func Example() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.URL.Path)
	}))
	defer upstream.Close()

	done := make(chan string, 1)
	target, _ := url.Parse(upstream.URL)
	proxy, err := tapproxy.New(target,
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
			body, _ := io.ReadAll(ex.Body())
			done <- fmt.Sprintf("observed %s %s: %d %q", ex.Request.Method, ex.Request.URL.Path, ex.Response.StatusCode, body)
		})))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	res, err := http.Get(front.URL + "/greeting")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Printf("client got %q\n", body)
	fmt.Println(<-done)
	// Output:
	// client got "hello from /greeting"
	// observed GET /greeting: 200 "hello from /greeting"
}

// Turning a service's JSON responses into numbers: each observer decodes its
// own copy of the captured body.
func ExampleObserverFunc() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"order":"A-17","items":3,"total":41.5}`)
	}))
	defer upstream.Close()

	totals := make(chan float64, 1)
	orders := tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
		var order struct{ Total float64 }
		if ex.Truncated || json.NewDecoder(ex.Body()).Decode(&order) != nil {
			totals <- -1
			return
		}
		totals <- order.Total
	})
	target, _ := url.Parse(upstream.URL)
	proxy, err := tapproxy.New(target, tapproxy.WithObserver(orders))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	res, err := http.Post(front.URL+"/orders", "application/json", nil)
	if err != nil {
		log.Fatal(err)
	}
	res.Body.Close()
	fmt.Println("order total:", <-totals)
	// Output: order total: 41.5
}

// Routing /api/... to a service's /v1/... and telling it who asked.
func ExampleStripPrefix() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s (tenant %s)", r.URL.Path, r.Header.Get("X-Tenant"))
	}))
	defer upstream.Close()

	target, _ := url.Parse(upstream.URL + "/v1")
	proxy, err := tapproxy.New(target, tapproxy.WithDirector(
		tapproxy.StripPrefix("/api"),
		tapproxy.SetHeader("X-Tenant", "acme"),
	))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	res, err := http.Get(front.URL + "/api/users")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Println(string(body))
	// Output: /v1/users (tenant acme)
}

// Observers learn why an exchange failed, by kind.
func ExampleExchange_errors() {
	down := httptest.NewServer(http.NotFoundHandler())
	target, _ := url.Parse(down.URL)
	down.Close() // nothing listens there any more

	kinds := make(chan string, 1)
	proxy, err := tapproxy.New(target,
		tapproxy.WithLogger(discardLogger()),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
			switch {
			case errors.Is(ex.Err, tapproxy.ErrUpstreamUnavailable):
				kinds <- "upstream unavailable"
			case ex.Err != nil:
				kinds <- "other failure"
			default:
				kinds <- "ok"
			}
		})))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	res, err := http.Get(front.URL)
	if err != nil {
		log.Fatal(err)
	}
	res.Body.Close()
	fmt.Println(res.StatusCode, <-kinds)
	// Output: 502 upstream unavailable
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// An observer records its own metrics with an instrument from the same
// MeterProvider as the proxy's: here it parses each JSON order the upstream
// returns and counts orders by their status, a metric the service itself
// does not expose.
func Example_observerMetrics() {
	// A MeterProvider with a reader to print from; an application would
	// use an exporter's instead (see examples/prometheus).
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	orders, err := mp.Meter("example.com/shop").Int64Counter("shop.orders",
		metric.WithDescription("Orders served, by status."), metric.WithUnit("{order}"))
	if err != nil {
		log.Fatal(err)
	}
	countOrders := tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
		if ex.Err != nil || ex.Response.StatusCode != http.StatusOK || ex.Truncated {
			return
		}
		var order struct {
			Status string `json:"status"`
		}
		if json.NewDecoder(ex.Body()).Decode(&order) != nil {
			return
		}
		orders.Add(ctx, 1, metric.WithAttributes(attribute.String("order.status", order.Status)))
	})

	shop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := map[string]string{"/orders/1": "paid", "/orders/2": "pending", "/orders/3": "paid"}[r.URL.Path]
		if status == "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q,"status":%q}`, r.URL.Path[len("/orders/"):], status)
	}))
	defer shop.Close()
	target, _ := url.Parse(shop.URL)
	proxy, err := tapproxy.New(target,
		tapproxy.WithMeterProvider(mp),
		tapproxy.WithRoute(func(*http.Request) string { return "/orders/{id}" }),
		tapproxy.WithObserver(countOrders))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	for _, id := range []string{"1", "2", "3", "4"} {
		res, err := http.Get(front.URL + "/orders/" + id)
		if err != nil {
			log.Fatal(err)
		}
		res.Body.Close()
	}
	front.Close() // waits for the observers

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	var lines []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name != "shop.orders" {
					continue
				}
				for _, dp := range d.DataPoints {
					status, _ := dp.Attributes.Value("order.status")
					lines = append(lines, fmt.Sprintf("%s{status=%s} %d", m.Name, status.AsString(), dp.Value))
				}
			case metricdata.Histogram[float64]:
				if m.Name != "http.server.request.duration" {
					continue
				}
				for _, dp := range d.DataPoints {
					code, _ := dp.Attributes.Value("http.response.status_code")
					route, _ := dp.Attributes.Value("http.route")
					lines = append(lines, fmt.Sprintf("%s{route=%s,status=%d} count %d",
						m.Name, route.AsString(), code.AsInt64(), dp.Count))
				}
			}
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	// Output:
	// http.server.request.duration{route=/orders/{id},status=200} count 3
	// http.server.request.duration{route=/orders/{id},status=404} count 1
	// shop.orders{status=paid} 2
	// shop.orders{status=pending} 1
}

// Bounding the memory that captures hold across all in-flight requests: a
// response bigger than the whole budget is relayed in full, but its capture
// is cut, and the observer is told.
func ExampleWithCaptureBudget() {
	payload := make([]byte, 64<<10)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(payload)
	}))
	defer upstream.Close()

	const budget = 16 << 10
	done := make(chan string, 1)
	target, _ := url.Parse(upstream.URL)
	proxy, err := tapproxy.New(target,
		tapproxy.WithCaptureLimit(64<<10),
		tapproxy.WithCaptureBudget(budget),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
			kept, _ := io.Copy(io.Discard, ex.Body())
			done <- fmt.Sprintf("skipped: %v, truncated: %v, kept within the budget: %v",
				ex.CaptureSkipped, ex.Truncated, kept <= budget)
		})))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	res, err := http.Get(front.URL)
	if err != nil {
		log.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, res.Body)
	res.Body.Close()
	fmt.Printf("client got %d bytes\n", n)
	fmt.Println(<-done)
	// Output:
	// client got 65536 bytes
	// skipped: true, truncated: true, kept within the budget: true
}

// A pool of three replicas, one of which is down: the failed dial is retried
// on another replica, and the client never sees it.
func ExampleNewBalanced() {
	var targets []*url.URL
	for _, name := range []string{"a", "b"} {
		replica := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "replica %s", name)
		}))
		defer replica.Close()
		u, _ := url.Parse(replica.URL)
		targets = append(targets, u)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close() // nothing listens there any more
	deadURL, _ := url.Parse(dead.URL)
	// First sends everything to the first healthy replica: the dead one.
	targets = append([]*url.URL{deadURL}, targets...)

	attempts := make(chan string, 1)
	proxy, err := tapproxy.NewBalanced(targets,
		tapproxy.WithBalancer(tapproxy.First()),
		tapproxy.WithLogger(slog.New(slog.DiscardHandler)),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
			attempts <- fmt.Sprintf("%d attempts, served by the replica at index %d",
				ex.Attempts, slices.IndexFunc(targets, func(u *url.URL) bool { return u.Host == ex.Upstream.Host }))
		})))
	if err != nil {
		log.Fatal(err)
	}
	defer proxy.Close()
	front := httptest.NewServer(proxy)
	defer front.Close()

	res, err := http.Get(front.URL)
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Println(res.StatusCode, string(body))
	fmt.Println(<-attempts)
	// Output:
	// 200 replica a
	// 2 attempts, served by the replica at index 1
}

// A path that a client did not clean is resolved before it is routed, so
// it cannot leave the target's base path; one that climbs above / is
// refused.
func ExampleWithPathNormalization() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.URL.Path)
	}))
	defer upstream.Close()

	target, _ := url.Parse(upstream.URL + "/v1")
	proxy, err := tapproxy.New(target, tapproxy.WithDirector(tapproxy.StripPrefix("/api")))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	for _, path := range []string{"/api/users/../orders", "/api/%2e%2e/secret", "/api/../../etc"} {
		req, _ := http.NewRequest(http.MethodGet, front.URL, nil)
		req.URL.Opaque = path // sent as written; url.Parse would keep it too
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		fmt.Printf("%s -> %d %s\n", path, res.StatusCode, body)
	}
	// Output:
	// /api/users/../orders -> 200 /v1/orders
	// /api/%2e%2e/secret -> 200 /v1/secret
	// /api/../../etc -> 400
}

// Keeping bodies only where an observer parses them: JSON in full, event
// streams not at all. The client gets every byte either way.
func ExampleWithCapturePolicy() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/events" {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: tick\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}))
	defer upstream.Close()

	seen := make(chan string, 1)
	target, _ := url.Parse(upstream.URL)
	proxy, err := tapproxy.New(target,
		tapproxy.WithCapturePolicy(func(res *http.Response) int64 {
			if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
				return 1 << 20
			}
			return 0
		}),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
			body, _ := io.ReadAll(ex.Body())
			seen <- fmt.Sprintf("%s: %d bytes relayed, %q kept", ex.Request.URL.Path, ex.BodyBytes, body)
		})))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	for _, path := range []string{"/orders", "/events"} {
		res, err := http.Get(front.URL + path)
		if err != nil {
			log.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		fmt.Println(<-seen)
	}
	// Output:
	// /orders: 11 bytes relayed, "{\"ok\":true}" kept
	// /events: 12 bytes relayed, "" kept
}
