package observability_test

import (
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// startPrometheus runs the Prometheus server at bin on loopback with the
// shipped prometheus.yml and rules.yml, changed only to scrape target every
// second and to evaluate the rules as often, until the test ends. It
// returns Prometheus's base URL once it is ready.
func startPrometheus(tb testing.TB, bin, target string) string {
	tb.Helper()
	dir := tb.TempDir()
	cfg, err := os.ReadFile(promConfigFile)
	require.NoError(tb, err)
	s := string(cfg)
	for _, r := range [][2]string{
		{"scrape_interval: 15s", "scrape_interval: 1s\n  scrape_timeout: 1s"},
		{"evaluation_interval: 15s", "evaluation_interval: 1s"},
		{`targets: ["localhost:9090"]`, `targets: ["` + target + `"]`},
	} {
		require.Equal(tb, 1, strings.Count(s, r[0]), "%s: want one %q", promConfigFile, r[0])
		s = strings.Replace(s, r[0], r[1], 1)
	}
	require.NoError(tb, os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(s), 0o600))
	rules, err := os.ReadFile(rulesFile)
	require.NoError(tb, err)
	require.NoError(tb, os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o600))

	addr := net.JoinHostPort("127.0.0.1", freePort(tb))
	startProcess(tb, "prometheus", bin, []string{
		"--config.file=" + filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr,
		"--log.level=warn",
	}, "http://"+addr+"/-/ready")
	return "http://" + addr
}

// sample is one element of an instant vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// instantQuery runs query through /api/v1/query and returns its samples; a
// query Prometheus rejects fails the test.
func instantQuery(tb testing.TB, client *http.Client, base, query string) []sample {
	tb.Helper()
	res, err := client.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
	require.NoError(tb, err)
	defer res.Body.Close()
	var body struct {
		Status    string `json:"status"`
		Error     string `json:"error"`
		ErrorType string `json:"errorType"`
		Data      struct {
			ResultType string   `json:"resultType"`
			Result     []sample `json:"result"`
		} `json:"data"`
	}
	require.NoError(tb, json.NewDecoder(res.Body).Decode(&body))
	require.Equal(tb, "success", body.Status, "%s: %s %s", query, body.ErrorType, body.Error)
	require.Equal(tb, "vector", body.Data.ResultType, query)
	return body.Data.Result
}
