package tapproxy_test

import (
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

// sequence sends n GETs one after another and returns the upstream of each.
func sequence(tb testing.TB, c *http.Client, u string, n int, header ...string) []int {
	tb.Helper()
	out := make([]int, 0, n)
	for range n {
		req, err := http.NewRequest(http.MethodGet, u, nil)
		require.NoError(tb, err)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := c.Do(req)
		require.NoError(tb, err)
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		require.Equal(tb, http.StatusOK, res.StatusCode)
		i, err := strconv.Atoi(res.Header.Get("X-Upstream"))
		require.NoError(tb, err)
		out = append(out, i)
	}
	return out
}

func tally(seq []int, n int) []int {
	out := make([]int, n)
	for _, i := range seq {
		out[i]++
	}
	return out
}

func TestRoundRobinIsExact(t *testing.T) {
	f := newFleet(t, 3, nil)
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.RoundRobin()))
	front := serve(t, p, false)
	seq := sequence(t, front.Client(), front.URL, 300)
	assert.Equal(t, []int{100, 100, 100}, tally(seq, 3))
	for i := 3; i < len(seq); i++ {
		require.Equal(t, seq[i-3], seq[i], "request %d breaks the rotation", i)
	}
	assert.Equal(t, []int64{100, 100, 100}, f.counts())
}

func TestWeightedRoundRobinRatiosAndInterleaving(t *testing.T) {
	tests := []struct {
		weights []int
		maxRun  int // the longest run of one upstream allowed
	}{
		{[]int{5, 1, 1}, 4},
		{[]int{1, 2, 3}, 2},
		{[]int{1, 1}, 1},
		{[]int{10, 1}, 10},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(len(tt.weights))+"x"+strconv.Itoa(tt.weights[0]), func(t *testing.T) {
			f := newFleet(t, len(tt.weights), nil)
			p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.WeightedRoundRobin(tt.weights...)))
			front := serve(t, p, false)
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			seq := sequence(t, front.Client(), front.URL, 10*total)
			var want []int
			for _, w := range tt.weights {
				want = append(want, 10*w)
			}
			assert.Equal(t, want, tally(seq, len(tt.weights)), "exact over whole rounds")
			run, longest := 1, 1
			for i := 1; i < len(seq); i++ {
				if seq[i] == seq[i-1] {
					run++
				} else {
					run = 1
				}
				longest = max(longest, run)
			}
			assert.LessOrEqual(t, longest, tt.maxRun, "sequence %v", seq[:total])
			if tt.weights[0] == 5 {
				assert.Equal(t, []int{0, 0, 1, 0, 2, 0, 0}, seq[:7], "nginx's smooth interleaving")
			}
		})
	}
}

func TestLeastRequestsSteersAwayFromHeldUpstream(t *testing.T) {
	const holds = 3
	held, release := make(chan struct{}, holds), make(chan struct{})
	f := newFleet(t, 3, func(i int, w http.ResponseWriter, r *http.Request) {
		if i == 0 && r.URL.Path == "/hold" {
			// The headers go out at once; the body waits. The request
			// stays in flight until its body has ended.
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			held <- struct{}{}
			<-release
		}
		io.WriteString(w, strconv.Itoa(i))
	})
	// First sends the held request to upstream 0; then LeastRequests takes
	// over.
	b := &switchable{b: tapproxy.First()}
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(b))
	front := serve(t, p, false)
	// Upstream 0 holds more requests than another can seem to: a request
	// that has ended may be counted a moment longer.
	var held0 []*http.Response
	for range holds {
		res, err := front.Client().Get(front.URL + "/hold")
		require.NoError(t, err)
		defer res.Body.Close()
		<-held
		held0 = append(held0, res)
	}
	require.Equal(t, holds, p.Upstreams()[0].InFlight, "headers arrived; the bodies have not ended")

	b.set(tapproxy.LeastRequests())
	seq := sequence(t, front.Client(), front.URL, 100)
	got := tally(seq, 3)
	assert.Zero(t, got[0], "the upstream that holds a request got more")
	assert.Positive(t, got[1])
	assert.Positive(t, got[2])

	close(release)
	for _, res := range held0 {
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		assert.Equal(t, "0", string(body))
	}
	require.Eventually(t, func() bool { return p.Upstreams()[0].InFlight == 0 }, waitTimeout, time.Millisecond)
	seq = sequence(t, front.Client(), front.URL, 100)
	assert.Positive(t, tally(seq, 3)[0], "once idle, it gets its share again")
}

// switchable is a Balancer whose Balancer can change mid-test.
type switchable struct {
	mu sync.Mutex
	b  tapproxy.Balancer
}

func (s *switchable) set(b tapproxy.Balancer) {
	s.mu.Lock()
	s.b = b
	s.mu.Unlock()
}

func (s *switchable) Pick(r *http.Request, c []*tapproxy.Upstream) *tapproxy.Upstream {
	s.mu.Lock()
	b := s.b
	s.mu.Unlock()
	return b.Pick(r, c)
}

func TestRandomSpreads(t *testing.T) {
	f := newFleet(t, 3, nil)
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.Random()))
	front := serve(t, p, false)
	got := tally(sequence(t, front.Client(), front.URL, 300), 3)
	for i, n := range got {
		// 100 expected each; 40 is far beyond chance.
		assert.Greater(t, n, 40, "upstream %d", i)
	}
}

func TestHashByKeepsKeysAndMovesFewOnRemoval(t *testing.T) {
	const n, keys = 5, 400
	f := newFleet(t, n, nil)
	byKey := tapproxy.HashBy(func(r *http.Request) string { return r.Header.Get("X-Key") })
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(byKey))
	front := serve(t, p, false)
	c := front.Client()
	owner := make([]int, keys)
	for k := range keys {
		seq := sequence(t, c, front.URL, 3, "X-Key", "k"+strconv.Itoa(k))
		require.Equal(t, []int{seq[0], seq[0], seq[0]}, seq, "key %d moved", k)
		owner[k] = seq[0]
	}
	spread := tally(owner, n)
	for i, m := range spread {
		assert.Greater(t, m, keys/n/3, "upstream %d owns too few keys: %v", i, spread)
	}

	// Another proxy over the same targets, listed in another order, agrees.
	rev := f.urls(t, 4, 3, 2, 1, 0)
	p2 := newBalanced(t, rev, tapproxy.WithBalancer(tapproxy.HashBy(func(r *http.Request) string { return r.Header.Get("X-Key") })))
	front2 := serve(t, p2, false)
	for k := range 50 {
		assert.Equal(t, owner[k], sequence(t, front2.Client(), front2.URL, 1, "X-Key", "k"+strconv.Itoa(k))[0])
	}

	// Removing upstream 2 moves its keys, and only those.
	require.NoError(t, p.SetUpstreams(f.urls(t, 0, 1, 3, 4)))
	moved := 0
	for k := range keys {
		now := sequence(t, c, front.URL, 1, "X-Key", "k"+strconv.Itoa(k))[0]
		if owner[k] == 2 {
			assert.NotEqual(t, 2, now)
			moved++
			continue
		}
		assert.Equal(t, owner[k], now, "key %d moved though its upstream stayed", k)
	}
	// About 1/n of the keys: 80 expected, within wide bounds.
	assert.Greater(t, moved, keys/n/3)
	assert.Less(t, moved, keys/n*2)

	// An empty key is balanced by LeastRequests: it reaches everyone.
	spread = tally(sequence(t, c, front.URL, 200), n)
	assert.Zero(t, spread[2])
	for _, i := range []int{0, 1, 3, 4} {
		assert.Positive(t, spread[i], "upstream %d", i)
	}
}

func TestFirstFailsOver(t *testing.T) {
	f := newFleet(t, 3, nil)
	p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.First()))
	front := serve(t, p, false)
	assert.Equal(t, []int{50, 0, 0}, tally(sequence(t, front.Client(), front.URL, 50), 3))

	f.srvs[0].Close() // refused from now on
	assert.Equal(t, []int{0, 50, 0}, tally(sequence(t, front.Client(), front.URL, 50), 3),
		"the next upstream takes over, and clients see no failure")
	assert.False(t, p.Upstreams()[0].Healthy)
}

func TestCustomBalancer(t *testing.T) {
	f := newFleet(t, 3, nil)
	var (
		mu   sync.Mutex
		seen [][]string
	)
	record := func(c []*tapproxy.Upstream) {
		var hosts []string
		for _, u := range c {
			hosts = append(hosts, u.URL().Host)
		}
		mu.Lock()
		seen = append(seen, hosts)
		mu.Unlock()
	}
	hosts := func(idx ...int) []string {
		var out []string
		for _, u := range f.urls(t, idx...) {
			out = append(out, u.Host)
		}
		return out
	}
	foreign := new(tapproxy.Upstream)
	tests := []struct {
		name string
		pick func(c []*tapproxy.Upstream) *tapproxy.Upstream
		want int
	}{
		{"last", func(c []*tapproxy.Upstream) *tapproxy.Upstream { return c[len(c)-1] }, 2},
		{"nil", func([]*tapproxy.Upstream) *tapproxy.Upstream { return nil }, 0},
		{"foreign", func([]*tapproxy.Upstream) *tapproxy.Upstream { return foreign }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen = nil
			p := newBalanced(t, f.urls(t), tapproxy.WithBalancer(tapproxy.BalancerFunc(
				func(r *http.Request, c []*tapproxy.Upstream) *tapproxy.Upstream {
					record(c)
					return tt.pick(c)
				})))
			front := serve(t, p, false)
			assert.Equal(t, []int{tt.want, tt.want, tt.want}, sequence(t, front.Client(), front.URL, 3))
			mu.Lock()
			defer mu.Unlock()
			assert.Equal(t, [][]string{hosts(), hosts(), hosts()}, seen, "candidates in target order")
		})
	}

	// Candidates are the healthy upstreams not tried yet: upstream 0 is
	// dead, so the retry offers the others, and once it is ejected the
	// first pick does not offer it.
	seen = nil
	dead := deadURL(t)
	targets := append([]*url.URL{dead}, f.urls(t, 1, 2)...)
	p := newBalanced(t, targets,
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 1, Ejection: time.Hour}),
		tapproxy.WithBalancer(tapproxy.BalancerFunc(func(r *http.Request, c []*tapproxy.Upstream) *tapproxy.Upstream {
			record(c)
			return c[0]
		})))
	front := serve(t, p, false)
	assert.Equal(t, []int{1, 1}, sequence(t, front.Client(), front.URL, 2))
	mu.Lock()
	assert.Equal(t, [][]string{
		{dead.Host, f.urls(t, 1)[0].Host, f.urls(t, 2)[0].Host},
		hosts(1, 2), // the retry
		hosts(1, 2), // the next request, with upstream 0 ejected
	}, seen)
	mu.Unlock()
}

func TestDirectorsSeeThePickedUpstream(t *testing.T) {
	type sent struct{ host, path string }
	got := make(chan sent, 10)
	f := newFleet(t, 2, func(i int, w http.ResponseWriter, r *http.Request) {
		got <- sent{r.Host, r.URL.Path}
		io.WriteString(w, strconv.Itoa(i))
	})
	var targets []*url.URL
	for _, u := range f.urls(t) {
		u.Path = "/base"
		targets = append(targets, u)
	}
	seenOut := make(chan sent, 10)
	peek := func(pr *httputil.ProxyRequest) { seenOut <- sent{pr.Out.Host, pr.Out.URL.Host + pr.Out.URL.Path} }
	tests := []struct {
		name      string
		directors []tapproxy.Director
		wantHost  func(front string, up int) string
	}{
		{"upstream host", nil, func(_ string, up int) string { return targets[up].Host }},
		{"PreserveHost", []tapproxy.Director{tapproxy.PreserveHost()}, func(front string, _ int) string { return hostOf(front) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newBalanced(t, targets, tapproxy.WithBalancer(tapproxy.RoundRobin()),
				tapproxy.WithDirector(append(tt.directors, peek)...))
			front := serve(t, p, false)
			for range 2 {
				up := sequence(t, front.Client(), front.URL+"/x", 1)[0]
				s := <-got
				assert.Equal(t, sent{tt.wantHost(front.URL, up), "/base/x"}, s)
				out := <-seenOut
				assert.Equal(t, targets[up].Host+"/base/x", out.path, "the director sees Out routed to the pick")
			}
		})
	}
}
