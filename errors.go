package tapproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"syscall"
)

// The kinds of failure an exchange can end with. [Exchange.Err] and the error
// passed to the error handler match at most one of them with [errors.Is],
// and still wrap the underlying error for [errors.Is] and [errors.As].
var (
	// ErrUpstreamUnavailable means no connection to the upstream could be
	// made: the dial was refused, the name did not resolve, or the TLS
	// handshake failed.
	ErrUpstreamUnavailable = errors.New("tapproxy: upstream unavailable")

	// ErrUpstreamTimeout means the upstream did not answer in time: the
	// dial, the response headers, or a body read timed out, or the
	// request's deadline passed.
	ErrUpstreamTimeout = errors.New("tapproxy: upstream timeout")

	// ErrUpstreamReset means the upstream broke off: it closed or reset
	// the connection before or while sending the response, or sent fewer
	// body bytes than it declared.
	ErrUpstreamReset = errors.New("tapproxy: upstream reset")

	// ErrUpstreamMalformed means the upstream's response was not valid
	// HTTP.
	ErrUpstreamMalformed = errors.New("tapproxy: malformed upstream response")

	// ErrClientGone means the client went away (canceled the request or
	// closed the connection) before the response was delivered.
	ErrClientGone = errors.New("tapproxy: client gone")

	// ErrNoUpstream means there was no upstream to try: the pool is empty
	// (see [Proxy.SetUpstreams]). The client gets 503 Service Unavailable.
	ErrNoUpstream = errors.New("tapproxy: no upstream")

	// ErrBadRequest means the proxy refused the request as the client sent
	// it and answered it itself, sending nothing upstream: a path that
	// climbs above / (400), an escaped slash under [RejectEscaped] (400)
	// or one that [UnescapeAndRedirect] cannot redirect (400), a CONNECT
	// (405), or a declared body over [WithRequestBodyLimit] (413). A body
	// of unknown length that grew past the limit on its way upstream is of
	// this kind too. For the body limit, the cause is an
	// [*http.MaxBytesError].
	ErrBadRequest = errors.New("tapproxy: bad request")
)

// errKind numbers the kinds of failure; it indexes errorKinds.
type errKind uint8

const (
	errNone errKind = iota
	errUnavailable
	errTimeout
	errReset
	errMalformed
	errClientGone
	errNoUpstream
	errBadRequest
	errOther // a failure of no kind of ours
)

// errorKinds is the one table of the kinds: the sentinel that Exchange.Err
// matches, the error.type the metrics record, and the status the default
// error handler answers with. Adding a kind is adding a row.
var errorKinds = [...]struct {
	sentinel error
	name     string // error.type
	status   int    // 0: nobody reads the answer
}{
	errNone:        {nil, "", 0},
	errUnavailable: {ErrUpstreamUnavailable, "upstream_unavailable", http.StatusBadGateway},
	errTimeout:     {ErrUpstreamTimeout, "upstream_timeout", http.StatusGatewayTimeout},
	errReset:       {ErrUpstreamReset, "upstream_reset", http.StatusBadGateway},
	errMalformed:   {ErrUpstreamMalformed, "upstream_malformed", http.StatusBadGateway},
	// A client that went away has its own error.type, so that alerts on
	// upstream failures can leave it out.
	errClientGone: {ErrClientGone, "client_gone", 0},
	errNoUpstream: {ErrNoUpstream, "no_upstream", http.StatusServiceUnavailable},
	// The proxy answers a bad request itself, with 400, 405 or 413.
	errBadRequest: {ErrBadRequest, "bad_request", http.StatusBadRequest},
	errOther:      {nil, "_OTHER", http.StatusBadGateway},
}

// kindError pairs a kind from the table above with the error that caused
// it.
type kindError struct {
	kind errKind
	err  error
}

func newKindError(k errKind, err error) *kindError { return &kindError{kind: k, err: err} }

func (e *kindError) Error() string {
	return errorKinds[e.kind].sentinel.Error() + ": " + e.err.Error()
}

func (e *kindError) Unwrap() []error { return []error{errorKinds[e.kind].sentinel, e.err} }

// ErrorType returns the error.type value of the error's kind, so that
// [semconv.ErrorType] agrees with the proxy's metrics.
func (e *kindError) ErrorType() string { return errorKinds[e.kind].name }

// classify labels err with its kind. clientCtx is the inbound request's
// context: when the client has left, that is why the exchange failed,
// whatever error the upstream leg reports. midBody says the response was
// already streaming, where any other read failure means the upstream broke
// off. Errors of no known kind are returned as they are.
func classify(clientCtx context.Context, err error, midBody bool) error {
	if _, ok := err.(*kindError); ok || err == nil {
		return err // classified already
	}
	var kind errKind
	switch cerr := clientCtx.Err(); {
	case errors.Is(cerr, context.Canceled):
		kind = errClientGone
	case cerr != nil || isTimeout(err):
		kind = errTimeout
	case isDialFailure(err):
		kind = errUnavailable
	case isMalformed(err):
		kind = errMalformed
	case midBody || isReset(err):
		kind = errReset
	default:
		return err
	}
	return newKindError(kind, err)
}

// errKindOf returns the kind of err: errNone for nil, errOther for an
// error of no kind of ours.
func errKindOf(err error) errKind {
	if err == nil {
		return errNone
	}
	if ke, ok := err.(*kindError); ok {
		return ke.kind
	}
	return errOther
}

// kindOf returns the sentinel of the kind err was classified as, or nil.
func kindOf(err error) error { return errorKinds[errKindOf(err)].sentinel }

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isDialFailure(err error) bool {
	var (
		op   *net.OpError
		dns  *net.DNSError
		cert *tls.CertificateVerificationError
		rec  tls.RecordHeaderError
		alrt tls.AlertError
	)
	return errors.As(err, &op) && op.Op == "dial" ||
		errors.As(err, &dns) || errors.As(err, &cert) ||
		errors.As(err, &rec) || errors.As(err, &alrt)
}

func isReset(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// malformedMarks are the stable parts of net/http's messages for responses
// that are not valid HTTP. Most of those errors have no exported type.
var malformedMarks = []string{
	"malformed HTTP",
	"server response headers exceeded",
	"transfer encoding",
	"Content-Length",
	"trailer key",
	"Trailer key",
}

func isMalformed(err error) bool {
	var pe textproto.ProtocolError
	if errors.As(err, &pe) {
		return true
	}
	msg := err.Error()
	for _, m := range malformedMarks {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return false
}
