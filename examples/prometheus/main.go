// Command prometheus puts tapproxy in front of a web service and serves the
// metrics of every exchange it relays at /metrics, in Prometheus's format,
// through the OpenTelemetry Prometheus exporter: request counts by status
// code, latencies and body sizes of a service you cannot instrument, plus a
// metric parsed out of its JSON responses by an observer.
//
// With no flags it starts an embedded demo JSON API and proxies to it:
//
//	go run ./examples/prometheus
//	curl localhost:8080/api/orders
//	curl localhost:9090/metrics
//
// The flags:
//
//	-target-url URL  proxy to this service instead of the demo API; repeat
//	                 it to balance over several replicas of the service
//	-port N          the proxy's port (default 8080)
//	-metrics-port N  the port of /metrics (default 9090)
//	-demo N          send N requests through the proxy, print the metrics
//	                 they produced, and exit
//	-host HOST       listen on this host only, such as 127.0.0.1 (default
//	                 every interface)
//	-faults          let requests set off the proxy's own failure paths, so
//	                 that every dashboard panel can show data (see faults.go);
//	                 with the demo API, serve it as two replicas that the
//	                 proxy balances over, with active health checks, passive
//	                 ejection and retries, and let the request header
//	                 "X-Demo-Fault: upstreams-down" fail their /api/health
//	                 for 2s
//	-har             keep the recent exchanges (the last 1000, bodies up to
//	                 64 MiB in all) and serve them as a HAR file at /har on
//	                 the metrics port; DELETE /har clears them
//
// With -har, download the file and open it in a browser's network panel
// (in Chrome or Firefox: DevTools, Network, then drag the file in):
//
//	go run ./examples/prometheus -har
//	curl localhost:8080/api/orders
//	curl -OJ localhost:9090/har
//
// Bad flags and ports that are in use end it with a one-line error and exit
// status 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

// listenHost is the host the proxy and /metrics listen on: every interface.
// Tests set it to loopback.
var listenHost = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// usageError is an error in how the program was started: a bad flag, or a
// port it cannot listen on.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitCode reports err on one line of stderr and returns the exit status:
// 0 for none (or -h), 2 for a usage error, 1 otherwise.
func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "prometheus:", strings.ReplaceAll(err.Error(), "\n", "; "))
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

type config struct {
	targets     []*url.URL // none: the embedded demo API
	port        int
	metricsPort int
	demo        int
	har         bool   // record exchanges and serve them at /har
	host        string // "": listenHost
	faults      bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var (
		c       config
		targets []string
	)
	fs := flag.NewFlagSet("prometheus", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors go out in one line, from main
	fs.Func("target-url", "proxy to this `URL` instead of the embedded demo API; repeat it to balance over several", func(target string) error {
		targets = append(targets, target)
		return nil
	})
	fs.IntVar(&c.port, "port", 8080, "the proxy's `port`")
	fs.IntVar(&c.metricsPort, "metrics-port", 9090, "the `port` that serves /metrics")
	fs.IntVar(&c.demo, "demo", 0, "send `N` requests through the proxy, print the metrics they produced, and exit")
	fs.BoolVar(&c.har, "har", false, "keep the recent exchanges and serve them as a HAR file at /har on the metrics port")
	fs.StringVar(&c.host, "host", "", "listen on this `host` only (default every interface)")
	fs.BoolVar(&c.faults, "faults", false, "let requests with header "+faultHeader+" set off the proxy's failure paths")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "Usage: prometheus [flags]\n\nAn observing reverse proxy that serves its metrics to Prometheus.")
			fs.PrintDefaults()
			return c, err
		}
		return c, usageError{err}
	}
	switch {
	case fs.NArg() > 0:
		return c, usagef("unexpected argument %q", fs.Arg(0))
	case c.port < 0 || c.port > 65535:
		return c, usagef("-port %d: not a port number", c.port)
	case c.metricsPort < 0 || c.metricsPort > 65535:
		return c, usagef("-metrics-port %d: not a port number", c.metricsPort)
	case c.demo < 0:
		return c, usagef("-demo %d: must not be negative", c.demo)
	}
	for _, target := range targets {
		u, err := url.Parse(target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, usagef("-target-url %q: want an absolute http or https URL", target)
		}
		c.targets = append(c.targets, u)
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	a, err := start(cfg, logger)
	if err != nil {
		return err
	}
	defer a.close()

	if cfg.demo > 0 {
		return a.demo(ctx, cfg, stdout)
	}
	fmt.Fprintf(stdout, "Proxying %s to %s.\n", a.proxyURL, a.target)
	if len(cfg.targets) == 0 {
		fmt.Fprintf(stdout, "Try:\n  curl %[1]s/\n  curl %[1]s/api/orders\n  curl %[1]s/api/orders/1001\n  curl %[1]s/api/flaky\n", a.proxyURL)
	} else {
		fmt.Fprintf(stdout, "Try:\n  curl %s/\n", a.proxyURL)
	}
	fmt.Fprintf(stdout, "Then see the metrics:\n  curl %s/metrics\n", a.metricsURL)
	if cfg.har {
		fmt.Fprintf(stdout, "And the recent exchanges, for a browser's network panel:\n  curl -OJ %s/har\n", a.metricsURL)
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-a.errc:
		return err
	}
}

// app is the running program: the proxy, /metrics, and the demo API when
// there is no -target-url.
type app struct {
	proxy, metrics, upstream *http.Server
	tp                       *tapproxy.Proxy
	proxyURL, metricsURL     string
	target                   string
	mp                       *sdkmetric.MeterProvider
	reader                   *sdkmetric.ManualReader // for the -demo summary
	errc                     chan error
}

// start listens on the configured ports and serves. A port it cannot listen
// on is a usage error.
func start(cfg config, logger *slog.Logger) (*app, error) {
	if cfg.host == "" {
		cfg.host = listenHost
	}
	pl, err := net.Listen("tcp", net.JoinHostPort(cfg.host, strconv.Itoa(cfg.port)))
	if err != nil {
		return nil, usagef("-port %d: %w", cfg.port, err)
	}
	ml, err := net.Listen("tcp", net.JoinHostPort(cfg.host, strconv.Itoa(cfg.metricsPort)))
	if err != nil {
		pl.Close()
		return nil, usagef("-metrics-port %d: %w", cfg.metricsPort, err)
	}
	a := &app{errc: make(chan error, 2+demoReplicas)} // one per server loop
	ok := false
	defer func() {
		if !ok {
			a.close()
			pl.Close()
			ml.Close()
		}
	}()

	targets := cfg.targets
	var opts []tapproxy.Option
	if len(targets) == 0 {
		api, err := newDemoAPI()
		if err != nil {
			return nil, err
		}
		// Under -faults the demo API is served on several addresses, as
		// replicas for the proxy to balance over, with faults of its own.
		var handler http.Handler = api
		replicas := 1
		if cfg.faults {
			handler = new(upstreamFaults).wrap(api)
			replicas = demoReplicas
			opts = append(opts, demoPoolOptions()...)
		}
		a.upstream = newServer(handler, logger)
		names := make([]string, replicas)
		for i := range replicas {
			ul, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			go a.serve(a.upstream, ul)
			targets = append(targets, &url.URL{Scheme: "http", Host: ul.Addr().String()})
			names[i] = targets[i].String()
		}
		what := "the embedded demo API"
		if replicas > 1 {
			what = fmt.Sprintf("%d replicas of the embedded demo API", replicas)
		}
		a.target = strings.Join(names, ", ") + " (" + what + ")"
		opts = append(opts, tapproxy.WithRoute(routeOf(api)))
	} else {
		names := make([]string, len(targets))
		for i, t := range targets {
			names[i] = t.Redacted()
		}
		a.target = strings.Join(names, ", ")
	}

	// The exporter is a reader of the MeterProvider that the proxy and the
	// observer record with; /metrics serves what it reads.
	registry := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(registry))
	if err != nil {
		return nil, err
	}
	a.reader = sdkmetric.NewManualReader()
	a.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter), sdkmetric.WithReader(a.reader))
	orders, err := newOrdersObserver(a.mp)
	if err != nil {
		return nil, err
	}
	if cfg.faults {
		opts = append(opts, faultOptions()...)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	if cfg.har {
		// The recorder runs beside the metrics observer; /har serves
		// what it keeps, on the metrics port, which should stay private:
		// the file holds bodies. Credentials are redacted by the proxy.
		rec := har.NewRecorder()
		opts = append(opts, tapproxy.WithObserver(rec))
		mux.Handle("/har", rec.Handler())
	}
	opts = append(opts,
		tapproxy.WithMeterProvider(a.mp),
		tapproxy.WithDirector(tapproxy.ForwardedHeaders()),
		tapproxy.WithObserver(orders),
		tapproxy.WithLogger(logger))
	// One target is proxied as it is; several are a pool, balanced by
	// least requests, with passive health and dial retries.
	var proxy *tapproxy.Proxy
	if len(targets) == 1 {
		proxy, err = tapproxy.New(targets[0], opts...)
	} else {
		proxy, err = tapproxy.NewBalanced(targets, opts...)
	}
	if err != nil {
		return nil, usageError{err}
	}
	a.tp = proxy
	a.proxy, a.metrics = newServer(proxy, logger), newServer(mux, logger)
	a.proxyURL, a.metricsURL = baseURL(cfg.host, pl.Addr()), baseURL(cfg.host, ml.Addr())
	go a.serve(a.proxy, pl)
	go a.serve(a.metrics, ml)
	ok = true
	return a, nil
}

func newServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelError),
	}
}

func (a *app) serve(srv *http.Server, l net.Listener) {
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		a.errc <- err
	}
}

// baseURL is the URL to tell users for a listener's address.
func baseURL(host string, addr net.Addr) string {
	if host == "" {
		host = "localhost"
	}
	_, port, _ := net.SplitHostPort(addr.String())
	return "http://" + net.JoinHostPort(host, port)
}

// close stops serving, the proxy first so that the exchanges in flight are
// recorded, and flushes the metrics.
func (a *app) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, srv := range []*http.Server{a.proxy, a.upstream, a.metrics} {
		if srv != nil {
			_ = srv.Shutdown(ctx)
		}
	}
	if a.tp != nil {
		_ = a.tp.Shutdown(ctx) // observers still queued with -faults
	}
	if a.mp != nil {
		_ = a.mp.Shutdown(ctx)
	}
}

// demo sends cfg.demo requests through the proxy and prints the metrics
// they produced.
func (a *app) demo(ctx context.Context, cfg config, stdout io.Writer) error {
	paths := demoPaths
	if len(cfg.targets) > 0 {
		paths = []string{"/"}
	}
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	if err := sendDemo(ctx, client, a.proxyURL, paths, cfg.demo); err != nil {
		return err
	}
	// The proxy records an exchange just after its last byte went out:
	// shutting it down waits for that.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.proxy.Shutdown(sctx); err != nil {
		return err
	}
	if err := a.tp.Shutdown(sctx); err != nil {
		return err
	}
	var rm metricdata.ResourceMetrics
	if err := a.reader.Collect(ctx, &rm); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Sent %d requests through the proxy at %s to %s.\n\n", cfg.demo, a.proxyURL, a.target)
	summarize(stdout, rm)
	return nil
}
