package tapproxytest_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy/tapproxytest"
)

// faultsOf sends n sequential GETs through a new server with faults and
// seed, and returns each exchange's Faults.
func faultsOf(t *testing.T, seed int64, n int, faults ...tapproxytest.Fault) [][]string {
	t.Helper()
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithSeed(seed), tapproxytest.WithFaults(faults...))
	var got [][]string
	for i := 1; i <= n; i++ {
		_, _, err := get(t, srv.Client(), srv.URL+"/")
		require.NoError(t, err)
		got = append(got, exchange(t, srv, i).Faults)
	}
	return got
}

func TestRandomDelaysSameSeedSameDelays(t *testing.T) {
	tests := []struct {
		name  string
		fault tapproxytest.Fault
	}{
		{"uniform", tapproxytest.DelayUniform(0, 5*time.Millisecond)},
		{"log-normal", tapproxytest.DelayLogNormal(time.Millisecond, 1, 5*time.Millisecond)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := faultsOf(t, 11, 5, tt.fault)
			b := faultsOf(t, 11, 5, tt.fault)
			c := faultsOf(t, 12, 5, tt.fault)
			assert.Equal(t, a, b)
			assert.NotEqual(t, a, c)
			for _, fs := range a {
				require.Len(t, fs, 1)
				name, drawn, ok := strings.Cut(fs[0], "=")
				require.True(t, ok, fs[0])
				assert.Equal(t, tt.fault.String(), name)
				d, err := time.ParseDuration(drawn)
				require.NoError(t, err)
				assert.LessOrEqual(t, d, 5*time.Millisecond)
			}
		})
	}
}

func TestRandomDelayRecordedAndHeld(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithSeed(1),
		tapproxytest.WithFaults(tapproxytest.DelayUniform(20*time.Millisecond, 40*time.Millisecond).Named("jitter")))
	_, body, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, "ok", string(body))
	ex := exchange(t, srv, 1)
	require.Len(t, ex.Faults, 1)
	assert.True(t, ex.HasFault("jitter"))
	assert.False(t, ex.HasFault("jit"))
	d, err := time.ParseDuration(strings.TrimPrefix(ex.Faults[0], "jitter="))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, ex.TimeToHeaders, d, "the delay drawn is the delay held")
}

func TestProbability(t *testing.T) {
	const n = 40
	share := func(fs [][]string) int {
		k := 0
		for _, f := range fs {
			if len(f) > 0 {
				k++
			}
		}
		return k
	}
	half := tapproxytest.Respond(http.StatusTeapot, "").On(tapproxytest.Probability(0.5))
	a, b := faultsOf(t, 3, n, half), faultsOf(t, 3, n, half)
	assert.Equal(t, a, b, "the same seed selects the same requests")
	assert.NotEqual(t, a, faultsOf(t, 4, n, half))
	assert.Greater(t, share(a), 0)
	assert.Less(t, share(a), n)

	assert.Zero(t, share(faultsOf(t, 3, 10, half.On(tapproxytest.Probability(0)))))
	assert.Equal(t, 10, share(faultsOf(t, 3, 10, tapproxytest.Respond(http.StatusTeapot, "").On(tapproxytest.Probability(1)))))
}

func TestProbabilityThenCounting(t *testing.T) {
	// FirstN counts only what Probability let through.
	f := tapproxytest.Respond(http.StatusTeapot, "").On(tapproxytest.Probability(0.5), tapproxytest.FirstN(2))
	got := faultsOf(t, 5, 30, f)
	k := 0
	for _, fs := range got {
		k += len(fs)
	}
	assert.Equal(t, 2, k)
}

func TestRandomSeedLogged(t *testing.T) {
	tb := &fakeTB{}
	tapproxytest.NewServer(tb, text("ok"), tapproxytest.WithFaults(tapproxytest.Garbage()))
	tb.finish()
	logs := strings.Join(tb.allLogs(), "\n")
	assert.Contains(t, logs, "random faults use seed")

	tb = &fakeTB{}
	tapproxytest.NewServer(tb, text("ok"), tapproxytest.WithSeed(1), tapproxytest.WithFaults(tapproxytest.Garbage()))
	tb.finish()
	assert.NotContains(t, strings.Join(tb.allLogs(), "\n"), "random faults use seed")
}
