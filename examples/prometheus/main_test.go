package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	listenHost = "127.0.0.1" // tests listen on loopback only
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds waits on this process; Prometheus gets longer to
// start and scrape on a loaded machine.
const (
	waitTimeout       = 10 * time.Second
	prometheusTimeout = 60 * time.Second
)

// busyPort returns a loopback port that is in use until the test ends.
func busyPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	_, port, _ := net.SplitHostPort(l.Addr().String())
	require.NoError(t, l.Close())
	return port
}

func TestBadInvocationExitsTwoWithOneLine(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"malformed URL", []string{"-target-url", "::not a url"}, `-target-url "::not a url": want an absolute http or https URL`},
		{"relative URL", []string{"-target-url", "example.com/api"}, `-target-url "example.com/api": want an absolute http or https URL`},
		{"other scheme", []string{"-target-url", "ftp://example.com"}, `want an absolute http or https URL`},
		{"port not a number", []string{"-port", "http"}, `invalid value "http" for flag -port`},
		{"port out of range", []string{"-port", "70000"}, `-port 70000: not a port number`},
		{"negative demo", []string{"-demo", "-1"}, `-demo -1: must not be negative`},
		{"unknown flag", []string{"-colour"}, `flag provided but not defined: -colour`},
		{"stray argument", []string{"extra"}, `unexpected argument "extra"`},
		{"busy port", []string{"-port", "BUSY", "-metrics-port", "0"}, "-port BUSY: listen tcp 127.0.0.1:BUSY: bind: address already in use"},
		{"busy metrics port", []string{"-port", "0", "-metrics-port", "BUSY"}, "-metrics-port BUSY: listen tcp 127.0.0.1:BUSY: bind: address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := busyPort(t)
			for i, a := range tt.args {
				tt.args[i] = strings.ReplaceAll(a, "BUSY", port)
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, &stdout, &stderr)
			require.Error(t, err)
			assert.Equal(t, 2, exitCode(err, &stderr))
			msg := stderr.String()
			assert.True(t, strings.HasPrefix(msg, "prometheus: "), msg)
			assert.Equal(t, 1, strings.Count(msg, "\n"), "one line: %q", msg)
			assert.Contains(t, msg, strings.ReplaceAll(tt.want, "BUSY", port))
			assert.Empty(t, stdout.String())
		})
	}
}

func TestHelpExitsZero(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-h"}, &stdout, &stderr)
	assert.Equal(t, 0, exitCode(err, io.Discard))
	assert.Contains(t, stderr.String(), "-target-url URL")
	assert.Contains(t, stderr.String(), "-metrics-port port")
}

func TestDemoPrintsWhatItCaptured(t *testing.T) {
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	// One round of demoPaths: /api/flaky fails on its third call.
	err := run(ctx, []string{"-demo", strconv.Itoa(len(demoPaths)), "-port", "0", "-metrics-port", "0"}, &stdout, &stderr)
	require.NoError(t, err, stderr.String())
	require.Equal(t, 0, exitCode(err, &stderr))
	out := stdout.String()
	t.Log(out)
	for _, line := range []string{
		"GET /api/orders 200 +1 request,",
		"GET /api/orders/{id} 200 +3 requests",
		"GET /api/orders/{id} 404 +1 request,",
		"GET /api/flaky 200 +2 requests",
		"GET /api/flaky 503 error.type=503 +1 request,",
		"GET /api/health 200 +1 request,",
		`GET 127\.0\.0\.1:\d+ 200 +7 requests`,
		`GET 127\.0\.0\.1:\d+ 404 error.type=404 +1 request,`,
		`Response bodies: \d+ bytes in 9 responses`,
		// /api/orders lists all five, then 1001, 1002 and 1003 one each.
		"paid +4", "pending +2", "shipped +1", "cancelled +1",
	} {
		assert.Regexp(t, `(?m)^ *`+strings.ReplaceAll(strings.ReplaceAll(line, "{", `\{`), "}", `\}`), out)
	}
	assert.NotContains(t, out, "other")
}

func TestPrometheusCountsProxiedRequests(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("prometheus binary not found; CI installs the Debian package prometheus")
		}
		t.Skip("prometheus binary not found; install the Debian package prometheus")
	}

	a, err := start(config{}, slog.New(slog.NewTextHandler(tbWriter{t}, nil)))
	require.NoError(t, err)
	t.Cleanup(a.close)
	metricsURL, err := url.Parse(a.metricsURL)
	require.NoError(t, err)

	promURL := startPrometheus(t, bin, metricsURL.Host)

	// Two rounds of demoPaths.
	client := &http.Client{Timeout: waitTimeout}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, sendDemo(ctx, client, a.proxyURL, demoPaths, 2*len(demoPaths)))

	byStatus := func(query string) map[string]string {
		return queryVector(t, client, promURL, query, "http_response_status_code")
	}
	want := map[string]string{"200": "14", "404": "2", "503": "2"}
	var got map[string]string
	require.Eventually(t, func() bool {
		got = byStatus(`sum by (http_response_status_code) (http_server_request_duration_seconds_count{job="tapproxy"})`)
		return fmt.Sprint(got) == fmt.Sprint(want)
	}, prometheusTimeout, 250*time.Millisecond, "client-facing counts by status: got %v, want %v", got, want)

	// The same exchanges, seen as requests to the upstream.
	assert.Equal(t, want,
		byStatus(`sum by (http_response_status_code) (http_client_request_duration_seconds_count{job="tapproxy"})`))
	// The failures carry error.type; a 404 is no server error.
	assert.Equal(t, map[string]string{"": "16", "503": "2"},
		queryVector(t, client, promURL, `sum by (error_type) (http_server_request_duration_seconds_count{job="tapproxy"})`, "error_type"))
	// And the observer's domain metric made it too: 2 × (5 + 3) orders.
	assert.Equal(t, map[string]string{"": "16"},
		queryVector(t, client, promURL, `sum(shop_orders_total{job="tapproxy"})`, "none"))
}

// startPrometheus runs the Prometheus server at bin on loopback, scraping
// target every second, until the test ends. It returns its base URL once it
// is ready.
func startPrometheus(t *testing.T, bin, target string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tapproxy
    static_configs:
      - targets: [%q]
`, target)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(cfgFile, []byte(cfg), 0o600))
	addr := net.JoinHostPort("127.0.0.1", freePort(t))

	var logs syncBuffer
	cmd := exec.Command(bin,
		"--config.file="+cfgFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(waitTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus output:\n%s", logs.String())
		}
	})

	base := "http://" + addr
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	require.Eventually(t, func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("prometheus exited: %v\n%s", err, logs.String())
		default:
		}
		res, err := client.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, prometheusTimeout, 100*time.Millisecond, "prometheus did not become ready")
	return base
}

// queryVector runs an instant query and returns its samples' values by the
// given label.
func queryVector(t *testing.T, client *http.Client, base, query, label string) map[string]string {
	t.Helper()
	res, err := client.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
	require.NoError(t, err)
	defer res.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
	require.Equal(t, "success", body.Status, body.Error)
	got := map[string]string{}
	for _, r := range body.Data.Result {
		v, _ := r.Value[1].(string)
		got[r.Metric[label]] = v
	}
	return got
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

// tbWriter routes logs to t.Log.
type tbWriter struct{ t testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestDemoBalancesOverSeveralTargets(t *testing.T) {
	var hits [2]atomic.Int64
	var targets []string
	for i := range hits {
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			fmt.Fprintf(w, "replica %d", i)
		}))
		t.Cleanup(up.Close)
		targets = append(targets, "-target-url", up.URL)
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	args := append([]string{"-demo", "40", "-port", "0", "-metrics-port", "0"}, targets...)
	require.NoError(t, run(ctx, args, &stdout, &stderr), stderr.String())
	out := stdout.String()
	t.Log(out)
	for i := range hits {
		assert.Positive(t, hits[i].Load(), "replica %d got requests", i)
		host := strings.TrimPrefix(targets[2*i+1], "http://")
		assert.Regexp(t, `(?m)^ *GET `+regexp.QuoteMeta(host)+` 200 +\d+ requests`, out, "the upstream leg's metrics name each replica")
	}
	assert.Equal(t, int64(40), hits[0].Load()+hits[1].Load())
}
