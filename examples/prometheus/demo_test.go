package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tapproxy/tapproxy"
)

// startApp runs the program with cfg on loopback ports until the test ends.
func startApp(tb testing.TB, cfg config) *app {
	tb.Helper()
	a, err := start(cfg, slog.New(slog.NewTextHandler(tbWriter{tb}, nil)))
	require.NoError(tb, err)
	tb.Cleanup(a.close)
	return a
}

// get requests path through the proxy, with the header values given as
// name, value pairs, and returns the status and the body.
func get(tb testing.TB, client *http.Client, a *app, path string, header ...string) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, a.proxyURL+path, nil)
	require.NoError(tb, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := client.Do(req)
	require.NoError(tb, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(tb, err)
	return res.StatusCode, string(body)
}

func TestDemoAPIEndpoints(t *testing.T) {
	a := startApp(t, config{})
	client := &http.Client{Timeout: waitTimeout}
	defer client.CloseIdleConnections()

	tests := []struct {
		name, path string
		status     int
		check      func(t *testing.T, body string)
	}{
		{"index", "/", http.StatusOK, func(t *testing.T, body string) {
			for _, p := range []string{"/api/orders", "/api/orders/{id}", "/api/health", "/api/flaky", "/api/slow", "/api/broken", "/api/export"} {
				assert.Contains(t, body, "GET "+p+" ")
			}
		}},
		{"upstream failure", "/api/broken", http.StatusBadGateway, nil},
		{"export is longer than the capture limit", "/api/export", http.StatusOK, func(t *testing.T, body string) {
			assert.Greater(t, len(body), tapproxy.DefaultCaptureLimit)
		}},
		{"not found", "/nowhere", http.StatusNotFound, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := get(t, client, a, tt.path)
			assert.Equal(t, tt.status, status)
			if tt.check != nil {
				tt.check(t, body)
			}
		})
	}

	t.Run("a client that gives up on /api/slow", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.proxyURL+"/api/slow", nil)
		require.NoError(t, err)
		_, err = client.Do(req)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
}

func TestFaultsSetOffTheProxysFailurePaths(t *testing.T) {
	a := startApp(t, config{faults: true})
	client := &http.Client{Timeout: waitTimeout}
	defer client.CloseIdleConnections()

	status, _ := get(t, client, a, "/api/health", faultHeader, "observer-panic")
	assert.Equal(t, http.StatusOK, status, "a panicking observer does not change the response")
	// The first holds the only worker, the second waits in the queue of
	// one, and the others find it full, unless the worker has moved on
	// already; five make at least one drop whatever the timing.
	for range 5 {
		status, _ = get(t, client, a, "/api/health", faultHeader, "slow-observer")
		assert.Equal(t, http.StatusOK, status)
	}
	status, _ = get(t, client, a, "/api/export")
	assert.Equal(t, http.StatusOK, status)

	sums := func() map[string]int64 {
		var rm metricdata.ResourceMetrics
		require.NoError(t, a.reader.Collect(context.Background(), &rm))
		got := map[string]int64{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if s, ok := m.Data.(metricdata.Sum[int64]); ok {
					for _, dp := range s.DataPoints {
						got[m.Name] += dp.Value
					}
				}
			}
		}
		return got
	}
	var got map[string]int64
	require.Eventually(t, func() bool {
		got = sums()
		return got["tapproxy.observer.panics"] == 1 && got["tapproxy.observer.dropped"] >= 1 &&
			got["tapproxy.capture.skipped"] == 1 && got["tapproxy.capture.truncated"] == 1
	}, waitTimeout, 10*time.Millisecond, "got %v", got)
}
