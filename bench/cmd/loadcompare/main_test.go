package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(envRole) != "" {
		// Started by a test below as the upstream or a proxy.
		runRole()
		return
	}
	goleak.VerifyTestMain(m)
}

// TestQuickRun runs the whole comparison in miniature: every variant as a
// process, every scenario, every budget line. It asserts that the report
// is complete, not what it measured: that is the command's job.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process per variant")
	}
	cfg := defaultConfig()
	cfg.rounds, cfg.duration, cfg.conns = 2, 100*time.Millisecond, 2
	cfg.big, cfg.pause, cfg.probes = 1<<20, 10*time.Millisecond, 2
	cfg.timeout = 2 * time.Minute
	rep, err := measure(context.Background(), cfg)
	require.NoError(t, err)
	for _, markdown := range []bool{false, true} {
		var out bytes.Buffer
		rep.print(&out, markdown)
		report := out.String()
		t.Log(report)
		for _, v := range allVariants() {
			rows := regexp.MustCompile(`(?m)^\|? ?`+v+`\b`).FindAllString(report, -1)
			assert.Len(t, rows, 3, "variant %s: a load row, a large-response row and a description", v)
		}
		verdicts := regexp.MustCompile(`(?m)^(- \*\*)?(PASS|FAIL)\b`).FindAllString(report, -1)
		assert.Len(t, verdicts, 8, "one verdict per budget line")
		assert.Contains(t, report, "1.0 MiB response")
		assert.NotContains(t, report, "SKIP")
		if markdown {
			assert.True(t, strings.HasPrefix(report, "### Load comparison"))
		}
	}
}

func TestRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name string
		set  func(*config)
	}{
		{"no rounds", func(c *config) { c.rounds = 0 }},
		{"unknown variant", func(c *config) { c.variants = "bare,nginx" }},
		{"tiny large response", func(c *config) { c.big = 100 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultConfig()
			tt.set(&cfg)
			_, err := run(context.Background(), cfg, &bytes.Buffer{})
			require.Error(t, err)
		})
	}
}
