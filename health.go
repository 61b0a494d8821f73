package tapproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// HealthCheck configures active health checks: each upstream is asked for
// Path every Interval, and Fails failed checks in a row mark it down until
// Passes checks in a row succeed. A zero field takes its default.
type HealthCheck struct {
	// Path is requested with GET on each upstream's host, as an absolute
	// path: it is not joined to the targets' base path. It may carry a
	// query. Required.
	Path string

	// Interval is the time between two checks of an upstream, with ±10%
	// jitter so that a fleet of proxies does not check in step. The
	// default is 10s. The first check runs at once.
	Interval time.Duration

	// UnhealthyInterval is the time between checks of an upstream that is
	// down, so that it can come back sooner. The default is Interval.
	UnhealthyInterval time.Duration

	// Timeout bounds one check, from sending it until its body was read.
	// The default is 2s, or half of Interval when that is shorter. It must
	// be below Interval.
	Timeout time.Duration

	// Fails is how many failed checks in a row mark an upstream down,
	// and Passes how many passed checks in a row bring it back. The
	// defaults are 3 and 2.
	Fails, Passes int

	// Statuses are the response statuses that pass. The default is every
	// status from 200 to 399. Any other status, a transport error or a
	// timeout fails.
	Statuses []int

	// Host is the Host header of the checks. The default is the
	// upstream's host.
	Host string

	// Header holds extra headers to send with each check, such as a
	// token. It is not modified.
	Header http.Header
}

// WithHealthCheck turns on active health checks of the proxy's upstreams
// (see [HealthCheck]). An upstream that fails them is left out of the picks
// until it passes again, whatever [PassiveHealth.MaxEjectedPercent] says,
// and each such transition counts as one "active" ejection. When no
// upstream is healthy, the proxy tries them all anyway (it fails open).
//
// Checks go through the proxy's transport (see [WithTransport]); they are
// never observed and never recorded as proxied requests. [Proxy.Close] and
// [Proxy.Shutdown] stop them. By default there are none. The last call
// wins. An invalid HealthCheck, such as one without a Path, makes [New] and
// [NewBalanced] fail.
func WithHealthCheck(hc HealthCheck) Option {
	return optionFunc(func(c *config) { c.healthCheck = &hc })
}

// PassiveHealth configures passive health: upstreams whose proxied
// attempts keep failing are ejected for a while. A zero field takes its
// default.
type PassiveHealth struct {
	// Failures is how many failed attempts in a row eject an upstream:
	// dial failures, timeouts, resets, malformed responses, and the
	// Statuses listed below. A successful attempt resets the count; a
	// client that leaves counts neither way. The default is 5; a negative
	// value turns passive health off.
	Failures int

	// Ejection is how long the first ejection lasts; each repeated
	// ejection doubles it, up to MaxEjection. The doubling starts over
	// once the upstream has stayed healthy for MaxEjection since it was
	// re-admitted. The defaults are 30s and 5m.
	Ejection, MaxEjection time.Duration

	// MaxEjectedPercent caps the share of the pool that passive health may
	// eject at once, rounded down, but one upstream may always be
	// ejected. The default is 50. It does not bound active checks.
	MaxEjectedPercent int

	// Statuses are the response statuses that count as failed attempts,
	// such as 502 and 503. The default is none: any response is a
	// success. [Retry.Statuses] that are not listed here count neither
	// way.
	Statuses []int
}

// WithPassiveHealth tunes passive health. [NewBalanced] turns it on with
// the defaults of [PassiveHealth]; [New] only when this option is given.
// Failures < 0 turns it off. The last call wins.
func WithPassiveHealth(ph PassiveHealth) Option {
	return optionFunc(func(c *config) { c.passiveHealth = &ph })
}

// Defaults of HealthCheck and PassiveHealth.
const (
	defaultCheckInterval     = 10 * time.Second
	defaultCheckTimeout      = 2 * time.Second
	defaultCheckFails        = 3
	defaultCheckPasses       = 2
	defaultEjectFailures     = 5
	defaultEjection          = 30 * time.Second
	defaultMaxEjection       = 5 * time.Minute
	defaultMaxEjectedPercent = 50

	// checkBodyLimit bounds what is read of a check's body, so that the
	// connection can be reused without trusting the upstream's size.
	checkBodyLimit = 64 << 10
)

// withDefaults validates hc and fills in its defaults.
func (hc HealthCheck) withDefaults() (HealthCheck, *url.URL, error) {
	var errs []error
	ref, err := url.Parse(hc.Path)
	switch {
	case hc.Path == "":
		errs = append(errs, errors.New("tapproxy: health check: Path is required"))
	case err != nil || ref.Scheme != "" || ref.Host != "" || ref.Path == "" || ref.Path[0] != '/':
		errs = append(errs, fmt.Errorf("tapproxy: health check: Path %q must be an absolute path such as /healthz", hc.Path))
	}
	if hc.Interval < 0 || hc.UnhealthyInterval < 0 || hc.Timeout < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: health check: negative duration (Interval %v, UnhealthyInterval %v, Timeout %v)", hc.Interval, hc.UnhealthyInterval, hc.Timeout))
	}
	if hc.Fails < 0 || hc.Passes < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: health check: negative count (Fails %d, Passes %d)", hc.Fails, hc.Passes))
	}
	if hc.Interval == 0 {
		hc.Interval = defaultCheckInterval
	}
	if hc.UnhealthyInterval == 0 {
		hc.UnhealthyInterval = hc.Interval
	}
	switch {
	case hc.Timeout == 0:
		hc.Timeout = min(defaultCheckTimeout, hc.Interval/2)
	case hc.Timeout >= hc.Interval:
		errs = append(errs, fmt.Errorf("tapproxy: health check: Timeout %v must be below Interval %v", hc.Timeout, hc.Interval))
	}
	if hc.Fails == 0 {
		hc.Fails = defaultCheckFails
	}
	if hc.Passes == 0 {
		hc.Passes = defaultCheckPasses
	}
	hc.Statuses = slices.Clone(hc.Statuses)
	hc.Header = hc.Header.Clone()
	return hc, ref, errors.Join(errs...)
}

func (hc *HealthCheck) passes(status int) bool {
	if len(hc.Statuses) == 0 {
		return status >= 200 && status < 400
	}
	return slices.Contains(hc.Statuses, status)
}

// passiveHealth is a validated PassiveHealth.
type passiveHealth PassiveHealth

// newPassiveHealth validates ph and fills in its defaults; nil ph gives the
// defaults, and Failures < 0 gives nil (off).
func newPassiveHealth(ph *PassiveHealth) (*passiveHealth, error) {
	if ph == nil {
		ph = new(PassiveHealth)
	}
	var errs []error
	if ph.Ejection < 0 || ph.MaxEjection < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: passive health: negative duration (Ejection %v, MaxEjection %v)", ph.Ejection, ph.MaxEjection))
	}
	if ph.MaxEjectedPercent < 0 || ph.MaxEjectedPercent > 100 {
		errs = append(errs, fmt.Errorf("tapproxy: passive health: MaxEjectedPercent %d is outside [0, 100]", ph.MaxEjectedPercent))
	}
	if err := errors.Join(errs...); err != nil || ph.Failures < 0 {
		return nil, err // off, but checked all the same
	}
	h := passiveHealth(*ph)
	h.Statuses = slices.Clone(ph.Statuses)
	if h.Failures == 0 {
		h.Failures = defaultEjectFailures
	}
	if h.Ejection == 0 {
		h.Ejection = defaultEjection
	}
	if h.MaxEjection == 0 {
		h.MaxEjection = max(defaultMaxEjection, h.Ejection)
	}
	if h.MaxEjectedPercent == 0 {
		h.MaxEjectedPercent = defaultMaxEjectedPercent
	}
	return &h, nil
}

// upstreamHealth is what passive health and active checks know of an
// upstream. fails is atomic, so that a success costs no lock; the rest is
// guarded by the pool's mutex.
type upstreamHealth struct {
	fails atomic.Int32 // consecutive failed attempts

	ejectedUntil time.Time // passive
	readmitted   time.Time // when the last ejection ended
	ejections    int       // repeated ejections, for the doubling
	down         bool      // active
	checkFails   int       // consecutive failed checks
	checkPasses  int       // consecutive passed checks
	lastErr      error
}

func (h *upstreamHealth) ejected(now time.Time) bool { return now.Before(h.ejectedUntil) }

func (h *upstreamHealth) healthy(now time.Time) bool { return !h.down && !h.ejected(now) }

// succeeded records an attempt that succeeded.
func (p *pool) succeeded(u *Upstream) {
	if u.health.fails.Load() != 0 {
		u.health.fails.Store(0)
	}
}

// failed records an attempt that failed with err, and ejects u if passive
// health says so.
func (p *pool) failed(u *Upstream, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := &u.health
	h.lastErr = err
	now := time.Now()
	if h.ejected(now) {
		// Failing open: what an ejected upstream does then must not
		// count against it once it is re-admitted.
		return
	}
	n := h.fails.Add(1)
	ph := p.passive
	if ph == nil || int(n) < ph.Failures {
		return
	}
	set := p.set.Load()
	if !slices.Contains(set.all, u) {
		return // removed: its health no longer matters
	}
	ejected := 0
	for _, o := range set.all {
		if o.health.ejected(now) {
			ejected++
		}
	}
	if ejected >= max(1, len(set.all)*ph.MaxEjectedPercent/100) {
		return // at the cap: u keeps serving, and its next failure tries again
	}
	if h.ejections > 0 && now.Sub(h.readmitted) >= ph.MaxEjection {
		h.ejections = 0 // healthy long enough since its last ejection
	}
	d := ph.Ejection
	for range h.ejections {
		if d >= ph.MaxEjection {
			break
		}
		d *= 2
	}
	d = min(d, ph.MaxEjection)
	h.ejections++
	h.ejectedUntil = now.Add(d)
	h.readmitted = h.ejectedUntil
	u.warm(h.ejectedUntil) // the slow start begins with the re-admission
	h.fails.Store(0)
	p.metrics.ejected(u, ejectPassive)
	p.store(set.all, now)
}

// checked records the result of an active check of u: nil for a pass.
func (p *pool) checked(u *Upstream, err error, hc *HealthCheck) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := &u.health
	changed := false
	if err != nil {
		h.lastErr = err
		h.checkFails++
		h.checkPasses = 0
		if !h.down && h.checkFails >= hc.Fails {
			h.down, changed = true, true
			p.metrics.ejected(u, ejectActive)
		}
	} else {
		h.checkPasses++
		h.checkFails = 0
		if h.down && h.checkPasses >= hc.Passes {
			h.down, changed = false, true
			u.warm(time.Now())
		}
	}
	if changed && slices.Contains(p.set.Load().all, u) {
		p.store(p.set.Load().all, time.Now())
	}
}

// healthChecker runs the active checks: one goroutine per upstream.
type healthChecker struct {
	hc     HealthCheck
	ref    *url.URL // hc.Path, parsed
	rt     http.RoundTripper
	pool   *pool
	mu     sync.Mutex
	stops  map[*Upstream]context.CancelFunc
	closed bool
	wg     sync.WaitGroup
}

// sync starts checking the upstreams of all that are not checked yet, and
// stops checking the others.
func (c *healthChecker) sync(all []*Upstream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	for u, stop := range c.stops {
		if !slices.Contains(all, u) {
			stop()
			delete(c.stops, u)
		}
	}
	for _, u := range all {
		if _, ok := c.stops[u]; ok {
			continue
		}
		ctx, stop := context.WithCancel(context.Background())
		c.stops[u] = stop
		c.wg.Go(func() { c.run(ctx, u) })
	}
}

// close stops every check and waits until they have returned.
func (c *healthChecker) close() {
	c.mu.Lock()
	c.closed = true
	for u, stop := range c.stops {
		stop()
		delete(c.stops, u)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *healthChecker) run(ctx context.Context, u *Upstream) {
	t := time.NewTimer(0) // the first check at once
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := c.probe(ctx, u)
		if ctx.Err() != nil {
			return // stopped mid-check: the result says nothing
		}
		c.pool.checked(u, err, &c.hc)
		every := c.hc.Interval
		if c.pool.isDown(u) {
			every = c.hc.UnhealthyInterval
		}
		// ±10% jitter.
		t.Reset(every - every/10 + rand.N(every/5+1))
	}
}

// probe checks u once: nil if it passed.
func (c *healthChecker) probe(ctx context.Context, u *Upstream) error {
	ctx, cancel := context.WithTimeout(ctx, c.hc.Timeout)
	defer cancel()
	target := url.URL{Scheme: u.url.Scheme, Host: u.url.Host, Path: c.ref.Path, RawPath: c.ref.RawPath, RawQuery: c.ref.RawQuery}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return err
	}
	for k, v := range c.hc.Header {
		req.Header[k] = v
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "tapproxy-health-check/"+Version)
	}
	req.Host = c.hc.Host
	res, err := c.rt.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("tapproxy: health check of %s: %w", u.url.Host, err)
	}
	_, err = io.CopyN(io.Discard, res.Body, checkBodyLimit)
	res.Body.Close()
	if !c.hc.passes(res.StatusCode) {
		return fmt.Errorf("tapproxy: health check of %s: status %d", u.url.Host, res.StatusCode)
	}
	if err != nil && err != io.EOF {
		return fmt.Errorf("tapproxy: health check of %s: reading the body: %w", u.url.Host, err)
	}
	return nil
}

func (p *pool) isDown(u *Upstream) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return u.health.down
}

// WithSlowStart gives an upstream that becomes healthy again a growing share
// of the requests: from a tenth of its weight when it is re-admitted after
// a passive ejection, comes back up after active checks, or joins a pool
// that serves already through [Proxy.SetUpstreams], linearly up to its full
// weight after window. A replica that restarted with cold caches, a cold
// JIT or an empty connection pool is then not flooded at once.
// [LeastRequests] and [WeightedRoundRobin] heed it; the other balancers
// ignore it.
//
// By default, and with zero, there is none. A negative window makes [New]
// and [NewBalanced] fail. The last call wins.
func WithSlowStart(window time.Duration) Option {
	return optionFunc(func(c *config) { c.slowStart = window })
}
