package tapproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Retry configures retries of failed upstream attempts (see [WithRetry]).
// A zero field takes its default.
type Retry struct {
	// Attempts is the number of attempts per request, the first included.
	// The default is 3.
	Attempts int

	// Statuses are the response statuses that are retried, such as 502
	// and 503. The default is none. When the attempts run out, the client
	// gets the last response as it was.
	Statuses []int

	// BodyLimit is the size up to which request bodies are kept, so that
	// they can be sent again. A body of declared length above it streams
	// upstream without being kept, and its request is retried only if
	// nothing of it was sent. The default is 64 KiB.
	BodyLimit int64

	// PerTry bounds one attempt, from sending it until its response
	// headers arrived; a body that streams after that is not cut. The
	// default is none: only the request's own deadline applies.
	PerTry time.Duration

	// Budget is the share of the requests in flight that may be retrying
	// at once, so that a failing pool does not multiply its own load;
	// three requests may always retry. Retries of failed dials do not
	// count against it: they cost the upstreams nothing. The default is
	// 0.2.
	Budget float64
}

// WithRetry turns on retries of failed attempts. A request is retried on
// an upstream it has not tried yet, while one is left (with a single
// upstream, on that one), and only while no byte of the response has gone
// to the client:
//
//   - a failed dial, for any request, since nothing was sent;
//   - a reset, a timeout or a status listed in [Retry.Statuses], only for a
//     request that is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or
//     with an Idempotency-Key or X-Idempotency-Key header) and whose body, if it has one, can be
//     sent again byte for byte (see [Retry.BodyLimit]).
//
// A client that leaves is never retried. Observers see one exchange per
// request, with [Exchange.Attempts] and [Exchange.Upstream] set.
//
// [NewBalanced] retries failed dials by default, up to three attempts,
// without this option; [New] retries nothing by default. The last call
// wins. A negative field, or a Budget outside [0, 1], makes New and
// NewBalanced fail.
func WithRetry(r Retry) Option {
	return optionFunc(func(c *config) { c.retry = &r })
}

const (
	defaultAttempts       = 3
	defaultRetryBodyLimit = 64 << 10
	defaultRetryBudget    = 0.2
	// minRetryConcurrency is how many requests may always be retrying,
	// whatever the budget says, so that a quiet proxy can still retry.
	minRetryConcurrency = 3
	// drainLimit bounds what is read of a response that is retried, so
	// that its connection can be reused; a longer body is just closed.
	drainLimit = 256 << 10
)

// retryPolicy is a validated Retry, with the counts its budget needs.
type retryPolicy struct {
	attempts  int
	statuses  []int
	bodyLimit int64
	perTry    time.Duration
	budget    float64
	dialOnly  bool // NewBalanced's default: failed dials only

	active   atomic.Int64 // requests in flight
	retrying atomic.Int64 // of those, the ones holding a budget slot
}

func newRetryPolicy(r *Retry, balanced bool) (*retryPolicy, error) {
	if r == nil {
		if !balanced {
			return nil, nil
		}
		return &retryPolicy{attempts: defaultAttempts, bodyLimit: defaultRetryBodyLimit, budget: defaultRetryBudget, dialOnly: true}, nil
	}
	var errs []error
	if r.Attempts < 0 || r.BodyLimit < 0 || r.PerTry < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: retry: negative value (Attempts %d, BodyLimit %d, PerTry %v)", r.Attempts, r.BodyLimit, r.PerTry))
	}
	if !(r.Budget >= 0 && r.Budget <= 1) { // NaN too
		errs = append(errs, fmt.Errorf("tapproxy: retry: Budget %v is outside [0, 1]", r.Budget))
	}
	rp := &retryPolicy{attempts: r.Attempts, statuses: slices.Clone(r.Statuses), bodyLimit: r.BodyLimit, perTry: r.PerTry, budget: r.Budget}
	if rp.attempts == 0 {
		rp.attempts = defaultAttempts
	}
	if rp.bodyLimit == 0 {
		rp.bodyLimit = defaultRetryBodyLimit
	}
	if rp.budget == 0 {
		rp.budget = defaultRetryBudget
	}
	return rp, errors.Join(errs...)
}

// acquire takes a slot of the budget for rs, unless it holds one already,
// and reports whether it may retry.
func (rp *retryPolicy) acquire(rs *routeState) bool {
	if rs.retrying {
		return true
	}
	allowed := max(minRetryConcurrency, int64(rp.budget*float64(rp.active.Load())))
	for {
		n := rp.retrying.Load()
		if n >= allowed {
			return false
		}
		if rp.retrying.CompareAndSwap(n, n+1) {
			rs.retrying = true
			return true
		}
	}
}

// release gives back rs's slot, if it holds one.
func (rp *retryPolicy) release(rs *routeState) {
	if rs.retrying {
		rp.retrying.Add(-1)
		rs.retrying = false
	}
}

// idempotent reports whether req may be sent twice.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	// X-Idempotency-Key too, as Go's transport accepts it.
	return req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}

// reason says why the attempt that returned res or err should be retried,
// and whether it should be, as far as the attempt itself tells.
func (rp *retryPolicy) reason(req *http.Request, body *replayBody, res *http.Response, err error) (retryReason, bool) {
	replayable := body == nil || body.replayable()
	if err != nil {
		if isDialFailure(err) && (body == nil || body.unread()) {
			return retryDial, true
		}
		if rp.dialOnly || !replayable || !idempotent(req) {
			return 0, false
		}
		switch errKindOf(classify(context.Background(), err, false)) {
		case errTimeout:
			return retryTimeout, true
		case errReset:
			return retryReset, true
		}
		return 0, false
	}
	if !rp.dialOnly && replayable && slices.Contains(rp.statuses, res.StatusCode) && idempotent(req) {
		return retryStatus, true
	}
	return 0, false
}

// errPerTryTimeout is the cause of an attempt that ran out of [Retry.PerTry].
var errPerTryTimeout = errors.New("tapproxy: attempt timed out (Retry.PerTry)")

// roundTripper is the ReverseProxy's transport. It makes the request's
// attempts, one unless a retry policy says otherwise, and notes each
// attempt's response as it arrived. Nothing has reached the client while
// it runs, so a retry is never seen there.
type roundTripper struct {
	rt    http.RoundTripper
	pool  *pool
	retry *retryPolicy // nil: one attempt
}

func (t *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	st := stateFrom(req.Context())
	if t.retry == nil {
		return t.send(st, req)
	}
	rs := &st.route
	parent := req.Context()
	for {
		res, err := t.try(st, req)
		if parent.Err() != nil || rs.informed {
			return res, err // the client left, or has bytes: never retried
		}
		reason, ok := t.retry.reason(req, st.reqBody.replay, res, err)
		if !ok || rs.attempts >= t.retry.attempts {
			return res, err
		}
		if t.retry.dialOnly && len(rs.set.all) == 1 {
			// NewBalanced's default retries move a request elsewhere;
			// a pool of one has nowhere else, and is not retried.
			return res, err
		}
		if reason != retryDial && !t.retry.acquire(rs) {
			return res, err
		}
		failed := rs.up
		next := t.pool.pick(rs, st.metrics.in)
		if next == nil {
			return res, err
		}
		t.endAttempt(st, failed, req, res, err)
		t.pool.metrics.retried(parent, failed, reason)
		req = t.retarget(st, parent, req, next)
	}
}

// send makes one attempt with req and notes its response.
func (t *roundTripper) send(st *exchangeState, req *http.Request) (*http.Response, error) {
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

// try is send within the per-try timeout, if there is one.
func (t *roundTripper) try(st *exchangeState, req *http.Request) (*http.Response, error) {
	st.ex.Response, st.ex.TimeToHeaders, st.metrics.upStatus = nil, 0, 0
	if !t.retry.dialOnly {
		// ReverseProxy relays 1xx responses to the client as they come:
		// after one, the client has bytes, and nothing may be retried.
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			Got1xxResponse: func(int, textproto.MIMEHeader) error {
				st.route.informed = true
				return nil
			},
		}))
	}
	if t.retry.perTry <= 0 {
		return t.send(st, req)
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	st.route.cancelTry = cancel // once the body ended, or the attempt failed
	timer := time.AfterFunc(t.retry.perTry, func() { cancel(errPerTryTimeout) })
	res, err := t.send(st, req.WithContext(ctx))
	if !timer.Stop() && err == nil {
		// The timer fired as the headers arrived: the attempt's context
		// is canceled, and its body would be cut. It timed out.
		res.Body.Close()
		st.ex.Response, st.ex.TimeToHeaders, st.metrics.upStatus = nil, 0, 0
		res, err = nil, errPerTryTimeout
	}
	if err != nil && context.Cause(ctx) == errPerTryTimeout {
		if err != errPerTryTimeout {
			err = fmt.Errorf("%w: %w", errPerTryTimeout, err)
		}
		err = newKindError(errTimeout, err)
	}
	return res, err
}

// endAttempt settles an attempt that is being retried: its body is drained
// and closed, its metrics recorded, and its upstream's health told.
func (t *roundTripper) endAttempt(st *exchangeState, u *Upstream, req *http.Request, res *http.Response, err error) {
	rs := &st.route
	kind := errKindOf(classify(context.Background(), err, false))
	if res != nil {
		_, _ = io.CopyN(io.Discard, res.Body, drainLimit)
		res.Body.Close()
		if t.pool.passive != nil && slices.Contains(t.pool.passive.Statuses, res.StatusCode) {
			t.pool.failed(u, fmt.Errorf("tapproxy: status %d", res.StatusCode))
		}
	} else {
		t.pool.failed(u, err)
	}
	if rs.cancelTry != nil {
		rs.cancelTry(nil)
		rs.cancelTry = nil
	}
	// Its time to headers is left out: measured from the exchange's start,
	// as tapproxy.upstream.time_to_headers is, it would hold the attempts
	// before it.
	t.pool.metrics.recordAttempt(req.Context(), req, &st.metrics, kind, time.Now(), 0)
	t.pool.done(u, st.metrics.in)
}

// retarget returns the request of the next attempt, to next: only the
// URL's host changes, and the Host header follows it unless a director set
// it. The directors' other effects stay as they were.
func (t *roundTripper) retarget(st *exchangeState, ctx context.Context, req *http.Request, next *Upstream) *http.Request {
	out := req.WithContext(ctx)
	u := *req.URL
	u.Host = next.url.Host
	out.URL = &u
	if !st.route.hostSet {
		out.Host = ""
	}
	if st.reqBody.replay != nil {
		out.Body = st.reqBody.replay.reader()
		out.GetBody = st.reqBody.replay.getBody
	}
	return out
}

// replayBody keeps the request body, up to a limit, as the attempts read
// it, so that the next attempt can send the same bytes again. It reads its
// source once: the tee below it counts and captures each byte once, however
// many attempts there are, and the transport's silent re-sends of a request
// on a stale connection (through GetBody) count for nothing.
//
// Reading the source may wait for the client, for as long as it likes (a
// full-duplex stream sends its body as the answers come), so it happens
// under srcMu alone: mu, which the retry decision takes, is never held
// while waiting.
type replayBody struct {
	srcMu sync.Mutex // one reader of src at a time
	src   io.Reader
	limit int64

	mu   sync.Mutex // guards what follows
	buf  []byte
	read int64 // bytes read from src
	over bool  // src gave more than limit: what was sent cannot be sent again
	done error // src's final error, io.EOF at its end
	gen  int   // the attempt whose reader may read; older readers fail
}

// newReplayBody keeps up to limit bytes of src for replay; a body declared
// longer than that is never kept, it streams, and neither is one whose
// limit is negative.
func newReplayBody(src io.Reader, length, limit int64) *replayBody {
	return &replayBody{src: src, limit: limit, over: limit < 0 || length > limit}
}

// unread reports whether nothing has been read of the body yet.
func (b *replayBody) unread() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read == 0
}

// replayable reports whether every byte read so far is kept.
func (b *replayBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read == 0 || !b.over
}

// reader returns the body of a new attempt, from the first byte.
func (b *replayBody) reader() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	return &replayReader{b: b, gen: b.gen}
}

func (b *replayBody) getBody() (io.ReadCloser, error) {
	if !b.replayable() {
		return nil, errors.New("tapproxy: request body cannot be sent again: it is above Retry.BodyLimit")
	}
	return b.reader(), nil
}

var errStaleAttempt = errors.New("tapproxy: request body read by an attempt that was retried")

// replayReader is one attempt's view of a replayBody. Its Close does not
// close the inbound body, which later attempts still need: closing it is
// what makes other proxies' retries fail with "invalid Read on closed
// Body".
type replayReader struct {
	b   *replayBody
	gen int
	off int64
}

func (r *replayReader) Read(p []byte) (int, error) {
	b := r.b
	for {
		if n, err := r.fromKept(p); err != errReadSource {
			return n, err
		}
		b.srcMu.Lock()
		// Another reader may have read from src while this one waited.
		if _, err := r.fromKept(nil); err != errReadSource {
			b.srcMu.Unlock()
			continue
		}
		n, err := b.src.Read(p)
		b.mu.Lock()
		b.read += int64(n)
		if !b.over && n > 0 {
			if int64(len(b.buf)+n) > b.limit {
				b.over, b.buf = true, nil
			} else {
				b.buf = append(b.buf, p[:n]...)
			}
		}
		if err != nil {
			b.done = err
		}
		stale := r.gen != b.gen
		if !stale {
			r.off += int64(n)
		}
		b.mu.Unlock()
		b.srcMu.Unlock()
		if stale {
			// Kept, if it fits, for the attempt that replaced this one.
			return 0, errStaleAttempt
		}
		return n, err
	}
}

// errReadSource says that a read must go to the source.
var errReadSource = errors.New("read the source")

// fromKept answers a read from what is kept, or says errReadSource.
func (r *replayReader) fromKept(p []byte) (int, error) {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case r.gen != b.gen:
		return 0, errStaleAttempt
	case r.off < int64(len(b.buf)):
		n := copy(p, b.buf[r.off:])
		r.off += int64(n)
		return n, nil
	case r.off < b.read:
		return 0, errStaleAttempt // bytes that were not kept
	case b.done != nil:
		return 0, b.done
	}
	return 0, errReadSource
}

func (r *replayReader) Close() error { return nil }
