package tapproxytest

import (
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// WithSeed makes every random choice of the server's faults reproducible:
// the requests [Probability] selects, the delays [DelayUniform] and
// [DelayLogNormal] sample, and the bytes [Garbage] sends. The same seed
// gives the same choices for the same sequence of requests; requests that
// race each other draw in the order they reach the proxy. By default the
// seed is random, and the server logs it when any fault is random, so that
// a failing run can be repeated with WithSeed. Zero is a seed like any
// other. The last call wins.
func WithSeed(seed int64) Option {
	return optionFunc(func(c *config) { c.seed, c.seeded = seed, true })
}

// sampler draws the random choices of one armed fault. Each fault has its
// own, derived from the server's seed and the fault's position, so that
// what one fault draws never shifts what another does. It is safe for
// concurrent use.
type sampler struct {
	mu sync.Mutex
	r  *rand.Rand
}

func newSampler(seed int64, stream uint64) *sampler {
	return &sampler{r: rand.New(rand.NewPCG(uint64(seed), stream))}
}

// chance reports true with probability p.
func (s *sampler) chance(p float64) bool {
	switch {
	case p <= 0:
		return false
	case p >= 1:
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Float64() < p
}

// uniform returns a duration drawn uniformly from [lo, hi].
func (s *sampler) uniform(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return lo + time.Duration(s.r.Int64N(int64(hi-lo)+1))
}

// maxResamples bounds how often logNormal draws again above its cap; with
// max at least the median, each draw is below it at least half the time, so
// reaching the bound is a 2^-64 event, and then the cap itself is used.
const maxResamples = 64

// logNormal returns median·e^(sigma·Z) for a standard normal Z, drawn again
// while it exceeds max, so that its median is median when max is far above
// it, and it never exceeds max.
func (s *sampler) logNormal(median time.Duration, sigma float64, max time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range maxResamples {
		d := float64(median) * math.Exp(sigma*s.r.NormFloat64())
		if d <= float64(max) {
			return time.Duration(d)
		}
	}
	return max
}

// garbage returns n random bytes that cannot start an HTTP response: none
// is a space, CR or LF, so they read as one line with no status in it.
func (s *sampler) garbage(n int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := make([]byte, n)
	for i := range b {
		for {
			c := byte(s.r.Uint32())
			if c != ' ' && c != '\r' && c != '\n' && c != 'H' {
				b[i] = c
				break
			}
		}
	}
	return b
}
