package tapproxy

import (
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
)

// A Balancer picks the upstream of each request among the candidates the
// pool offers (see [NewBalanced]).
//
// Pick is called once per attempt, concurrently, on the request's
// goroutine, before the directors run. candidates is never empty, is in
// target order, and holds the healthy upstreams that this request has not
// tried yet (all of them when none is healthy: the pool fails open). Pick
// must return one of candidates; anything else, nil included, is taken as
// candidates[0]. Pick must not retain or modify candidates, and should not
// allocate: it runs on every request.
type Balancer interface {
	Pick(r *http.Request, candidates []*Upstream) *Upstream
}

// The BalancerFunc type is an adapter to allow the use of ordinary
// functions as balancers. If f is a function with the appropriate
// signature, BalancerFunc(f) is a [Balancer] that calls f.
type BalancerFunc func(r *http.Request, candidates []*Upstream) *Upstream

// Pick calls f(r, candidates).
func (f BalancerFunc) Pick(r *http.Request, candidates []*Upstream) *Upstream {
	return f(r, candidates)
}

var _ Balancer = BalancerFunc(nil)

// WithBalancer sets how a pool picks the upstream of each request. The
// default is [LeastRequests]. A nil Balancer keeps the default. The last
// call wins. A proxy from [New] has one upstream and never calls it, until
// [Proxy.SetUpstreams] gives it more.
func WithBalancer(b Balancer) Option {
	return optionFunc(func(c *config) {
		if b != nil {
			c.balancer = b
		}
	})
}

// builtin marks the balancers of this package, which always pick one of
// the candidates.
type builtin interface{ builtin() }

func (*roundRobin) builtin()         {}
func (random) builtin()              {}
func (first) builtin()               {}
func (leastRequests) builtin()       {}
func (*weightedRoundRobin) builtin() {}
func (*hashBy) builtin()             {}

// RoundRobin returns a Balancer that takes the candidates in turn.
func RoundRobin() Balancer { return new(roundRobin) }

type roundRobin struct{ next atomic.Uint64 }

func (b *roundRobin) Pick(_ *http.Request, c []*Upstream) *Upstream {
	return c[(b.next.Add(1)-1)%uint64(len(c))]
}

// Random returns a Balancer that picks a candidate uniformly at random.
func Random() Balancer { return random{} }

type random struct{}

func (random) Pick(_ *http.Request, c []*Upstream) *Upstream { return c[rand.IntN(len(c))] }

// First returns a Balancer that picks the first candidate in target order:
// the first healthy upstream takes all the traffic, and the next takes over
// when it fails (failover).
func First() Balancer { return first{} }

type first struct{}

func (first) Pick(_ *http.Request, c []*Upstream) *Upstream { return c[0] }

// LeastRequests returns a Balancer that picks two distinct candidates at
// random and takes the one with fewer requests in flight relative to its
// weight (the power of two random choices), and to its slow start (see
// [WithSlowStart]). An upstream's request counts as
// in flight from the pick until its response body has ended. It is the
// default, since it steers away from a slow upstream without the herd
// behaviour of always taking the least loaded one.
func LeastRequests() Balancer { return leastRequests{} }

type leastRequests struct{}

func (leastRequests) Pick(_ *http.Request, c []*Upstream) *Upstream { return leastOfTwo(c) }

func leastOfTwo(c []*Upstream) *Upstream {
	if len(c) == 1 {
		return c[0]
	}
	i := rand.IntN(len(c))
	j := rand.IntN(len(c) - 1)
	if j >= i {
		j++
	}
	a, b := c[i], c[j]
	// a.load/a.weight <= b.load/b.weight, without division.
	if a.inFlight.Load()*int64(b.weight) > b.inFlight.Load()*int64(a.weight) {
		a, b = b, a
	}
	// An upstream warming up wins only its share of the picks it would
	// have won, whatever the load: at low load its in-flight count alone
	// would give it its full share, or none.
	if s, full := a.share(), int64(a.weight)*1000; s < full && rand.Int64N(full) >= s {
		return b
	}
	return a
}

// WeightedRoundRobin returns a Balancer that shares requests in proportion
// to weights, given in target order: [NewBalanced] fails unless there is one
// weight of at least 1 per target. It interleaves smoothly, as nginx does: a
// pool weighted 5:1:1 goes a, a, b, a, c, a, a rather than five a in a row.
// [Proxy.SetUpstreams] keeps the weight of a target it keeps and gives a new
// one weight 1. An upstream in its slow start (see [WithSlowStart]) counts
// with the part of its weight it has reached.
func WeightedRoundRobin(weights ...int) Balancer {
	return &weightedRoundRobin{weights: slices.Clone(weights)}
}

type weightedRoundRobin struct {
	weights []int // as given, for NewBalanced
	mu      sync.Mutex
}

func (b *weightedRoundRobin) initialWeights() []int { return b.weights }

// Pick is nginx's smooth weighted round robin: every candidate gains its
// weight, the richest is picked and pays the total.
func (b *weightedRoundRobin) Pick(_ *http.Request, c []*Upstream) *Upstream {
	b.mu.Lock()
	defer b.mu.Unlock()
	var best *Upstream
	total := int64(0)
	for _, u := range c {
		w := u.share()
		u.wrrCurrent += w
		total += w
		if best == nil || u.wrrCurrent > best.wrrCurrent {
			best = u
		}
	}
	best.wrrCurrent -= total
	return best
}

// weighted is implemented by balancers that set the upstreams' weights.
type weighted interface{ initialWeights() []int }

// HashBy returns a Balancer that keeps requests with the same key on the
// same upstream, with rendezvous (highest random weight) hashing: when an
// upstream leaves a pool of n, only the keys it held, about 1/n of them,
// move, and they spread over the others. The hash depends on the key and
// the upstream's host only, so every proxy in front of the same pool agrees.
// A request whose key is empty is balanced by [LeastRequests]. key must be
// safe for concurrent use, and should not allocate; for example:
//
//	tapproxy.HashBy(func(r *http.Request) string { return r.Header.Get("X-User") })
func HashBy(key func(*http.Request) string) Balancer { return &hashBy{key: key} }

// hashSlots is how many slots keys hash into. Rendezvous hashing runs per
// slot rather than per key, so that the owner of every slot can be worked
// out once per set of candidates: a pick is then one lookup, however many
// upstreams there are. With 16384 slots, each of 100 upstreams owns about
// 164 of them, within a few percent of its share.
const hashSlots = 1 << 14

type hashBy struct {
	key   func(*http.Request) string
	table atomic.Pointer[hashTable] // the owners for the latest candidates
	miss  atomic.Pointer[*Upstream] // the candidates that missed the table last
	mu    sync.Mutex                // one build at a time
}

// hashTable maps each slot to the candidate that owns it.
type hashTable struct {
	c     []*Upstream
	owner [hashSlots]uint16
}

func (b *hashBy) Pick(r *http.Request, c []*Upstream) *Upstream {
	k := ""
	if b.key != nil {
		k = b.key(r)
	}
	if k == "" {
		return leastOfTwo(c)
	}
	slot := mix64(fnv64(k)) & (hashSlots - 1)
	if t := b.table.Load(); t != nil && len(t.c) == len(c) && &t.c[0] == &c[0] {
		return c[t.owner[slot]] // the same candidates, which never change
	}
	// A set of candidates that misses twice is the pool's current one,
	// not a retry's: worth a table.
	if b.miss.Swap(&c[0]) == &c[0] && len(c) <= 1<<16 && b.mu.TryLock() {
		t := &hashTable{c: c}
		for s := range t.owner {
			t.owner[s] = uint16(rendezvous(uint64(s), c))
		}
		b.table.Store(t)
		b.mu.Unlock()
		return c[t.owner[slot]]
	}
	return c[rendezvous(slot, c)]
}

// rendezvous returns the index of the candidate with the highest score for
// slot.
func rendezvous(slot uint64, c []*Upstream) int {
	hs := mix64(slot + 0x9e3779b97f4a7c15)
	best, bestScore := 0, uint64(0)
	for i, u := range c {
		if s := mix64(hs ^ u.hash); s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// fnv64 is FNV-1a: stable across processes, unlike hash/maphash, so that
// separate proxies hash a key alike.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is the splitmix64 finalizer: it spreads a key's and an upstream's
// hash into an independent score.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
