package observability_test

import (
	"bytes"
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// promtool runs promtool with args, its input on stdin, and returns its
// combined output and whether it succeeded.
func promtool(tb testing.TB, stdin []byte, args ...string) (string, bool) {
	tb.Helper()
	bin := lookTool(tb, "promtool")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil && ctx.Err() != nil {
		tb.Fatalf("promtool %s: %v", strings.Join(args, " "), ctx.Err())
	}
	return string(out), err == nil
}

func TestRulesWithPromtool(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"check rules", []string{"check", "rules", rulesFile}},
		// Each alert fires on its series, stays silent on healthy ones,
		// and the low-traffic guard holds: see the file.
		{"test rules", []string{"test", "rules", rulesTestFile}},
		{"check config", []string{"check", "config", promConfigFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, ok := promtool(t, nil, tt.args...)
			assert.True(t, ok, "promtool %s:\n%s", strings.Join(tt.args, " "), out)
			assert.Contains(t, out, "SUCCESS")
		})
	}
}

// TestRulesTestsCoverEveryAlert keeps rules_test.yml honest: every alert
// of rules.yml is expected to fire in some test and to stay silent in
// another.
func TestRulesTestsCoverEveryAlert(t *testing.T) {
	var tests struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			Name      string `yaml:"name"`
			AlertTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(readFile(t, rulesTestFile)), &tests))
	require.Equal(t, []string{"rules.yml"}, tests.RuleFiles)
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertTest {
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			} else {
				silent[at.Alertname] = true
			}
		}
	}
	alerts := 0
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			assert.True(t, fires[r.Alert], "no test in %s expects %s to fire", rulesTestFile, r.Alert)
			assert.True(t, silent[r.Alert], "no test in %s expects %s to stay silent", rulesTestFile, r.Alert)
		}
	}
	assert.Equal(t, 6, alerts)
}

// TestExampleMetricsPassPromtool runs promtool check metrics on the
// example's /metrics after the demo traffic, with -faults so that every
// metric is there.
func TestExampleMetricsPassPromtool(t *testing.T) {
	lookTool(t, "promtool")
	a := startExample(t, "-faults")
	client := &http.Client{Timeout: requestTimeout}
	defer client.CloseIdleConnections()
	send(t, client, a.proxyURL, demoTraffic)
	send(t, client, a.proxyURL, faultTraffic[:1])
	upstreamsDown(t, client, a) // for tapproxy_balancer_fail_open_total
	var body []byte
	require.Eventually(t, func() bool {
		body = scrape(t, client, a.metricsURL)
		return bytes.Contains(body, []byte("tapproxy_observer_panics_total{"))
	}, waitTimeout, 50*time.Millisecond)
	out, ok := promtool(t, body, "check", "metrics")
	assert.True(t, ok, "promtool check metrics:\n%s", out)
	assert.Empty(t, strings.TrimSpace(out), "promtool check metrics reports problems")
}
