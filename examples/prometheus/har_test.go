package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy/har"
)

// TestHARFlag: with -har, /har on the metrics port serves the recent
// exchanges as a HAR download, and DELETE clears them; without it there is
// no /har.
func TestHARFlag(t *testing.T) {
	cfg, err := parseFlags([]string{"-har", "-port", "0", "-metrics-port", "0"}, io.Discard)
	require.NoError(t, err)
	require.True(t, cfg.har)
	a, err := start(cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(a.close)
	client := &http.Client{Timeout: waitTimeout}
	defer client.CloseIdleConnections()

	for _, p := range []string{"/api/orders", "/api/orders/1001"} {
		res, err := client.Get(a.proxyURL + p)
		require.NoError(t, err)
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	download := func() (*http.Response, har.HAR) {
		res, err := client.Get(a.metricsURL + "/har")
		require.NoError(t, err)
		defer res.Body.Close()
		var h har.HAR
		require.NoError(t, json.NewDecoder(res.Body).Decode(&h))
		return res, h
	}
	var h har.HAR
	require.Eventually(t, func() bool {
		_, h = download()
		return len(h.Log.Entries) == 2
	}, waitTimeout, 5*time.Millisecond)
	res, _ := download()
	assert.Equal(t, "application/json", res.Header.Get("Content-Type"))
	assert.Contains(t, res.Header.Get("Content-Disposition"), `attachment; filename="tapproxy-`)
	assert.Contains(t, h.Log.Entries[0].Request.URL, "/api/orders")
	assert.Equal(t, http.StatusOK, h.Log.Entries[0].Response.Status)
	assert.NotEmpty(t, h.Log.Entries[0].Response.Content.Text)

	req, err := http.NewRequest(http.MethodDelete, a.metricsURL+"/har", nil)
	require.NoError(t, err)
	res, err = client.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusNoContent, res.StatusCode)
	_, h = download()
	assert.Empty(t, h.Log.Entries)
}

func TestNoHARByDefault(t *testing.T) {
	cfg, err := parseFlags([]string{"-port", "0", "-metrics-port", "0"}, io.Discard)
	require.NoError(t, err)
	a, err := start(cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(a.close)
	client := &http.Client{Timeout: waitTimeout}
	defer client.CloseIdleConnections()
	res, err := client.Get(a.metricsURL + "/har")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusNotFound, res.StatusCode)
}
