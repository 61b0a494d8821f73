package tapproxytest

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const samples = 10000

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func TestSamplerUniform(t *testing.T) {
	tests := []struct {
		name   string
		lo, hi time.Duration
	}{
		{"wide", 10 * time.Millisecond, 50 * time.Millisecond},
		{"from zero", 0, time.Second},
		{"narrow", time.Second, time.Second + time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSampler(1, 0)
			ds := make([]time.Duration, samples)
			for i := range ds {
				ds[i] = s.uniform(tt.lo, tt.hi)
				require.GreaterOrEqual(t, ds[i], tt.lo)
				require.LessOrEqual(t, ds[i], tt.hi)
			}
			mid := (tt.lo + tt.hi) / 2
			assert.InEpsilon(t, float64(mid), float64(median(ds)), 0.05)
		})
	}
	assert.Equal(t, time.Second, newSampler(1, 0).uniform(time.Second, time.Second))
}

func TestSamplerLogNormal(t *testing.T) {
	tests := []struct {
		name       string
		median     time.Duration
		sigma      float64
		max        time.Duration
		wantMedian bool // max is far enough above the median to keep it
	}{
		{"typical", 100 * time.Millisecond, 0.5, 10 * time.Second, true},
		{"long tail", 20 * time.Millisecond, 1.5, time.Hour, true},
		{"tight cap", 100 * time.Millisecond, 1, 150 * time.Millisecond, false},
		{"cap at the median", 100 * time.Millisecond, 2, 100 * time.Millisecond, false},
		{"no spread", 100 * time.Millisecond, 0, time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSampler(42, 3)
			ds := make([]time.Duration, samples)
			for i := range ds {
				ds[i] = s.logNormal(tt.median, tt.sigma, tt.max)
				require.LessOrEqual(t, ds[i], tt.max, "sample %d", i)
				require.GreaterOrEqual(t, ds[i], time.Duration(0))
			}
			if tt.wantMedian {
				assert.InEpsilon(t, float64(tt.median), float64(median(ds)), 0.05)
			}
		})
	}
}

func TestSamplerReproducible(t *testing.T) {
	draw := func(seed int64, stream uint64) []time.Duration {
		s := newSampler(seed, stream)
		var ds []time.Duration
		for range 20 {
			ds = append(ds, s.uniform(0, time.Second), s.logNormal(time.Millisecond, 1, time.Second))
		}
		return ds
	}
	assert.Equal(t, draw(5, 1), draw(5, 1))
	assert.NotEqual(t, draw(5, 1), draw(6, 1), "another seed")
	assert.NotEqual(t, draw(5, 1), draw(5, 2), "another fault")
}

func TestSamplerChance(t *testing.T) {
	s := newSampler(9, 0)
	hits := 0
	for range samples {
		if s.chance(0.25) {
			hits++
		}
	}
	assert.InEpsilon(t, samples/4, hits, 0.05)
	assert.False(t, s.chance(0))
	assert.True(t, s.chance(1))
}

func TestSamplerGarbage(t *testing.T) {
	b := newSampler(3, 0).garbage(samples)
	assert.Len(t, b, samples)
	for i, c := range b {
		require.NotContains(t, []byte(" \r\nH"), c, "byte %d", i)
	}
	assert.Equal(t, b, newSampler(3, 0).garbage(samples))
}
