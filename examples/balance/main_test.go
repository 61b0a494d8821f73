package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDemoLosesNoRequestWhenAReplicaDies(t *testing.T) {
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, run(ctx, []string{"-demo", "300"}, &stdout, &stderr), stderr.String())
	out := stdout.String()
	t.Log(out)

	assert.Contains(t, out, "Sent 300 requests")
	assert.Contains(t, out, "Failures seen by clients: 0\n")
	counts := regexp.MustCompile(`(?m)^  127\.0\.0\.1:\d+ +(\d+)$`).FindAllStringSubmatch(out, -1)
	require.Len(t, counts, replicas, "one line per replica")
	total := 0
	for _, c := range counts {
		n, err := strconv.Atoi(c[1])
		require.NoError(t, err)
		assert.Positive(t, n, "every replica served some requests")
		total += n
	}
	assert.Equal(t, 300, total, "every request was served by a replica")
	victim := regexp.MustCompile(`(127\.0\.0\.1:\d+) killed`).FindStringSubmatch(out)
	require.NotNil(t, victim)
	assert.Regexp(t, regexp.QuoteMeta(victim[1])+` (ejected by passive health|marked down by health checks)`, out)
	assert.Regexp(t, regexp.QuoteMeta(victim[1])+` re-admitted`, out)
}

func TestBadFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	assert.ErrorContains(t, run(context.Background(), []string{"-demo", "-1"}, &stdout, &stderr), "must not be negative")
	assert.Error(t, run(context.Background(), []string{"-bogus"}, &stdout, &stderr))
}
