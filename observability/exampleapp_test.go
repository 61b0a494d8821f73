package observability_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Bounds on waits: generous, for a loaded machine.
const (
	waitTimeout    = 30 * time.Second
	buildTimeout   = 5 * time.Minute
	requestTimeout = 10 * time.Second
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// exampleBinary builds examples/prometheus once per test run and returns the
// path of the program.
func exampleBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tapproxy-observability-")
		if buildErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(buildDir, "prometheus-example"), "./examples/prometheus")
		cmd.Dir = repoRoot(tb)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.Join(err, errors.New(string(out)))
		}
	})
	require.NoError(tb, buildErr, "building examples/prometheus")
	return filepath.Join(buildDir, "prometheus-example")
}

func removeExampleBinary() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	_, port, _ := net.SplitHostPort(l.Addr().String())
	require.NoError(tb, l.Close())
	return port
}

// exampleApp is a running examples/prometheus.
type exampleApp struct {
	proxyURL, metricsURL string
	metricsHost          string // host:port of /metrics, for Prometheus
}

// startExample runs examples/prometheus on loopback, with the embedded demo
// API and the extra flags given, until the test ends, and returns once its
// /metrics answers.
func startExample(tb testing.TB, flags ...string) exampleApp {
	tb.Helper()
	port, metricsPort := freePort(tb), freePort(tb)
	a := exampleApp{
		proxyURL:    "http://127.0.0.1:" + port,
		metricsHost: "127.0.0.1:" + metricsPort,
	}
	a.metricsURL = "http://" + a.metricsHost + "/metrics"
	args := append([]string{"-host", "127.0.0.1", "-port", port, "-metrics-port", metricsPort}, flags...)
	startProcess(tb, "examples/prometheus", exampleBinary(tb), args, a.metricsURL)
	return a
}

// startProcess runs bin with args until the test ends, and returns once
// readyURL answers 200. It stops the process by its PID: SIGTERM, then,
// past waitTimeout, SIGKILL.
func startProcess(tb testing.TB, name, bin string, args []string, readyURL string) {
	tb.Helper()
	var logs syncBuffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(tb, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(waitTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
		if tb.Failed() {
			tb.Logf("%s output:\n%s", name, logs.String())
		}
	})

	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(waitTimeout)
	for {
		select {
		case err := <-exited:
			exited <- err
			tb.Fatalf("%s exited: %v\n%s", name, err, logs.String())
		default:
		}
		if res, err := client.Get(readyURL); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s did not become ready at %s within %v\n%s", name, readyURL, waitTimeout, logs.String())
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// demoRequest is one request of the demo traffic.
type demoRequest struct {
	method, path string
	header       http.Header
	// leave makes the client give up after this long, before the answer.
	leave time.Duration
}

// demoTraffic is what the tests send through the proxy: successes, 404s,
// 503s (/api/flaky fails every third call), an upstream failure, a client
// that leaves, an unknown method, and a body longer than the capture
// limit.
var demoTraffic = []demoRequest{
	{method: "GET", path: "/"},
	{method: "GET", path: "/api/orders"},
	{method: "GET", path: "/api/orders/1001"},
	{method: "GET", path: "/api/orders/1002"},
	{method: "GET", path: "/api/health"},
	{method: "GET", path: "/api/export"},
	{method: "GET", path: "/api/orders/9999"},
	{method: "GET", path: "/nowhere"},
	{method: "GET", path: "/api/flaky"},
	{method: "GET", path: "/api/flaky"},
	{method: "GET", path: "/api/flaky"},
	{method: "GET", path: "/api/broken"},
	{method: "GET", path: "/api/slow", leave: 100 * time.Millisecond},
	{method: "BREW", path: "/api/orders"},
}

// faultTraffic sets off the proxy's own failure paths under -faults: an
// observer panic, and a held observer that makes the proxy drop the
// exchanges after it. (The upstreams' failure paths are upstreamsDown's,
// and /api/broken's in demoTraffic.)
var faultTraffic = []demoRequest{
	{method: "GET", path: "/api/health", header: http.Header{"X-Demo-Fault": {"observer-panic"}}},
	{method: "GET", path: "/api/health", header: http.Header{"X-Demo-Fault": {"slow-observer"}}},
	{method: "GET", path: "/api/health", header: http.Header{"X-Demo-Fault": {"slow-observer"}}},
	{method: "GET", path: "/api/health", header: http.Header{"X-Demo-Fault": {"slow-observer"}}},
	{method: "GET", path: "/api/health", header: http.Header{"X-Demo-Fault": {"slow-observer"}}},
	{method: "GET", path: "/api/health", header: http.Header{"X-Demo-Fault": {"slow-observer"}}},
}

// upstreamsDown sets off the upstream faults of -faults: it asks the demo
// API's replicas to fail their health checks, with requests that the proxy
// still serves, until its scrape counts one that failed open. Each request
// carries the fault, so that the replicas stay down however slow the
// checks are on a loaded machine; they recover by themselves afterwards.
func upstreamsDown(tb testing.TB, client *http.Client, a exampleApp) {
	tb.Helper()
	down := []demoRequest{{method: "GET", path: "/api/orders", header: http.Header{"X-Demo-Fault": {"upstreams-down"}}}}
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(50 * time.Millisecond) {
		send(tb, client, a.proxyURL, down)
		if bytes.Contains(scrape(tb, client, a.metricsURL), []byte("\ntapproxy_balancer_fail_open_total{")) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no request failed open within %v of upstreams-down", waitTimeout)
		}
	}
}

// send sends reqs through the proxy at base, reading every answer to its
// end; the requests that leave must end in their deadline.
func send(tb testing.TB, client *http.Client, base string, reqs []demoRequest) {
	tb.Helper()
	for _, r := range reqs {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		if r.leave > 0 {
			ctx, cancel = context.WithTimeout(context.Background(), r.leave)
		}
		req, err := http.NewRequestWithContext(ctx, r.method, base+r.path, nil)
		require.NoError(tb, err)
		req.Header = r.header.Clone()
		if req.Header == nil {
			req.Header = http.Header{}
		}
		res, err := client.Do(req)
		if r.leave > 0 {
			cancel()
			require.ErrorIs(tb, err, context.DeadlineExceeded, "%s %s", r.method, r.path)
			if res != nil {
				res.Body.Close()
			}
			continue
		}
		require.NoError(tb, err, "%s %s", r.method, r.path)
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		cancel()
		require.NoError(tb, err, "%s %s", r.method, r.path)
	}
}

// scrape returns the body of url, such as the example's /metrics.
func scrape(tb testing.TB, client *http.Client, url string) []byte {
	tb.Helper()
	res, err := client.Get(url)
	require.NoError(tb, err)
	defer res.Body.Close()
	require.Equal(tb, http.StatusOK, res.StatusCode)
	b, err := io.ReadAll(res.Body)
	require.NoError(tb, err)
	return b
}

// syncBuffer is a bytes.Buffer safe for the writes of a child process's
// output copiers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
