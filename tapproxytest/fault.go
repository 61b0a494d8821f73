package tapproxytest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
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
// exchanges it selects. Build one with [Delay], [Respond], [ResetAfter],
// [Truncate], [Throttle], [DropTrailers] or [Hang], narrow it to some
// requests with [Fault.On], and pass it to [WithFaults] or
// [Server.SetFaults].
//
// Faults compose: every fault whose matchers select a request applies to
// it. Delays add up; the first matching [Respond] answers; a [Hang] wins over
// everything else; of [ResetAfter] and [Truncate], whichever cuts the body
// first applies, a reset when both cut at the same byte; the slowest
// [Throttle] paces the body. The [Recorder] lists the faults applied to each
// exchange in [Exchange.Faults], by name.
//
// A Fault is a value: its methods return changed copies. Counting matchers
// ([Nth], [FirstN]) count per server, from when the fault was installed.
// Bad arguments, such as a negative delay, are reported when the fault is
// installed: [NewServer] or [Server.SetFaults] fails the test.
type Fault struct {
	name     string
	kind     faultKind
	n        int64         // byte count or rate, per kind
	d        time.Duration // for delays
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
)

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
		if err == nil && m.pred == nil && m.from == 0 {
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

// A Matcher selects the requests a [Fault] applies to; see [Fault.On].
// Matchers look at the request as the client sent it to the proxy.
type Matcher struct {
	pred     func(*http.Request) bool
	from, to int64 // a counting matcher selects the from-th to to-th request; 0 if not counting
	err      error
}

// Method returns a Matcher that selects requests whose method is one of
// methods, compared exactly ("GET", not "get").
func Method(methods ...string) Matcher {
	return Matcher{pred: func(r *http.Request) bool { return slices.Contains(methods, r.Method) }}
}

// Path returns a Matcher that selects requests whose URL path matches
// pattern, with the syntax of [path.Match]: "/users/*" selects /users/42 but
// not /users/42/orders. A pattern without wildcards must equal the path. A
// malformed pattern is an error.
func Path(pattern string) Matcher {
	m := Matcher{pred: func(r *http.Request) bool {
		ok, _ := path.Match(pattern, r.URL.Path)
		return ok
	}}
	if _, err := path.Match(pattern, ""); err != nil {
		m.err = fmt.Errorf("tapproxytest: Path(%q): %w", pattern, err)
	}
	return m
}

// Header returns a Matcher that selects requests with a header key that has
// value among its values.
func Header(key, value string) Matcher {
	return Matcher{pred: func(r *http.Request) bool { return slices.Contains(r.Header.Values(key), value) }}
}

// Match returns a Matcher that selects the requests for which pred returns
// true. pred must not modify the request, and must be safe for concurrent
// use. A nil pred selects every request.
func Match(pred func(*http.Request) bool) Matcher {
	if pred == nil {
		pred = func(*http.Request) bool { return true }
	}
	return Matcher{pred: pred}
}

// Nth returns a Matcher that selects only the n-th request (counting from 1)
// among those the fault's other matchers select, in the order the requests
// reached the proxy. An n below 1 is an error.
func Nth(n int) Matcher {
	m := Matcher{from: int64(n), to: int64(n)}
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
	m := Matcher{from: 1, to: int64(n)}
	if n < 0 {
		m.err = fmt.Errorf("tapproxytest: FirstN(%d): n must not be negative", n)
	}
	return m
}

// armedFault is a Fault installed in a server, with its own request count.
type armedFault struct {
	Fault
	counting bool
	seen     atomic.Int64
}

func arm(faults []Fault) ([]*armedFault, error) {
	var errs []error
	armed := make([]*armedFault, 0, len(faults))
	for _, f := range faults {
		if err := f.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		a := &armedFault{Fault: f}
		for _, m := range f.matchers {
			a.counting = a.counting || m.pred == nil
		}
		armed = append(armed, a)
	}
	return armed, errors.Join(errs...)
}

// selects reports whether a applies to r. Predicates come first, so that
// counting matchers count only the requests the predicates select.
func (a *armedFault) selects(r *http.Request) bool {
	for _, m := range a.matchers {
		if m.pred != nil && !m.pred(r) {
			return false
		}
	}
	if !a.counting {
		return true
	}
	k := a.seen.Add(1)
	for _, m := range a.matchers {
		if m.pred == nil && (k < m.from || k > m.to) {
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
	cutAt        int64 // -1: no cut
	reset        bool  // the cut is a reset, not a truncation
	rate         int64 // 0: not throttled
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
		p.names = append(p.names, a.name)
		switch a.kind {
		case kindDelay:
			p.delay += a.d
		case kindRespond:
			if p.respond == nil {
				p.respond = &a.Fault
			}
		case kindHang:
			p.hang = true
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
		case kindDropTrailers:
			p.dropTrailers = true
		}
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
	case p.hang || p.respond != nil:
		// The upstream is not contacted, but what the client sent is
		// read so that the recorder sees it.
		if req.Body != nil {
			_, _ = io.Copy(io.Discard, req.Body)
			req.Body.Close()
		}
		if p.hang {
			return nil, t.hold(req.Context())
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
	if res.StatusCode == http.StatusSwitchingProtocols || (p.cutAt < 0 && p.rate == 0 && !p.dropTrailers) {
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

func (b *faultBody) Close() error {
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
	c := b.conn
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return errFaultReset
}

type connKey struct{}

// connFrom returns the client connection the server stored in ctx.
func connFrom(ctx context.Context) net.Conn {
	c, _ := ctx.Value(connKey{}).(net.Conn)
	return c
}
