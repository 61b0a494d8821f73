package tapproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime/debug"
	"slices"
	"time"
)

// Proxy is an observing reverse proxy to one target, from [New], or to a
// pool of them, from [NewBalanced]. It is an [http.Handler] built on
// [httputil.ReverseProxy]: the response streams to the client as it
// arrives, while a size-capped copy of its body is taken for the
// observers. It is safe for concurrent use.
type Proxy struct {
	// The collaborators, in the order a request meets them.
	screen    requestScreen         // checks the request line and body size
	pool      *pool                 // picks the upstream; membership and health
	directors []Director            // rewrite the outbound request
	retry     *retryPolicy          // nil: one attempt per request
	transport http.RoundTripper     // sends each attempt
	rp        httputil.ReverseProxy // relays, calling the hooks below
	capture   *captureSettings      // what the tees keep of each body
	observers []ResponseObserver
	view      viewSettings // what observers see of the exchange
	async     *dispatcher  // nil: observers run on the request's goroutine
	metrics   *meters

	// The caller's hooks and logger.
	modifyResponse func(*http.Response) error
	errorHandler   func(http.ResponseWriter, *http.Request, error)
	logger         *slog.Logger
}

var _ http.Handler = (*Proxy)(nil)

// New returns a Proxy that forwards every request to target, joining the
// request's path to the target's path as [httputil.ProxyRequest.SetURL]
// does. The target needs scheme http or https and a host. New reports bad
// input as an error and never panics.
//
// [WithRetry] and [WithPassiveHealth] work with New too: retries go to the
// same target. [Proxy.SetUpstreams] can later make a pool of it.
func New(target *url.URL, opts ...Option) (*Proxy, error) {
	c := newConfig(opts)
	return newProxy(c, []*url.URL{target}, nil, checkTarget(target))
}

// NewBalanced returns a Proxy that balances requests over targets with the
// [Balancer] of [WithBalancer] ([LeastRequests] by default). The targets
// share one scheme and one base path, which each request's path is joined
// to as in [New]; their paths compare as escaped, with a trailing slash
// ignored. None may carry a query or userinfo, or appear twice.
//
// Passive health is on with the defaults of [PassiveHealth], and a failed
// dial is retried on an upstream not yet tried, up to three attempts, even
// without [WithRetry]: nothing was sent, so any request may go elsewhere.
// Active checks are on with [WithHealthCheck]. Each upstream's metrics carry
// its server.address and server.port.
//
// NewBalanced reports bad input, such as no targets, as one joined error and
// never panics.
func NewBalanced(targets []*url.URL, opts ...Option) (*Proxy, error) {
	c := newConfig(opts)
	var errs []error
	if len(targets) == 0 {
		errs = append(errs, errors.New("tapproxy: NewBalanced needs at least one target"))
	}
	errs = append(errs, checkTargets(targets))
	var weights []int
	if w, ok := c.balancer.(weighted); ok {
		weights = w.initialWeights()
		if len(weights) != len(targets) {
			errs = append(errs, fmt.Errorf("tapproxy: WeightedRoundRobin has %d weights for %d targets", len(weights), len(targets)))
		}
		for i, w := range weights {
			if w < 1 {
				errs = append(errs, fmt.Errorf("tapproxy: weight %d of target %d is below 1", w, i))
			}
		}
	}
	if weights == nil {
		weights = make([]int, len(targets))
	}
	return newProxy(c, targets, weights, errors.Join(errs...))
}

// newProxy validates c and builds a Proxy over targets. weights is nil for
// New, and otherwise holds one weight per target; targetErr says what is
// wrong with the targets.
func newProxy(c *config, targets []*url.URL, weights []int, targetErr error) (*Proxy, error) {
	// Each collaborator checks its own options; their errors are joined
	// in this order.
	capture, captureErr := newCaptureSettings(c)
	view, viewErr := newViewSettings(c)
	retry, retryErr := newRetryPolicy(c.retry, weights != nil)
	pl, poolErr := newPool(c, weights != nil)
	screen, screenErr := newRequestScreen(c)
	m, err := newMeters(c)
	if err != nil {
		err = fmt.Errorf("tapproxy: creating instruments: %w", err)
	}
	if err := errors.Join(targetErr, captureErr, viewErr, checkAsync(c), retryErr, poolErr, screenErr, err); err != nil {
		return nil, err
	}

	pl.fill(targets, weights, m)
	p := &Proxy{
		screen:         screen,
		pool:           pl,
		directors:      c.directors,
		retry:          retry,
		transport:      c.transport,
		capture:        capture,
		observers:      c.observers,
		view:           view,
		metrics:        m,
		modifyResponse: c.modifyResponse,
		errorHandler:   c.errorHandler,
		logger:         c.logger,
	}
	if err := m.registerGauges(c.meterProvider, &capture.budget, pl); err != nil {
		return nil, err
	}
	if c.async && len(c.observers) > 0 {
		p.async = newDispatcher(p, c.asyncWorkers, c.asyncQueue)
	}
	pl.startChecks()
	p.rp = httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      &roundTripper{rt: c.transport, pool: pl, retry: retry},
		FlushInterval:  c.flushInterval,
		ErrorLog:       slog.NewLogLogger(c.logger.Handler(), slog.LevelError),
		BufferPool:     copyBuffers,
		ModifyResponse: p.onResponse,
		ErrorHandler:   p.onError,
	}
	return p, nil
}

// errEmptyPool is the cause of ErrNoUpstream.
var errEmptyPool = errors.New("the pool is empty")

// ServeHTTP proxies r to an upstream and, once the response has ended,
// hands the exchange to the observers.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A request's way through, top to bottom: screen it (here), pick an
	// upstream and run the directors (rewrite), send it with retries
	// (roundTripper), tee the response body (onResponse) as the
	// ReverseProxy copies it to the client, then call the observers
	// (finish).
	st := p.newState(w)
	// Normalise the path first, so that routing, directors, metrics and
	// observers all see the path that results.
	r, refused := p.screen.requestLine(r)
	p.metrics.begin(r.Context(), st, r)
	ctx := contextWithState(r.Context(), st)
	// finish is deferred so that it also runs when ReverseProxy aborts the
	// response with http.ErrAbortHandler; that panic then goes on to the
	// server, which closes the connection.
	defer p.finish(ctx, st)
	r = r.WithContext(ctx)
	if refused == nil {
		var done func()
		r, done, refused = p.screen.body(w, r, st)
		defer done()
	}
	switch {
	case refused != nil:
		st.local = true
		p.answer(w, r, st, refused)
	case len(st.route.set.all) == 0:
		p.onError(w, r, newKindError(errNoUpstream, errEmptyPool))
	default:
		p.rp.ServeHTTP(w, r)
	}
	st.served = true
}

// newState takes an exchange's state from the pool, for a request that
// arrived now and is answered through w.
func (p *Proxy) newState(w http.ResponseWriter) *exchangeState {
	st := states.Get().(*exchangeState)
	st.ex.Start = time.Now()
	st.w = w
	st.route.set = p.pool.current()
	if p.retry != nil {
		p.retry.active.Add(1)
	}
	st.resBody.buf = p.capture.response()
	return st
}

// rewrite is the ReverseProxy's Rewrite: it picks the upstream, routes the
// request there, and runs the directors.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	// The state is found through In: a director may replace Out.
	st := stateFrom(pr.In.Context())
	u := p.pool.pick(&st.route, pr.In)
	st.target = u.url
	pr.SetURL(u.url)
	for _, d := range p.directors {
		d(pr)
	}
	st.route.hostSet = pr.Out.Host != ""
	// Wrap the body last, so that what is counted is what goes upstream.
	if pr.Out.Body != nil {
		p.wrapRequestBody(st, pr.Out)
	}
}

// wrapRequestBody puts the request tee, and under retries the replay over
// it, in out's body's place.
func (p *Proxy) wrapRequestBody(st *exchangeState, out *http.Request) {
	rb := &st.reqBody
	rb.tee = &requestTee{rc: out.Body, left: -1}
	if out.ContentLength > 0 {
		rb.tee.left = out.ContentLength
	}
	rb.tee.buf = p.capture.request()
	out.Body = rb.tee
	if rp := p.retry; rp != nil && !(rp.dialOnly && len(st.route.set.all) == 1) {
		// Under the attempts, the tee reads each byte once. Retries of
		// failed dials only ever resend an unread body: it need not be
		// kept.
		limit := rp.bodyLimit
		if rp.dialOnly {
			limit = -1
		}
		rb.replay = newReplayBody(rb.tee, out.ContentLength, limit)
		out.Body, out.GetBody = rb.replay.reader(), rb.replay.getBody
	}
}

// onResponse is the ReverseProxy's ModifyResponse: it runs the user's hook,
// then puts the tee in the body's place.
func (p *Proxy) onResponse(res *http.Response) error {
	st := stateFrom(res.Request.Context())
	if p.modifyResponse != nil {
		body, n, cl := res.Body, res.ContentLength, res.Header.Get("Content-Length")
		if err := p.modifyResponse(res); err != nil {
			return err
		}
		if res.Body != body && res.ContentLength == n && res.Header.Get("Content-Length") == cl {
			// A new body under the old length would corrupt the framing.
			res.ContentLength = -1
			res.Header.Del("Content-Length")
		}
		st.ex.Response = res
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// ReverseProxy needs the body as an io.ReadWriteCloser: leave it.
		st.ex.Upgraded = true
		return nil
	}
	if p.capture.policy != nil {
		st.resBody.buf.limit = p.capture.limitFor(res.Request.Context(), res, p.logger)
	}
	st.resBody.tee = responseTee{rc: res.Body, st: st, length: res.ContentLength}
	res.Body = &st.resBody.tee
	return nil
}

// onError is the ReverseProxy's ErrorHandler.
func (p *Proxy) onError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateFrom(r.Context())
	if st.reqBody.limit.exceeded() != nil {
		// The body grew past the limit before a response started.
		p.answer(w, r, st, answerTooLarge)
		return
	}
	st.ex.Upgraded = false
	if st.ex.Response == nil {
		err = classify(r.Context(), err, false)
	} else if errors.Is(r.Context().Err(), context.Canceled) {
		// The response arrived but could not be relayed: the user's hook
		// or the protocol switch failed. Only the client's leaving is a
		// kind of ours; other errors are the caller's own.
		err = newKindError(errClientGone, err)
	}
	st.err = err
	kind := errKindOf(err)
	// The metrics take the status the client got; one that left got none.
	if p.errorHandler != nil {
		sw := &statusWriter{ResponseWriter: w}
		p.errorHandler(sw, r, err)
		if kind != errClientGone {
			st.metrics.status = sw.code
		}
		return
	}
	code := errorKinds[kind].status
	if code == 0 {
		// Nobody will read this; leaving is not a proxy failure.
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	st.metrics.status = code
	p.logger.LogAttrs(r.Context(), slog.LevelError, "tapproxy: upstream error",
		slog.String("method", r.Method), slog.String("url", r.URL.Redacted()), slog.Any("error", err))
	w.WriteHeader(code)
}

// errAborted stands for a panic that ended the exchange before a response
// arrived, such as one in a director or the transport.
var errAborted = errors.New("tapproxy: exchange aborted by a panic")

// errWriteFailed stands for a failed write to a client whose context was not
// (yet) canceled.
var errWriteFailed = errors.New("tapproxy: write to client failed")

// finish settles the exchange and calls the observers.
func (p *Proxy) finish(ctx context.Context, st *exchangeState) {
	ex, tee := &st.ex, &st.resBody.tee
	// ReverseProxy returns, or fails with a read error, only after writing
	// what it read last; when it fails without one, the write failed, but
	// over HTTP/2 its bytes may have gone out all the same.
	delivered := st.served || tee.readErr != nil || tee.completedBeforeReset(st.metrics.in)
	if delivered {
		ex.BodyBytes += tee.pending
	}
	if delivered && ex.BodyBytes > 0 && !ex.Upgraded {
		// Deliver the buffered tail before observers run, and before
		// ReverseProxy aborts the response after an upstream read error:
		// what BodyBytes counts must reach the client even then. A
		// response without body bytes is left alone so that it keeps its
		// framing (a trailers-only gRPC status must stay one HEADERS
		// frame).
		_ = http.NewResponseController(st.w).Flush()
	}
	ex.Duration = time.Since(ex.Start)
	ex.Err = endErr(ctx, st)
	p.settleRoute(st)
	st.settleCaptures()
	p.metrics.record(ctx, st)
	if len(p.observers) == 0 {
		st.release()
		return
	}
	p.view.prepare(ex)
	st.obs.ctx, st.obs.rctx = context.WithoutCancel(ctx), ctx
	if p.async != nil && p.async.dispatch(p, st) {
		return
	}
	p.runObservers(st)
}

// settleRoute ends the final attempt's hold on its upstream, tells its
// health how it went, and fills in the exchange's route.
func (p *Proxy) settleRoute(st *exchangeState) {
	ex, rs := &st.ex, &st.route
	if rs.cancelTry != nil {
		rs.cancelTry(nil)
	}
	if p.retry != nil {
		p.retry.release(rs)
		p.retry.active.Add(-1)
	}
	ex.Attempts = rs.attempts
	if ex.Request == nil {
		ex.Request = st.metrics.in
	}
	u := rs.up
	if u == nil {
		return
	}
	ex.Upstream = u.url
	switch kind := errKindOf(ex.Err); {
	case kind == errUnavailable, kind == errTimeout, kind == errReset, kind == errMalformed:
		p.pool.failed(u, ex.Err)
	case kind != errNone || ex.Response == nil:
		// The client left, or a hook failed: no word on the upstream.
	case p.pool.passive != nil && slices.Contains(p.pool.passive.Statuses, st.metrics.upStatus):
		p.pool.failed(u, fmt.Errorf("tapproxy: status %d", st.metrics.upStatus))
	case p.retry != nil && slices.Contains(p.retry.statuses, st.metrics.upStatus):
		// Retried statuses count neither way.
	default:
		p.pool.succeeded(u)
	}
	p.pool.done(u, st.metrics.in)
}

// runObservers calls the observers in order, then releases st: its pooled
// buffers are free only once the last observer is done with them.
func (p *Proxy) runObservers(st *exchangeState) {
	timed := p.metrics.observerTimed(st.obs.rctx)
	for i, o := range p.observers {
		p.observe(st, i, o, timed)
	}
	st.ex.closeDecoders()
	st.release()
}

// endErr says why the exchange ended, or nil for a clean end.
func endErr(ctx context.Context, st *exchangeState) error {
	ex, tee := &st.ex, &st.resBody.tee
	switch {
	case st.err != nil:
		return st.err
	case st.reqBody.limit.exceeded() != nil:
		return st.reqBody.limit.exceeded()
	case ex.Upgraded || tee.eof:
		return nil
	case ex.Response == nil:
		return classify(ctx, errAborted, false)
	case ex.Response.ContentLength >= 0 && ex.BodyBytes == ex.Response.ContentLength:
		// The client has the whole declared body; what went wrong after
		// that is no loss to it.
		return nil
	case tee.readErr != nil:
		return classify(ctx, tee.readErr, true)
	}
	// The copy stopped without a read error: writing to the client failed.
	cause := context.Cause(ctx)
	if cause == nil {
		cause = errWriteFailed
	}
	return newKindError(errClientGone, cause)
}

// observe calls the observer at index i, containing its panic. If timed, it
// records how long the call took, panic or not.
func (p *Proxy) observe(st *exchangeState, i int, o ResponseObserver, timed bool) {
	var start time.Time
	if timed {
		start = time.Now()
	}
	defer func() {
		if v := recover(); v != nil {
			p.metrics.panicked(st.obs.rctx, i)
			p.logger.LogAttrs(st.obs.ctx, slog.LevelError, "tapproxy: observer panicked",
				slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
		}
		if timed {
			p.metrics.observed(st.obs.rctx, i, time.Since(start))
		}
	}()
	o.ObserveResponse(st.obs.ctx, &st.ex)
}

// statusWriter notes the status a custom error handler answers with.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets [http.ResponseController] reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
