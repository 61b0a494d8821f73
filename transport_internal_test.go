package tapproxy

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBufferPoolAllocs(t *testing.T) {
	var p bufferPool
	b := p.Get()
	require.Len(t, b, copyBufferSize)
	p.Put(make([]byte, 100)) // not ours: dropped
	p.Put(b[:10])            // ours, shortened by the caller: restored
	if !RaceEnabled {        // sync.Pool drops items at random under -race
		got := p.Get()
		assert.Len(t, got, copyBufferSize)
		assert.Same(t, &b[0], &got[0], "the buffer is reused")
		p.Put(got)
		allocs := testing.AllocsPerRun(100, func() { p.Put(p.Get()) })
		assert.Zero(t, allocs, "a Get and Put cycle allocates nothing, not even a box")
	}
}
