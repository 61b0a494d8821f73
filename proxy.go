package tapproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime/debug"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Proxy is an observing reverse proxy to one target. It is an
// [http.Handler] built on [httputil.ReverseProxy]: the response streams to
// the client as it arrives, while a size-capped copy of its body is taken
// for the observers. Create one with [New]; it is safe for concurrent use.
type Proxy struct {
	rp              httputil.ReverseProxy
	target          *url.URL
	directors       []Director
	observers       []ResponseObserver
	captureLimit    int
	reqCapture      int
	errorHandler    func(http.ResponseWriter, *http.Request, error)
	modifyResponse  func(*http.Response) error
	logger          *slog.Logger
	captures        capturePool
	reqCaptures     capturePool
	budget          *captureBudget // always set: it counts what captures hold
	policy          func(*http.Response) int64
	gauges          metric.Registration // the capture gauges' callback
	stopGauges      sync.Once
	decoders        map[string]Decoder
	decodeLimit     int64
	showCredentials bool
	metrics         *meters
	transport       http.RoundTripper
	async           *dispatcher // nil: observers run on the request's goroutine
}

var _ http.Handler = (*Proxy)(nil)

// New returns a Proxy that forwards every request to target, joining the
// request's path to the target's path as [httputil.ProxyRequest.SetURL]
// does. The target needs scheme http or https and a host. New reports bad
// input as an error and never panics.
func New(target *url.URL, opts ...Option) (*Proxy, error) {
	c := newConfig(opts)
	var errs []error
	switch {
	case target == nil:
		errs = append(errs, errors.New("tapproxy: target URL is nil"))
	case target.Scheme != "http" && target.Scheme != "https":
		errs = append(errs, fmt.Errorf("tapproxy: target %q: scheme must be http or https", target.Redacted()))
	case target.Host == "":
		errs = append(errs, fmt.Errorf("tapproxy: target %q has no host", target.Redacted()))
	}
	if c.captureLimit < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: capture limit %d is negative", c.captureLimit))
	}
	if c.decodeLimit < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: decode limit %d is negative", c.decodeLimit))
	}
	if c.async && (c.asyncWorkers < 1 || c.asyncQueue < 0) {
		errs = append(errs, fmt.Errorf("tapproxy: asynchronous observers need workers > 0 and a queue size >= 0, got %d and %d", c.asyncWorkers, c.asyncQueue))
	}
	if c.reqCapture < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: request capture limit %d is negative", c.reqCapture))
	}
	if c.captureBudget < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: capture budget %d is negative", c.captureBudget))
	}
	m, err := newMeters(c)
	if err != nil {
		errs = append(errs, fmt.Errorf("tapproxy: creating instruments: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	t := *target // the caller may reuse theirs
	p := &Proxy{
		target:          &t,
		directors:       c.directors,
		observers:       c.observers,
		errorHandler:    c.errorHandler,
		modifyResponse:  c.modifyResponse,
		logger:          c.logger,
		decoders:        c.decoders,
		decodeLimit:     c.decodeLimit,
		showCredentials: c.showCredentials,
		metrics:         m,
		transport:       c.transport,
	}
	p.budget = newCaptureBudget(c.captureBudget)
	if readsBodies(c.observers) {
		// Without observers that read them nobody reads the captures, so
		// take none; bodies are still counted.
		p.captureLimit = int(min(c.captureLimit, math.MaxInt32))
		p.reqCapture = int(min(c.reqCapture, math.MaxInt32))
		p.policy = c.capturePolicy
	}
	if p.gauges, err = p.budget.register(c.meterProvider); err != nil {
		return nil, fmt.Errorf("tapproxy: creating instruments: %w", err)
	}
	if c.async && len(c.observers) > 0 {
		p.async = newDispatcher(p, c.asyncWorkers, c.asyncQueue)
	}
	p.rp = httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      roundTripper{c.transport},
		FlushInterval:  c.flushInterval,
		ErrorLog:       slog.NewLogLogger(c.logger.Handler(), slog.LevelError),
		BufferPool:     copyBuffers,
		ModifyResponse: p.onResponse,
		ErrorHandler:   p.onError,
	}
	return p, nil
}

// ServeHTTP proxies r to the target and, once the response has ended, hands
// the exchange to the observers.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := states.Get().(*exchangeState)
	st.ex.Start = time.Now()
	st.target = p.target
	st.resp.limit, st.resp.pool, st.resp.budget = p.captureLimit, &p.captures, p.budget
	st.w = w
	p.metrics.begin(r.Context(), st, r)
	ctx := contextWithState(r.Context(), st)
	// finish is deferred so that it also runs when ReverseProxy aborts the
	// response with http.ErrAbortHandler; that panic then goes on to the
	// server, which closes the connection.
	defer p.finish(ctx, st)
	p.rp.ServeHTTP(w, r.WithContext(ctx))
	st.served = true
}

func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(p.target)
	for _, d := range p.directors {
		d(pr)
	}
	// Wrap the body last, so that what is counted is what goes upstream.
	if pr.Out.Body != nil {
		st := stateFrom(pr.Out.Context())
		st.req = &requestTee{rc: pr.Out.Body, left: -1}
		if pr.Out.ContentLength > 0 {
			st.req.left = pr.Out.ContentLength
		}
		st.req.buf.limit, st.req.buf.pool, st.req.buf.budget = p.reqCapture, &p.reqCaptures, p.budget
		pr.Out.Body = st.req
	}
}

// roundTripper records when the upstream's response headers arrived, and
// makes sure the response refers to its request, as ModifyResponse needs.
type roundTripper struct{ rt http.RoundTripper }

func (t roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	st := stateFrom(req.Context())
	st.metrics.sending()
	res, err := t.rt.RoundTrip(req)
	st.ex.Request = req
	if err != nil {
		return nil, err
	}
	st.ex.TimeToHeaders = time.Since(st.ex.Start)
	st.ex.Response = res
	st.metrics.received(res)
	if res.Request == nil {
		res.Request = req
	}
	return res, nil
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
	if p.policy != nil {
		st.resp.limit = p.captureLimitFor(res.Request.Context(), res)
	}
	st.body = responseTee{rc: res.Body, st: st, length: res.ContentLength}
	res.Body = &st.body
	return nil
}

// onError is the ReverseProxy's ErrorHandler.
func (p *Proxy) onError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateFrom(r.Context())
	st.ex.Upgraded = false
	if st.ex.Response == nil {
		err = classify(r.Context(), err, false)
	} else if errors.Is(r.Context().Err(), context.Canceled) {
		// The response arrived but could not be relayed: the user's hook
		// or the protocol switch failed. Only the client's leaving is a
		// kind of ours; other errors are the caller's own.
		err = &kindError{kind: ErrClientGone, err: err}
	}
	st.err = err
	// The metrics take the status the client got; one that left got none.
	gone := kindOf(err) == ErrClientGone
	if p.errorHandler != nil {
		sw := &statusWriter{ResponseWriter: w}
		p.errorHandler(sw, r, err)
		if !gone {
			st.metrics.status = sw.code
		}
		return
	}
	code := http.StatusBadGateway
	switch kindOf(err) {
	case ErrClientGone:
		// Nobody will read this; leaving is not a proxy failure.
	case ErrUpstreamTimeout:
		code = http.StatusGatewayTimeout
		fallthrough
	default:
		st.metrics.status = code
		p.logger.LogAttrs(r.Context(), slog.LevelError, "tapproxy: upstream error",
			slog.String("method", r.Method), slog.String("url", r.URL.Redacted()), slog.Any("error", err))
	}
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
	ex, tee := &st.ex, &st.body
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
	if body := st.resp.bytes(); int64(len(body)) > ex.BodyBytes {
		ex.body = body[:ex.BodyBytes]
	} else {
		ex.body = body
	}
	ex.Truncated = int64(len(ex.body)) < ex.BodyBytes
	ex.CaptureSkipped = st.resp.overBudget
	if st.req != nil {
		var over bool
		ex.reqBody, ex.RequestBodyBytes, over = st.req.stop()
		ex.RequestTruncated = int64(len(ex.reqBody)) < ex.RequestBodyBytes
		ex.CaptureSkipped = ex.CaptureSkipped || over
	}
	p.metrics.record(ctx, st)
	if len(p.observers) == 0 {
		st.release()
		return
	}
	if !p.showCredentials {
		redactCredentials(ex)
	}
	ex.decoders, ex.decodeLimit = p.decoders, p.decodeLimit
	st.octx, st.rctx = context.WithoutCancel(ctx), ctx
	if p.async != nil && p.async.dispatch(p, st) {
		return
	}
	p.runObservers(st)
}

// runObservers calls the observers in order, then releases st: its pooled
// buffers are free only once the last observer is done with them.
func (p *Proxy) runObservers(st *exchangeState) {
	timed := p.metrics.observerTimed(st.rctx)
	for i, o := range p.observers {
		p.observe(st, i, o, timed)
	}
	st.ex.closeDecoders()
	st.release()
}

// endErr says why the exchange ended, or nil for a clean end.
func endErr(ctx context.Context, st *exchangeState) error {
	ex, tee := &st.ex, &st.body
	switch {
	case st.err != nil:
		return st.err
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
	return &kindError{kind: ErrClientGone, err: cause}
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
			p.metrics.panicked(st.rctx, i)
			p.logger.LogAttrs(st.octx, slog.LevelError, "tapproxy: observer panicked",
				slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
		}
		if timed {
			p.metrics.observed(st.rctx, i, time.Since(start))
		}
	}()
	o.ObserveResponse(st.octx, &st.ex)
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
