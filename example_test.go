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
