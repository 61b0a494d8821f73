package tapproxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// A ResponseObserver is handed every exchange the proxy relays.
//
// ObserveResponse is called exactly once per proxied request, after the
// response body has ended (at EOF, on an error, or when the client left) and
// after its last byte went to the client; for a 101 Switching Protocols
// response, when the upgraded connection closes. It is also called when no
// response arrived, with [Exchange.Response] nil and [Exchange.Err] set.
// Observers run in the order they were added, by default on the request's
// goroutine, so they must be quick: a chunked response's final chunk goes
// out only when they return. With [WithAsyncObservers] they run on a worker
// instead, and an exchange may be dropped when the workers fall behind.
//
// ctx carries the request's values but is not canceled when the client
// leaves. Implementations must be safe for concurrent use, must treat ex as
// read-only, and must not retain ex, its body, or its request and response
// past the call: the proxy reuses their storage. A panic in an observer is
// recovered and logged; it affects neither the response nor the other
// observers.
type ResponseObserver interface {
	ObserveResponse(ctx context.Context, ex *Exchange)
}

// The ObserverFunc type is an adapter to allow the use of ordinary functions
// as response observers. If f is a function with the appropriate signature,
// ObserverFunc(f) is a [ResponseObserver] that calls f.
type ObserverFunc func(ctx context.Context, ex *Exchange)

// ObserveResponse calls f(ctx, ex).
func (f ObserverFunc) ObserveResponse(ctx context.Context, ex *Exchange) { f(ctx, ex) }

var _ ResponseObserver = ObserverFunc(nil)

// An Exchange describes one proxied request and its response, as observers
// see it. It and everything it refers to are valid only during the observer
// call.
type Exchange struct {
	// Request is the outbound request of the final attempt as it was sent
	// upstream, after the directors ran. Its body has been consumed; see
	// RequestBody. When no attempt was made, such as for a request the
	// proxy answered itself (see ErrBadRequest and ErrNoUpstream), it is
	// the inbound request, its path resolved as far as it went.
	Request *http.Request

	// Upstream is the target of the final attempt, nil when none was
	// tried. Attempts counts the upstream attempts made: 1 unless the
	// request was retried (see [WithRetry]), 0 when none was made.
	Upstream *url.URL
	Attempts int

	// Response is the upstream's response: its status, its headers, and
	// (once the body ended) its trailers. Its body has been consumed; see
	// Body. It is nil when no response arrived. When the proxy answered
	// the request itself (a refusal of kind ErrBadRequest, a redirect of
	// [UnescapeAndRedirect], or OPTIONS *), it is a synthetic response
	// with the status and headers the client got, and no body.
	Response *http.Response

	// Start is when the proxy received the request.
	Start time.Time

	// TimeToHeaders is the time from Start until the upstream's final
	// (non-1xx) response headers arrived; zero when none arrived.
	TimeToHeaders time.Duration

	// Duration is the time from Start until the response ended: the last
	// body byte was delivered, the exchange failed, or the upgraded
	// connection closed.
	Duration time.Duration

	// BodyBytes counts the response body bytes delivered to the client:
	// 0 when no upstream response arrived. Over HTTP/2, bytes that
	// complete a declared length count as delivered even when their write
	// failed because the client reset the stream or closed the connection
	// in that instant: the server cannot tell whether their frame had
	// left, and such a client nearly always stopped because it had them.
	BodyBytes int64

	// Truncated reports that Body holds fewer bytes than BodyBytes,
	// because of the capture limit (or the capture policy's limit for
	// this response), or the capture budget.
	Truncated bool

	// RequestBodyBytes counts the request body bytes sent upstream.
	RequestBodyBytes int64

	// RequestTruncated reports that RequestBody holds fewer bytes than
	// RequestBodyBytes, because of the request capture limit or the
	// capture budget.
	RequestTruncated bool

	// CaptureSkipped reports that the proxy's capture budget (see
	// [WithCaptureBudget]) was spent while this exchange's response or
	// request body was being captured: that capture holds fewer bytes
	// than its limit would have kept, possibly none, and Truncated or
	// RequestTruncated is true. The bytes relayed are never affected.
	CaptureSkipped bool

	// Upgraded reports a 101 Switching Protocols response whose connection
	// was relayed until it closed. Upgraded exchanges have no capture.
	Upgraded bool

	// Err is nil when the exchange ended cleanly, and otherwise says why
	// it did not. It matches one of ErrUpstreamUnavailable,
	// ErrUpstreamTimeout, ErrUpstreamReset, ErrUpstreamMalformed,
	// ErrClientGone or ErrBadRequest with [errors.Is] when the failure is
	// of such a kind, and wraps the underlying error. A client that
	// received every byte of a body of declared length had a clean
	// exchange, even if it closed the connection straight after.
	Err error

	body, reqBody []byte
	decoders      map[string]Decoder
	decodeLimit   int64
	open          []io.Closer // decoders to close after the observers
}

// Body returns a new reader over the captured response body: the first bytes
// of the body exactly as they were streamed to the client, up to the
// capture limit. The response's Content-Encoding header says how they are
// encoded. Each call starts at the first byte, so every observer reads its
// own copy.
func (ex *Exchange) Body() io.Reader { return bytes.NewReader(ex.body) }

// RequestBody returns a new reader over the captured request body, up to the
// limit set by [WithRequestCaptureLimit]. It is empty when request capture is
// off.
func (ex *Exchange) RequestBody() io.Reader { return bytes.NewReader(ex.reqBody) }

// exchangeState is what the proxy tracks for one request, from ServeHTTP to
// the observer calls. It is pooled.
type exchangeState struct {
	ex     Exchange            // what the observers are handed
	w      http.ResponseWriter // the client's
	target *url.URL            // the picked upstream's, for directors that re-route

	route   routeState   // the picks and attempts
	reqBody requestBody  // what wraps the request body
	resBody responseBody // what wraps the response body
	obs     observerContexts
	metrics exchangeMetrics

	// How the exchange went.
	err    error // from the error handler, classified
	served bool  // ReverseProxy.ServeHTTP returned rather than panicked
	local  bool  // the proxy answered itself; nothing went upstream
}

// requestBody is what wraps an exchange's request body, from the client's
// side to the upstream's; each is nil when not in use.
type requestBody struct {
	limit  *limitedBody // fails the body past the body limit
	tee    *requestTee  // counts and captures what goes upstream
	replay *replayBody  // hands each attempt the body afresh; nil without retries
}

// responseBody is what the ReverseProxy copies the response body through:
// the tee, and the capture it fills.
type responseBody struct {
	tee responseTee
	buf bodyBuffer
}

// observerContexts are the contexts the observers are called with.
type observerContexts struct {
	ctx context.Context // the request's values, never canceled
	// rctx is the request's context, for recording observer metrics: it
	// carries the same values as ctx, and looking them up through it does
	// not allocate, unlike through context.WithoutCancel's.
	rctx context.Context
}

var states = sync.Pool{New: func() any { return new(exchangeState) }}

type stateKey struct{}

func contextWithState(ctx context.Context, st *exchangeState) context.Context {
	return context.WithValue(ctx, stateKey{}, st)
}

func stateFrom(ctx context.Context) *exchangeState {
	st, _ := ctx.Value(stateKey{}).(*exchangeState)
	return st
}

// settleCaptures hands the exchange its captured bodies, the response's
// cut to what was delivered, and what they count; the request's capture
// stops here.
func (st *exchangeState) settleCaptures() {
	ex := &st.ex
	if body := st.resBody.buf.bytes(); int64(len(body)) > ex.BodyBytes {
		ex.body = body[:ex.BodyBytes]
	} else {
		ex.body = body
	}
	ex.Truncated = int64(len(ex.body)) < ex.BodyBytes
	ex.CaptureSkipped = st.resBody.buf.overBudget
	if st.reqBody.tee != nil {
		var over bool
		ex.reqBody, ex.RequestBodyBytes, over = st.reqBody.tee.stop()
		ex.RequestTruncated = int64(len(ex.reqBody)) < ex.RequestBodyBytes
		ex.CaptureSkipped = ex.CaptureSkipped || over
	}
}

func (st *exchangeState) release() {
	st.resBody.buf.release()
	if st.reqBody.tee != nil {
		st.reqBody.tee.release()
	}
	*st = exchangeState{}
	states.Put(st)
}

// responseTee is the response body the ReverseProxy copies to the client.
// It copies what it reads into the capture and keeps the count of delivered
// bytes: the proxy asks for the next bytes only after it wrote the previous
// ones, so bytes are counted as delivered when the next Read comes, or when
// the copy returns cleanly.
type responseTee struct {
	rc      io.ReadCloser
	st      *exchangeState
	pending int64 // read, not yet known to be delivered
	length  int64 // declared, or -1
	eof     bool
	readErr error
}

func (t *responseTee) Read(p []byte) (int, error) {
	st := t.st
	if t.pending > 0 && st.ex.BodyBytes+t.pending == t.length {
		// The whole declared body has been written; only the upstream's
		// end of stream is to come, and an HTTP/2 upstream may send it
		// much later (when its handler returns). Flush so that the
		// client need not wait for it.
		_ = http.NewResponseController(st.w).Flush()
	}
	n, err := t.rc.Read(p)
	st.ex.BodyBytes += t.pending
	t.pending = int64(n)
	if n > 0 && st.resBody.buf.limit > 0 {
		st.resBody.buf.Write(p[:n])
	}
	if err == io.EOF {
		t.eof = true
	} else if err != nil {
		t.readErr = err
	}
	return n, err
}

func (t *responseTee) Close() error { return t.rc.Close() }

// completedBeforeReset reports whether the bytes of the last read count as
// delivered although ReverseProxy's write of them failed: they complete
// the declared length, on an HTTP/2 (or later) request.
//
// Over HTTP/2 a failed Write does not mean that its bytes stayed behind.
// The server's handler waits for the result of its DATA frame's write or
// for the end of the stream or connection, whichever it sees first, and
// different goroutines report them. A client that has the declared length
// may reset the stream or close the connection at once, before END_STREAM
// (curl does); if the server handles that before the frame write's result,
// Write fails although the frame is on the wire, and ReverseProxy aborts.
// The handler cannot tell that from a frame that never left, but a client
// that stops in just that instant nearly always stopped because it had
// every byte. Over HTTP/1.1 a failed write means the connection failed, so
// its bytes are not counted.
func (t *responseTee) completedBeforeReset(in *http.Request) bool {
	return in != nil && in.ProtoMajor >= 2 && t.pending > 0 && t.length >= 0 &&
		t.st.ex.BodyBytes+t.pending == t.length
}

// requestTee counts and captures the request body as the transport reads
// it. The transport may read on its own goroutine, even after the handler
// returned, so the capture is guarded and stopped before observers see it.
type requestTee struct {
	rc      io.ReadCloser
	left    int64 // declared bytes not yet read; -1 if the length is unknown
	mu      sync.Mutex
	buf     bodyBuffer
	stopped bool
}

func (t *requestTee) Read(p []byte) (int, error) {
	// Once the declared length has been read, answer EOF ourselves. The
	// transport reads once more to check that the body ends there, and by
	// then the upstream may have answered and the server, writing the
	// response headers, closed the inbound body: that read would fail, and
	// the transport would close the upstream connection and cut the
	// response (golang.org/issue/40747). The transport sends no more than
	// the declared length anyway.
	if t.left == 0 {
		return 0, io.EOF
	}
	if t.left > 0 && int64(len(p)) > t.left {
		p = p[:t.left]
	}
	n, err := t.rc.Read(p)
	if t.left > 0 {
		t.left -= int64(n)
	}
	if n > 0 {
		t.mu.Lock()
		if !t.stopped {
			t.buf.Write(p[:n])
		}
		t.mu.Unlock()
	}
	return n, err
}

func (t *requestTee) Close() error { return t.rc.Close() }

// stop ends counting and capture and reports what they saw. Reads after it
// still pass through, so the captured bytes stay as they are.
func (t *requestTee) stop() (data []byte, total int64, overBudget bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	return t.buf.bytes(), t.buf.total, t.buf.overBudget
}

// release returns the capture storage to its pool; call it after stop.
func (t *requestTee) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.release()
}
