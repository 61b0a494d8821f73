package tapproxytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// A Fault is an HTTP-level failure that a [Server] injects into the
// exchanges it selects. Build one with [Delay], [DelayUniform],
// [DelayLogNormal], [Respond], [ResetAfter], [Truncate], [Throttle],
// [Dribble], [DropTrailers], [Hang], or one of the faults that break the
// connection itself: [CloseConnection], [ResetConnection], [MalformedChunk]
// and [Garbage]. Narrow it to some requests with [Fault.On], and pass it to
// [WithFaults] or [Server.SetFaults].
//
// Faults compose: every fault whose matchers select a request applies to
// it. Delays add up; a [Hang] wins over everything else, then the first
// matching connection fault, then the first matching [Respond]; of
// [ResetAfter] and [Truncate], whichever cuts the body first applies, a
// reset when both cut at the same byte; the slowest [Throttle] and the first
// matching [Dribble] pace the body. The [Recorder] lists the faults applied
// to each exchange in [Exchange.Faults], by name; a random delay's entry
// also gives the delay it drew, as in "delay-uniform(10ms,50ms)=23.4ms".
//
// A Fault is a value: its methods return changed copies. Counting matchers
// ([Nth], [FirstN]) count per server, from when the fault was installed.
// Bad arguments, such as a negative delay, are reported when the fault is
// installed: [NewServer] or [Server.SetFaults] fails the test.
type Fault struct {
	name     string
	kind     faultKind
	n        int64         // byte count, rate or chunk count, per kind
	d        time.Duration // for delays; the median of a log-normal delay; a dribble's total
	lo, hi   time.Duration // the bounds of a random delay
	sigma    float64       // of a log-normal delay
	status   int
	body     string
	matchers []Matcher
	err      error
}

type faultKind int

const (
	kindDelay faultKind = iota + 1
	kindRespond
	kindReset
	kindTruncate
	kindThrottle
	kindDropTrailers
	kindHang
	kindDelayUniform
	kindDelayLogNormal
	kindDribble
	kindCloseConn
	kindResetConn
	kindMalformedChunk
	kindGarbage
)

// random reports whether the fault draws from the server's random source.
func (f Fault) random() bool {
	if f.kind == kindDelayUniform || f.kind == kindDelayLogNormal || f.kind == kindGarbage {
		return true
	}
	return slices.ContainsFunc(f.matchers, func(m Matcher) bool { return m.prob != nil })
}

// Delay returns a Fault that holds back the response headers for d: the
// request goes upstream at once, and the upstream's response is relayed d
// after its headers arrived (with [Respond], the fixed response is sent d
// later).
// If the client gives up during the delay, the exchange ends there. A
// negative d is an error.
func Delay(d time.Duration) Fault {
	f := Fault{name: "delay(" + d.String() + ")", kind: kindDelay, d: d}
	if d < 0 {
		f.err = fmt.Errorf("tapproxytest: Delay(%v): negative duration", d)
	}
	return f
}

// DelayUniform returns a Fault that, like [Delay], holds back the response
// headers, for a delay drawn anew for each request, uniformly from lo to
// hi inclusive. [WithSeed] makes the draws reproducible. The delay drawn is
// recorded in [Exchange.Faults], after the fault's name and "=". A negative
// lo, or hi below lo, is an error.
func DelayUniform(lo, hi time.Duration) Fault {
	f := Fault{name: "delay-uniform(" + lo.String() + "," + hi.String() + ")", kind: kindDelayUniform, lo: lo, hi: hi}
	switch {
	case lo < 0:
		f.err = fmt.Errorf("tapproxytest: DelayUniform(%v, %v): negative duration", lo, hi)
	case hi < lo:
		f.err = fmt.Errorf("tapproxytest: DelayUniform(%v, %v): hi is below lo", lo, hi)
	}
	return f
}

// DelayLogNormal returns a Fault that, like [Delay], holds back the response
// headers, for a delay drawn anew for each request from a log-normal
// distribution: median·e^(sigma·Z) for a standard normal Z, the long-tailed
// shape that real latencies have. A draw above max is drawn again, so no
// delay exceeds max; with max well above the median, half the delays are
// below median. sigma 0 always gives median. [WithSeed] makes the draws
// reproducible. The delay drawn is recorded in [Exchange.Faults], after the
// fault's name and "=". A negative median or sigma, a sigma that is not a
// finite number, or max below median is an error.
func DelayLogNormal(median time.Duration, sigma float64, max time.Duration) Fault {
	f := Fault{
		name: "delay-lognormal(" + median.String() + "," + strconv.FormatFloat(sigma, 'g', -1, 64) + "," + max.String() + ")",
		kind: kindDelayLogNormal, d: median, sigma: sigma, hi: max,
	}
	switch {
	case median < 0:
		f.err = fmt.Errorf("tapproxytest: DelayLogNormal(%v, %v, %v): negative median", median, sigma, max)
	case sigma < 0 || math.IsNaN(sigma) || math.IsInf(sigma, 0):
		f.err = fmt.Errorf("tapproxytest: DelayLogNormal(%v, %v, %v): sigma must be a finite number, at least 0", median, sigma, max)
	case max < median:
		f.err = fmt.Errorf("tapproxytest: DelayLogNormal(%v, %v, %v): max is below the median", median, sigma, max)
	}
	return f
}

// Dribble returns a Fault that delivers the response body in chunks pieces
// of about equal size, total/chunks apart: the first piece right after the
// headers, and the end of the body total after them. Each piece is flushed
// on its own, so that a chunked response has one chunk per piece. A body
// without a declared length is read whole before the first piece goes out,
// so do not dribble an endless stream. A body shorter than chunks bytes goes
// out a byte at a time. A chunks below 1, or a negative total, is an error.
func Dribble(chunks int, total time.Duration) Fault {
	f := Fault{name: "dribble(" + strconv.Itoa(chunks) + "," + total.String() + ")", kind: kindDribble, n: int64(chunks), d: total}
	switch {
	case chunks < 1:
		f.err = fmt.Errorf("tapproxytest: Dribble(%d, %v): chunks must be at least 1", chunks, total)
	case total < 0:
		f.err = fmt.Errorf("tapproxytest: Dribble(%d, %v): negative duration", chunks, total)
	}
	return f
}

// Respond returns a Fault that answers with status code and body without
// contacting the upstream. The response has a Content-Length and, when body
// is not empty, Content-Type text/plain. The request body is read to its end
// and discarded, so the [Recorder] sees it. A code outside 200 to 999, or a
// body with 204 No Content or 304 Not Modified, is an error.
func Respond(code int, body string) Fault {
	f := Fault{name: "respond(" + strconv.Itoa(code) + ")", kind: kindRespond, status: code, body: body}
	switch {
	case code < 200 || code > 999:
		f.err = fmt.Errorf("tapproxytest: Respond(%d): status code must be from 200 to 999", code)
	case body != "" && (code == http.StatusNoContent || code == http.StatusNotModified):
		f.err = fmt.Errorf("tapproxytest: Respond(%d): this status has no body", code)
	}
	return f
}

// ResetAfter returns a Fault that resets the client's connection after n
// bytes of the response body: the proxy delivers n bytes, then closes the
// connection with a TCP RST, so that an HTTP/1 client reading the body gets
// "connection reset by peer" (an HTTP/2 client, a stream reset). If the body
// ends before n bytes, the reset replaces its clean end; a client that
// already holds every byte of a body of declared length may not notice. With
// n = 0 the client may get the reset before the response headers. The
// exchange's Err matches [tapproxy.ErrUpstreamReset]. A negative n is an
// error.
func ResetAfter(n int64) Fault {
	f := Fault{name: "reset-after(" + strconv.FormatInt(n, 10) + ")", kind: kindReset, n: n}
	if n < 0 {
		f.err = fmt.Errorf("tapproxytest: ResetAfter(%d): negative byte count", n)
	}
	return f
}

// Truncate returns a Fault that cuts the response body after n bytes in a
// way the client can detect: the proxy keeps the framing the upstream chose
// and ends the connection normally (TCP FIN) after n bytes. A body with a
// Content-Length is left short of it; a chunked body lacks its terminating
// chunk. Either way a Go client reading the body gets
// [io.ErrUnexpectedEOF], and other HTTP/1.1 clients see an incomplete
// message. A body of n bytes or fewer is not affected. The exchange's Err
// matches [tapproxy.ErrUpstreamReset]. A negative n is an error.
func Truncate(n int64) Fault {
	f := Fault{name: "truncate(" + strconv.FormatInt(n, 10) + ")", kind: kindTruncate, n: n}
	if n < 0 {
		f.err = fmt.Errorf("tapproxytest: Truncate(%d): negative byte count", n)
	}
	return f
}

// Throttle returns a Fault that delivers the response body at no more than
// bytesPerSecond, in pieces of about a tenth of a second's worth: the k-th
// byte is sent no sooner than k/bytesPerSecond seconds after the headers.
// A rate below 1 is an error.
func Throttle(bytesPerSecond int64) Fault {
	f := Fault{name: "throttle(" + strconv.FormatInt(bytesPerSecond, 10) + "B/s)", kind: kindThrottle, n: bytesPerSecond}
	if bytesPerSecond < 1 {
		f.err = fmt.Errorf("tapproxytest: Throttle(%d): rate must be at least 1 byte per second", bytesPerSecond)
	}
	return f
}

// DropTrailers returns a Fault that relays the response without its
// trailers: they are neither announced nor sent, and the [Recorder] sees
// none.
func DropTrailers() Fault {
	return Fault{name: "drop-trailers", kind: kindDropTrailers}
}

// Hang returns a Fault that never answers: the upstream is not contacted,
// the request body is read and discarded, and the request is held until the
// client gives up (a timeout or cancellation that closes the request) or the
// [Server] closes. The exchange's Err matches [tapproxy.ErrClientGone] when
// the client gave up.
func Hang() Fault {
	return Fault{name: "hang", kind: kindHang}
}

// On returns a copy of f that applies only to the requests that all of ms
// select, in addition to those f already required. Without matchers a fault
// applies to every request.
func (f Fault) On(ms ...Matcher) Fault {
	f.matchers = append(slices.Clip(f.matchers), ms...)
	for _, m := range ms {
		err := m.err
		if err == nil && m.isZero() {
			err = errors.New("tapproxytest: zero Matcher; use a constructor such as Path")
		}
		if err != nil && f.err == nil {
			f.err = err
		}
	}
	return f
}

// Named returns a copy of f that the [Recorder] lists under name. By default
// a fault's name says what it does, as in "delay(1s)" or "respond(503)".
func (f Fault) Named(name string) Fault {
	f.name = name
	return f
}

// String returns the fault's name.
func (f Fault) String() string { return f.name }

// validate reports what is wrong with f.
func (f Fault) validate() error {
	if f.kind == 0 {
		return errors.New("tapproxytest: zero Fault; use a constructor such as Delay")
	}
	return f.err
}

// A Matcher selects the requests a [Fault] applies to (see [Fault.On]),
// and the recorded exchanges that [Recorder.Count] and [Recorder.Expect]
// count. For faults, matchers look at the request as the client sent it to
// the proxy; for verification, at the request as recorded (see
// [Exchange.Request]), whose Body then reads the recorded body.
type Matcher struct {
	pred     func(*http.Request) bool
	from, to int64    // a counting matcher selects the from-th to to-th request; 0 if not counting
	prob     *float64 // Probability's share
	desc     string   // for failure messages
	err      error
}

func (m Matcher) isZero() bool { return m.pred == nil && m.from == 0 && m.prob == nil }

// String describes the matcher, as in Method("POST") or Path("/users/*").
func (m Matcher) String() string {
	if m.desc == "" {
		return "Matcher{}"
	}
	return m.desc
}

// Method returns a Matcher that selects requests whose method is one of
// methods, compared exactly ("GET", not "get").
func Method(methods ...string) Matcher {
	return Matcher{
		pred: func(r *http.Request) bool { return slices.Contains(methods, r.Method) },
		desc: "Method(" + quoteList(methods) + ")",
	}
}

// Path returns a Matcher that selects requests whose URL path matches
// pattern, with the syntax of [path.Match]: "/users/*" selects /users/42 but
// not /users/42/orders. A pattern without wildcards must equal the path. A
// malformed pattern is an error.
func Path(pattern string) Matcher {
	m := Matcher{pred: func(r *http.Request) bool {
		ok, _ := path.Match(pattern, r.URL.Path)
		return ok
	}, desc: "Path(" + strconv.Quote(pattern) + ")"}
	if _, err := path.Match(pattern, ""); err != nil {
		m.err = fmt.Errorf("tapproxytest: Path(%q): %w", pattern, err)
	}
	return m
}

// Header returns a Matcher that selects requests with a header key that has
// value among its values.
func Header(key, value string) Matcher {
	return Matcher{
		pred: func(r *http.Request) bool { return slices.Contains(r.Header.Values(key), value) },
		desc: "Header(" + strconv.Quote(key) + ", " + strconv.Quote(value) + ")",
	}
}

// Match returns a Matcher that selects the requests for which pred returns
// true. pred must not modify the request, and must be safe for concurrent
// use. A nil pred selects every request.
func Match(pred func(*http.Request) bool) Matcher {
	if pred == nil {
		pred = func(*http.Request) bool { return true }
	}
	return Matcher{pred: pred, desc: "Match(func)"}
}

// Nth returns a Matcher that selects only the n-th request (counting from 1)
// among those the fault's other matchers select, in the order the requests
// reached the proxy. An n below 1 is an error.
func Nth(n int) Matcher {
	m := Matcher{from: int64(n), to: int64(n), desc: "Nth(" + strconv.Itoa(n) + ")"}
	if n < 1 {
		m.err = fmt.Errorf("tapproxytest: Nth(%d): n must be at least 1", n)
	}
	return m
}

// FirstN returns a Matcher that selects the first n requests among those the
// fault's other matchers select, in the order the requests reached the
// proxy: FirstN(2) fails the first two calls and lets the third through.
// FirstN(0) selects none. A negative n is an error.
func FirstN(n int) Matcher {
	m := Matcher{from: 1, to: int64(n), desc: "FirstN(" + strconv.Itoa(n) + ")"}
	if n < 0 {
		m.err = fmt.Errorf("tapproxytest: FirstN(%d): n must not be negative", n)
	}
	return m
}

// Probability returns a Matcher that selects each request with probability
// p, independently, among those the fault's other predicates select: a
// fault .On(Probability(0.1)) applies to about one request in ten. Each
// fault draws from its own random source, which [WithSeed] makes
// reproducible. Probability(0) selects none and Probability(1) all. A p
// outside [0, 1] is an error. It selects faults only: [Recorder.Count] and
// [Recorder.Expect] reject it.
func Probability(p float64) Matcher {
	m := Matcher{prob: &p, desc: "Probability(" + strconv.FormatFloat(p, 'g', -1, 64) + ")"}
	if !(p >= 0 && p <= 1) {
		m.err = fmt.Errorf("tapproxytest: Probability(%v): p must be from 0 to 1", p)
	}
	return m
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// armedFault is a Fault installed in a server, with its own request count
// and random source.
type armedFault struct {
	Fault
	counting bool
	seen     atomic.Int64
	rnd      *sampler
}

// arm validates faults and readies them for a server. Each fault's random
// source derives from seed, the fault's position and gen, the how-manieth
// set of faults this is for the server.
func arm(faults []Fault, seed int64, gen uint64) ([]*armedFault, error) {
	var errs []error
	armed := make([]*armedFault, 0, len(faults))
	for i, f := range faults {
		if err := f.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		a := &armedFault{Fault: f, rnd: newSampler(seed, gen<<32|uint64(i))}
		for _, m := range f.matchers {
			a.counting = a.counting || m.from != 0
		}
		armed = append(armed, a)
	}
	return armed, errors.Join(errs...)
}

// selects reports whether a applies to r. Predicates come first, then
// probabilities, so that counting matchers count only the requests the
// others select.
func (a *armedFault) selects(r *http.Request) bool {
	for _, m := range a.matchers {
		if m.pred != nil && !m.pred(r) {
			return false
		}
	}
	for _, m := range a.matchers {
		if m.prob != nil && !a.rnd.chance(*m.prob) {
			return false
		}
	}
	if !a.counting {
		return true
	}
	k := a.seen.Add(1)
	for _, m := range a.matchers {
		if m.from != 0 && (k < m.from || k > m.to) {
			return false
		}
	}
	return true
}

// plan is what the faults that selected one request do to it.
type plan struct {
	names        []string
	delay        time.Duration
	respond      *Fault
	hang         bool
	wire         *armedFault // the connection fault, if any
	garbage      []byte      // what a Garbage fault sends
	cutAt        int64       // -1: no cut
	reset        bool        // the cut is a reset, not a truncation
	rate         int64       // 0: not throttled
	dribble      *Fault
	dropTrailers bool
}

// newPlan merges the faults that selected a request.
func newPlan(faults []*armedFault, r *http.Request) *plan {
	var p *plan
	for _, a := range faults {
		if !a.selects(r) {
			continue
		}
		if p == nil {
			p = &plan{cutAt: -1}
		}
		name := a.name
		switch a.kind {
		case kindDelay:
			p.delay += a.d
		case kindDelayUniform, kindDelayLogNormal:
			var d time.Duration
			if a.kind == kindDelayUniform {
				d = a.rnd.uniform(a.lo, a.hi)
			} else {
				d = a.rnd.logNormal(a.d, a.sigma, a.hi)
			}
			p.delay += d
			name += "=" + d.String()
		case kindRespond:
			if p.respond == nil {
				p.respond = &a.Fault
			}
		case kindHang:
			p.hang = true
		case kindCloseConn, kindResetConn, kindMalformedChunk, kindGarbage:
			if p.wire == nil {
				p.wire = a
				if a.kind == kindGarbage {
					p.garbage = a.rnd.garbage(garbageLen)
				}
			}
		case kindReset:
			if p.cutAt < 0 || a.n <= p.cutAt {
				p.cutAt, p.reset = a.n, true
			}
		case kindTruncate:
			if p.cutAt < 0 || a.n < p.cutAt {
				p.cutAt, p.reset = a.n, false
			}
		case kindThrottle:
			if p.rate == 0 || a.n < p.rate {
				p.rate = a.n
			}
		case kindDribble:
			if p.dribble == nil {
				p.dribble = &a.Fault
			}
		case kindDropTrailers:
			p.dropTrailers = true
		}
		p.names = append(p.names, name)
	}
	return p
}

// faultDirector chooses the faults for each request and puts their plan in
// the request's tag, where the transport and the recorder find it.
func (s *Server) faultDirector(pr *httputil.ProxyRequest) {
	faults := s.faults.Load()
	t := tagFrom(pr.Out.Context())
	if faults == nil || len(*faults) == 0 || t == nil {
		return
	}
	t.plan = newPlan(*faults, pr.In)
}

// Errors the faults end exchanges with. They reach the recorder wrapped in
// the proxy's classification.
var (
	errFaultReset     = errors.New("tapproxytest: connection reset by a ResetAfter fault")
	errFaultTruncated = errors.New("tapproxytest: body cut short by a Truncate fault")
	errServerClosed   = errors.New("tapproxytest: server closed while a fault held the request")
)

// faultTransport applies each request's plan around the upstream round trip.
type faultTransport struct {
	next http.RoundTripper
	done <-chan struct{} // closed when the server closes
	rec  *Recorder
}

func (t *faultTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tg := tagFrom(req.Context())
	if tg == nil || tg.plan == nil {
		return t.next.RoundTrip(req)
	}
	p := tg.plan
	var (
		res *http.Response
		err error
	)
	switch {
	case p.hang || p.wire != nil || p.respond != nil:
		// The upstream is not contacted, but what the client sent is
		// read so that the recorder sees it.
		if req.Body != nil {
			var rd io.Reader = req.Body
			if p.wire != nil && !p.hang {
				// Bounded: a connection fault has to act soon.
				rd = io.LimitReader(rd, maxDrain)
			}
			_, _ = io.Copy(io.Discard, rd)
			req.Body.Close()
		}
		if p.hang {
			return nil, t.hold(req.Context())
		}
		if p.wire != nil {
			if err := t.wait(req.Context(), p.delay); err != nil {
				return nil, err
			}
			// The server's error handler acts on the connection.
			return nil, &wireError{kind: p.wire.kind, name: p.wire.name, garbage: p.garbage}
		}
		res = fixedResponse(req, p.respond)
	default:
		res, err = t.next.RoundTrip(req)
		if err != nil {
			return nil, err
		}
	}
	if p.delay > 0 {
		if err := t.wait(req.Context(), p.delay); err != nil {
			res.Body.Close()
			return nil, err
		}
	}
	if res.StatusCode == http.StatusSwitchingProtocols || (p.cutAt < 0 && p.rate == 0 && p.dribble == nil && !p.dropTrailers) {
		// An upgraded connection's body must stay as it is.
		return res, nil
	}
	if p.dropTrailers {
		res.Trailer = nil // nothing to announce
	}
	res.Body = &faultBody{
		rc: res.Body, res: res, p: p, t: t, ctx: req.Context(),
		conn: connFrom(req.Context()), start: time.Now(),
	}
	return res, nil
}

// wait blocks for d, or until ctx ends or the server closes.
func (t *faultTransport) wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.done:
		return errServerClosed
	}
}

// hold blocks until ctx ends or the server closes.
func (t *faultTransport) hold(ctx context.Context) error {
	if tg := tagFrom(ctx); t.rec != nil && tg != nil {
		// Held until the client gives up: Expect need not wait for it.
		t.rec.holding(tg, 1)
		defer t.rec.holding(tg, -1)
	}
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.done:
		return errServerClosed
	}
}

func fixedResponse(req *http.Request, f *Fault) *http.Response {
	h := http.Header{"Content-Length": {strconv.Itoa(len(f.body))}}
	if f.body != "" {
		h.Set("Content-Type", "text/plain; charset=utf-8")
	}
	return &http.Response{
		Status:        strconv.Itoa(f.status) + " " + http.StatusText(f.status),
		StatusCode:    f.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(strings.NewReader(f.body)),
		ContentLength: int64(len(f.body)),
		Request:       req,
	}
}

// faultBody applies a plan's body faults to a response body.
type faultBody struct {
	rc    io.ReadCloser
	res   *http.Response
	p     *plan
	t     *faultTransport
	ctx   context.Context
	conn  net.Conn
	start time.Time
	n     int64 // bytes returned so far

	// For a Dribble fault: the piece size, and the pieces sent so far.
	piece  int64
	pieces int64
	orig   io.ReadCloser // the upstream body, once rc reads a buffered copy
}

func (b *faultBody) Read(p []byte) (int, error) {
	plan := b.p
	if plan.cutAt >= 0 {
		if b.n >= plan.cutAt {
			return 0, b.cut()
		}
		p = p[:min(int64(len(p)), plan.cutAt-b.n)]
	}
	if plan.rate > 0 {
		p = p[:min(int64(len(p)), max(plan.rate/10, 1))]
	}
	if plan.dribble != nil {
		var err error
		if p, err = b.dribble(p); err != nil {
			return 0, err
		}
	}
	n, err := b.rc.Read(p)
	b.n += int64(n)
	if plan.rate > 0 && n > 0 {
		// Send the k-th byte no sooner than k/rate after the start.
		due := b.start.Add(time.Duration(float64(b.n) / float64(plan.rate) * float64(time.Second)))
		if werr := b.t.wait(b.ctx, time.Until(due)); werr != nil {
			return 0, werr
		}
	}
	if err == io.EOF {
		if plan.dropTrailers {
			b.res.Trailer = nil
		}
		if plan.reset && b.n <= plan.cutAt {
			// A shorter body is reset at its end.
			return n, b.cut()
		}
	}
	return n, err
}

// dribble waits until the next piece of a Dribble fault is due, and limits
// p to what remains of it. The k-th piece (from 0) is due k·total/chunks
// after the start, and the end of the body total after it.
func (b *faultBody) dribble(p []byte) ([]byte, error) {
	d := b.p.dribble
	if b.piece == 0 {
		size := b.res.ContentLength
		if size < 0 {
			// Without a declared length, read it all to split it.
			body, err := io.ReadAll(b.rc)
			if err != nil {
				return nil, err
			}
			b.orig, b.rc = b.rc, io.NopCloser(bytes.NewReader(body))
			size = int64(len(body))
		}
		b.piece = max((size+d.n-1)/d.n, 1)
	}
	if b.n >= b.pieces*b.piece {
		// Where this piece starts: wait for its turn. Past the last
		// piece this waits for the end of the body.
		due := b.start.Add(time.Duration(b.pieces) * d.d / time.Duration(d.n))
		if err := b.t.wait(b.ctx, time.Until(due)); err != nil {
			return nil, err
		}
		b.pieces++
	}
	return p[:min(int64(len(p)), b.pieces*b.piece-b.n)], nil
}

func (b *faultBody) Close() error {
	if b.orig != nil {
		b.orig.Close()
	}
	err := b.rc.Close()
	if b.p.dropTrailers {
		// Closing may read the trailers into the response.
		b.res.Trailer = nil
	}
	return err
}

// cut ends the body with an error, which makes the ReverseProxy abort the
// response: the server then closes the client's connection without ending
// the message. For a reset, the connection is first set to linger zero, so
// that closing it sends an RST.
func (b *faultBody) cut() error {
	if !b.p.reset {
		return errFaultTruncated
	}
	setLingerZero(b.conn)
	return errFaultReset
}

type connKey struct{}

// connFrom returns the client connection the server stored in ctx.
func connFrom(ctx context.Context) net.Conn {
	c, _ := ctx.Value(connKey{}).(net.Conn)
	return c
}
