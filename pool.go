package tapproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// An Upstream is one member of a proxy's pool, as a [Balancer] sees it. It
// is safe for concurrent use.
type Upstream struct {
	url    *url.URL
	key    string // identity: scheme, host, port, base path
	hash   uint64 // of the host, for HashBy
	weight int    // fixed for the upstream's life, kept across SetUpstreams

	inFlight   atomic.Int64
	wrrCurrent int64 // the smooth weighted round robin's state, under its lock

	// warmFrom is when the upstream's slow start began, in Unix
	// nanoseconds, or 0 when it takes its full share (see WithSlowStart).
	warmFrom  atomic.Int64
	slowStart time.Duration

	health upstreamHealth
	attrs  upstreamAttrs
}

// URL returns the upstream's target URL. It must not be modified.
func (u *Upstream) URL() *url.URL { return u.url }

// InFlight returns the number of requests picked for the upstream whose
// response body has not ended yet.
func (u *Upstream) InFlight() int { return int(u.inFlight.Load()) }

// Weight returns the upstream's weight: the one [WeightedRoundRobin] gave
// it, or 1.
func (u *Upstream) Weight() int { return u.weight }

// minWarmShare is the share of its weight, in thousandths, that an
// upstream starts its slow start with.
const minWarmShare = 100

// share returns the upstream's weight in thousandths, less while it warms
// up: from a tenth of its weight to all of it, linearly over the slow start.
// It reads the clock only while the upstream warms up.
func (u *Upstream) share() int64 {
	full := int64(u.weight) * 1000
	from := u.warmFrom.Load()
	if from == 0 {
		return full
	}
	elapsed := time.Now().UnixNano() - from
	switch {
	case elapsed >= int64(u.slowStart):
		u.warmFrom.CompareAndSwap(from, 0) // warm: no more clock reads
		return full
	case elapsed <= 0:
		return full * minWarmShare / 1000 // still ejected: failing open
	}
	return full * (minWarmShare + (1000-minWarmShare)*elapsed/int64(u.slowStart)) / 1000
}

// warm starts the upstream's slow start at t, if there is one.
func (u *Upstream) warm(t time.Time) {
	if u.slowStart > 0 {
		u.warmFrom.Store(t.UnixNano())
	}
}

// UpstreamStatus is a snapshot of one upstream of a pool, from
// [Proxy.Upstreams].
type UpstreamStatus struct {
	URL      *url.URL
	Healthy  bool // neither ejected by passive health nor down by active checks
	InFlight int  // requests picked for it whose response body has not ended

	// EjectedUntil is when a passive ejection ends; zero when the upstream
	// is not ejected.
	EjectedUntil time.Time
	// Down reports that active health checks mark the upstream down.
	Down bool
	// Failures counts the consecutive failed attempts that passive health
	// has seen.
	Failures int
	// LastError is the most recent failure of an attempt or of a health
	// check, nil if there was none.
	LastError error
	// Weight is the upstream's weight (see [Upstream.Weight]).
	Weight int
}

// upstreamSet is one immutable membership of a pool, with the health of its
// upstreams as of when it was built. Requests read it through one atomic
// pointer and finish against the set they started with.
type upstreamSet struct {
	all     []*Upstream // in target order
	healthy []*Upstream // all, less the ejected and the down
	// readmitAt is the earliest end of a passive ejection in this set, in
	// Unix nanoseconds, or 0: the first pick after it rebuilds the set.
	readmitAt int64
}

// pool holds a proxy's upstreams: the set, how to pick among them, and
// their health.
type pool struct {
	set       atomic.Pointer[upstreamSet]
	mu        sync.Mutex // serializes changes of membership and health
	balancer  Balancer
	passive   *passiveHealth // nil: off
	checker   *healthChecker // nil: no active checks
	metrics   *meters
	slowStart time.Duration // 0: none (see WithSlowStart)
}

// newPool validates c's pool options (passive health, active checks, slow
// start) and returns a pool without upstreams; fill gives it its first.
// balanced says the pool is NewBalanced's, which has passive health on by
// default.
func newPool(c *config, balanced bool) (*pool, error) {
	pl := &pool{balancer: c.balancer, slowStart: c.slowStart}
	var errs []error
	if balanced || c.passiveHealth != nil {
		passive, err := newPassiveHealth(c.passiveHealth)
		errs = append(errs, err)
		pl.passive = passive
	}
	if c.healthCheck != nil {
		hc, ref, err := c.healthCheck.withDefaults()
		errs = append(errs, err)
		pl.checker = &healthChecker{hc: hc, ref: ref, rt: c.transport, pool: pl, stops: make(map[*Upstream]context.CancelFunc)}
	}
	if c.slowStart < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: slow start %v is negative", c.slowStart))
	}
	return pl, errors.Join(errs...)
}

// fill gives the pool its first upstreams, one per target, recorded
// through m. weights is nil for a single target's pool (each weighs 1),
// and otherwise holds one weight per target. Active checks start with
// startChecks.
func (p *pool) fill(targets []*url.URL, weights []int, m *meters) {
	p.metrics = m
	ups := make([]*Upstream, len(targets))
	for i, t := range targets {
		w := 1
		if weights != nil && weights[i] > 0 {
			w = weights[i]
		}
		ups[i] = p.newUpstream(t, w)
	}
	p.store(ups, time.Now())
}

// startChecks starts the active health checks of the upstreams, if any.
func (p *pool) startChecks() {
	if p.checker != nil {
		p.checker.sync(p.set.Load().all)
	}
}

// newUpstream makes an upstream for target, which has been validated.
func (p *pool) newUpstream(target *url.URL, weight int) *Upstream {
	t := *target // the caller may reuse theirs
	u := &Upstream{url: &t, key: upstreamKey(&t), hash: fnv64(strings.ToLower(t.Host)), weight: weight, slowStart: p.slowStart}
	u.attrs = p.metrics.upstreamAttrs(&t)
	return u
}

// upstreamKey identifies a target: two targets with the same key are the
// same upstream. Paths compare as escaped, with a trailing slash ignored.
func upstreamKey(u *url.URL) string {
	return u.Scheme + "://" + hostPort(u) + strings.TrimSuffix(u.EscapedPath(), "/")
}

// hostPort returns u's host in lower case with its port, the scheme's
// default if it has none.
func hostPort(u *url.URL) string {
	return net.JoinHostPort(strings.ToLower(u.Hostname()), strconv.Itoa(portOf(u)))
}

// checkTarget reports what is wrong with target as the target of a proxy.
func checkTarget(target *url.URL) error {
	switch {
	case target == nil:
		return errors.New("tapproxy: target URL is nil")
	case target.Scheme != "http" && target.Scheme != "https":
		return fmt.Errorf("tapproxy: target %q: scheme must be http or https", target.Redacted())
	case target.Host == "":
		return fmt.Errorf("tapproxy: target %q has no host", target.Redacted())
	}
	return nil
}

// checkTargets reports everything that is wrong with targets as the members
// of a pool: each must be a valid target without query or userinfo, none
// twice, all with one scheme and one base path.
func checkTargets(targets []*url.URL) error {
	var errs []error
	seen := make(map[string]bool, len(targets))
	var first *url.URL
	for i, t := range targets {
		if t == nil {
			errs = append(errs, fmt.Errorf("tapproxy: target %d is nil", i))
			continue
		}
		if err := checkTarget(t); err != nil {
			errs = append(errs, err)
			continue
		}
		if t.User != nil {
			errs = append(errs, fmt.Errorf("tapproxy: target %q has userinfo; set credentials with a director", t.Redacted()))
		}
		if t.RawQuery != "" || t.ForceQuery {
			errs = append(errs, fmt.Errorf("tapproxy: target %q has a query; a pool's targets cannot", t.Redacted()))
		}
		k := upstreamKey(t)
		if seen[k] {
			errs = append(errs, fmt.Errorf("tapproxy: target %q is listed twice", t.Redacted()))
			continue
		}
		seen[k] = true
		switch {
		case first == nil:
			first = t
		case t.Scheme != first.Scheme:
			errs = append(errs, fmt.Errorf("tapproxy: targets %q and %q differ in scheme; a pool's targets share one", first.Redacted(), t.Redacted()))
		case basePath(t) != basePath(first):
			errs = append(errs, fmt.Errorf("tapproxy: targets %q and %q differ in base path; a pool's targets share one", first.Redacted(), t.Redacted()))
		}
	}
	return errors.Join(errs...)
}

func basePath(u *url.URL) string { return strings.TrimSuffix(u.EscapedPath(), "/") }

// SetUpstreams replaces the proxy's upstreams with targets, atomically:
// each request is proxied by the set it started with, so requests in flight
// to a removed upstream finish there, retries included. Upstreams that stay
// keep their health, their in-flight counts and their weight; new ones start
// healthy, with weight 1, and are health-checked if [WithHealthCheck] is
// on. Removed upstreams stop reporting their metrics.
//
// The targets follow [NewBalanced]'s rules, but may move to another scheme
// or base path than the set before. No targets empties the pool, for
// maintenance: until the next SetUpstreams every request is answered 503
// with [ErrNoUpstream]. On an error the set is left as it was.
func (p *Proxy) SetUpstreams(targets []*url.URL) error {
	if err := checkTargets(targets); err != nil {
		return err
	}
	pl := p.pool
	pl.mu.Lock()
	defer pl.mu.Unlock()
	old := pl.set.Load()
	kept := make(map[string]*Upstream, len(old.all))
	for _, u := range old.all {
		kept[u.key] = u
	}
	all := make([]*Upstream, 0, len(targets))
	now := time.Now()
	for _, t := range targets {
		u, ok := kept[upstreamKey(t)]
		if !ok {
			u = pl.newUpstream(t, 1)
			if len(old.all) > 0 {
				u.warm(now) // joins a pool that serves already
			}
		}
		delete(kept, u.key)
		all = append(all, u)
	}
	pl.store(all, now)
	if pl.checker != nil {
		pl.checker.sync(all)
	}
	return nil
}

// Upstreams returns the state of each upstream of the proxy, in target
// order.
func (p *Proxy) Upstreams() []UpstreamStatus {
	pl := p.pool
	pl.mu.Lock()
	defer pl.mu.Unlock()
	now := time.Now()
	set := pl.set.Load()
	out := make([]UpstreamStatus, len(set.all))
	for i, u := range set.all {
		t := *u.url
		h := &u.health
		out[i] = UpstreamStatus{
			URL:       &t,
			Healthy:   h.healthy(now),
			InFlight:  u.InFlight(),
			Down:      h.down,
			Failures:  int(h.fails.Load()),
			LastError: h.lastErr,
			Weight:    u.weight,
		}
		if h.ejected(now) {
			out[i].EjectedUntil = h.ejectedUntil
		}
	}
	return out
}

// store builds and publishes the set of all as of now. The caller holds
// p.mu.
func (p *pool) store(all []*Upstream, now time.Time) {
	s := &upstreamSet{all: all, healthy: all}
	for _, u := range all {
		if at := u.health.ejectedUntil; at.After(now) && (s.readmitAt == 0 || at.UnixNano() < s.readmitAt) {
			s.readmitAt = at.UnixNano()
		}
	}
	unhealthy := func(u *Upstream) bool { return !u.health.healthy(now) }
	if slices.ContainsFunc(all, unhealthy) {
		s.healthy = slices.DeleteFunc(slices.Clone(all), unhealthy)
	}
	p.set.Store(s)
}

// refresh rebuilds the current set with the health as of now.
func (p *pool) refresh(now time.Time) *upstreamSet {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.store(p.set.Load().all, now)
	return p.set.Load()
}

// current returns the set a new request starts with, first re-admitting the
// upstreams whose ejection has ended.
func (p *pool) current() *upstreamSet {
	s := p.set.Load()
	if s.readmitAt != 0 && time.Now().UnixNano() >= s.readmitAt {
		return p.refresh(time.Now())
	}
	return s
}

// routeState is what a request tracks of its upstreams: the set it started
// with, the attempts it made, and what it holds of the pool.
type routeState struct {
	set      *upstreamSet
	up       *Upstream // of the current attempt; nil before the first pick
	attempts int
	tried    []*Upstream
	triedBuf [4]*Upstream // tried's storage for the usual few attempts
	leftBuf  [8]*Upstream // the candidates of a retry, for pools of up to 8
	retrying bool         // holds a slot of the retry budget
	hostSet  bool         // a director set Out.Host: it stays on retries
	informed bool         // a 1xx response went to the client: no retry
	// cancelTry ends the current attempt's per-try context; nil without
	// Retry.PerTry.
	cancelTry context.CancelCauseFunc
}

// pick picks the upstream of the request's next attempt, counts it in
// flight, and reports it; nil when the pool has no upstream left to try.
// The first pick of a request counts a fail-open when no upstream is
// healthy.
func (p *pool) pick(rs *routeState, r *http.Request) *Upstream {
	s := rs.set
	var u *Upstream
	switch {
	case len(s.all) == 0:
		return nil
	case rs.attempts == 0:
		c := s.healthy
		if len(c) == 0 {
			p.metrics.failedOpen(r.Context())
			c = s.all
		}
		u = p.choose(r, c)
	case len(s.all) == 1:
		u = s.all[0] // a single upstream takes its own retries
	default:
		// The healthy upstreams not tried yet, or else any not tried yet:
		// the request stops only once it has tried them all.
		left := untried(rs.leftBuf[:0], s.healthy, rs.tried)
		if len(left) == 0 {
			left = untried(rs.leftBuf[:0], s.all, rs.tried)
		}
		if len(left) == 0 {
			return nil
		}
		u = p.choose(r, left)
	}
	if rs.tried == nil {
		rs.tried = rs.triedBuf[:0]
	}
	rs.tried = append(rs.tried, u)
	rs.up = u
	rs.attempts++
	u.inFlight.Add(1)
	p.metrics.clientActive(r.Context(), u, 1)
	return u
}

// untried appends to dst the upstreams of c that are not in tried.
func untried(dst, c, tried []*Upstream) []*Upstream {
	for _, u := range c {
		if !slices.Contains(tried, u) {
			dst = append(dst, u)
		}
	}
	return dst
}

func (p *pool) choose(r *http.Request, c []*Upstream) *Upstream {
	if len(c) == 1 {
		return c[0]
	}
	u := p.balancer.Pick(r, c)
	if _, ours := p.balancer.(builtin); ours {
		return u // always one of c; checking would cost O(len(c))
	}
	if u == nil || !slices.Contains(c, u) {
		return c[0]
	}
	return u
}

// done ends an attempt's hold on its upstream u.
func (p *pool) done(u *Upstream, r *http.Request) {
	u.inFlight.Add(-1)
	p.metrics.clientActive(r.Context(), u, -1)
}

// close stops the active checks, if any.
func (p *pool) close() {
	if p.checker != nil {
		p.checker.close()
	}
}
