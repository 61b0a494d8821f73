package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestQuickMemoryRun runs the memory scenario in miniature and asserts
// that its report is complete, not what it measured.
func TestQuickMemoryRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process per variant")
	}
	cfg := defaultConfig()
	cfg.rounds, cfg.duration, cfg.conns, cfg.big = 1, 50*time.Millisecond, 2, 0
	cfg.variants = "bare,observer"
	cfg.timeout = 2 * time.Minute
	cfg.mem = memConfig{on: true, held: 20, heldBytes: 70000, hold: 300 * time.Millisecond,
		rounds: 1, duration: 100 * time.Millisecond, lowConns: 2, highConns: 8, streams: 4}
	rep, err := measure(context.Background(), cfg)
	require.NoError(t, err)
	require.NotNil(t, rep.mem)
	for _, markdown := range []bool{false, true} {
		var out bytes.Buffer
		rep.mem.print(&out, markdown)
		report := out.String()
		t.Log(report)
		for _, v := range memVariants() {
			rows := regexp.MustCompile(`(?m)^\|? ?`+v+`\b`).FindAllString(report, -1)
			assert.Len(t, rows, 3, "variant %s: a held-streams row, a concurrency row and a description", v)
		}
		verdicts := regexp.MustCompile(`(?m)^(- \*\*)?(PASS|FAIL)\b`).FindAllString(report, -1)
		assert.Len(t, verdicts, 4, "one verdict per memory budget line")
		assert.Contains(t, report, "20 held streams")
		if markdown {
			assert.True(t, strings.HasPrefix(strings.TrimSpace(report), "### Memory and concurrency"))
		}
	}
	for _, v := range memVariants() {
		assert.Zero(t, rep.mem.held[v].errs, v)
		assert.Equal(t, 20, rep.mem.held[v].inFlight, v)
		assert.Positive(t, rep.mem.held[v].peakRSS, v)
		assert.Positive(t, rep.mem.h2[v].reqs, v)
	}
}

func TestRejectsBadMemoryFlags(t *testing.T) {
	cfg := defaultConfig()
	cfg.mem.on, cfg.mem.held = true, 0
	_, err := run(context.Background(), cfg, &bytes.Buffer{})
	require.Error(t, err)
}
