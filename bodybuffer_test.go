package tapproxy

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBodyBuffer(t *testing.T) {
	tests := []struct {
		name   string
		limit  int
		writes []string
		want   string
		total  int64
	}{
		{name: "under the limit", limit: 10, writes: []string{"abc", "de"}, want: "abcde", total: 5},
		{name: "exactly the limit", limit: 5, writes: []string{"abc", "de"}, want: "abcde", total: 5},
		{name: "over the limit in one write", limit: 4, writes: []string{"abcdef"}, want: "abcd", total: 6},
		{name: "over the limit across writes", limit: 4, writes: []string{"ab", "cdef", "gh"}, want: "abcd", total: 8},
		{name: "zero limit counts only", limit: 0, writes: []string{"abc"}, want: "", total: 3},
		{name: "empty writes", limit: 4, writes: []string{"", "a", ""}, want: "a", total: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pool capturePool
			b := bodyBuffer{limit: tt.limit, pool: &pool}
			for _, w := range tt.writes {
				n, err := b.Write([]byte(w))
				require.NoError(t, err, "a capped writer never fails the stream")
				require.Equal(t, len(w), n)
			}
			assert.Equal(t, tt.want, string(b.bytes()))
			assert.Equal(t, tt.total, b.total)
			assert.Equal(t, tt.total > int64(len(tt.want)), b.truncated())
			assert.LessOrEqual(t, cap(b.bytes()), max(tt.limit, 0), "storage never grows past the limit")
			b.release()
			assert.Zero(t, b.len())
		})
	}
}

func TestBodyBufferAllocs(t *testing.T) {
	if RaceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	var pool capturePool
	chunk := bytes.Repeat([]byte{'x'}, 4096)
	fill := func() {
		b := bodyBuffer{limit: 64 << 10, pool: &pool}
		for range 20 { // 80 KiB through a 64 KiB capture
			b.Write(chunk)
		}
		b.release()
	}
	fill() // warm the pool
	// The pool may drop items at GC; a fill then allocates a little, so
	// the average stays well under one allocation per capture.
	allocs := testing.AllocsPerRun(100, fill)
	assert.Less(t, allocs, 1.0)
}

func TestBodyBufferBudget(t *testing.T) {
	chunk := bytes.Repeat([]byte{'x'}, 3000)
	var pool capturePool
	budget := &captureBudget{limit: 11_000}
	a := bodyBuffer{limit: 8000, pool: &pool, budget: budget}
	b := bodyBuffer{limit: 8000, pool: &pool, budget: budget}
	for range 4 {
		a.Write(chunk)
		b.Write(chunk)
		assert.LessOrEqual(t, budget.used.Load(), budget.limit)
		assert.LessOrEqual(t, int64(cap(*a.buf)+cap(*b.buf)), budget.used.Load(), "reservations cover the storage")
	}
	// a reserved first each round and filled its limit; b was cut when
	// its second chunk did not fit, keeping its first.
	assert.Equal(t, 8000, a.len())
	assert.False(t, a.overBudget)
	assert.Equal(t, 3000, b.len())
	assert.True(t, b.overBudget)
	assert.True(t, b.truncated())
	a.release()
	b.release()
	assert.Zero(t, budget.used.Load(), "release gives every byte back")

	// A pooled buffer too large for what is left is not taken whole.
	budget.used.Store(budget.limit - 1000)
	c := bodyBuffer{limit: 8000, pool: &pool, budget: budget}
	c.Write(chunk)
	assert.True(t, c.overBudget)
	assert.LessOrEqual(t, c.len(), 1000)
	c.release()
	assert.EqualValues(t, budget.limit-1000, budget.used.Load())
}
