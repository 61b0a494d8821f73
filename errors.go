package tapproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
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

// kindError pairs a kind from the list above with the error that caused it.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.kind.Error() + ": " + e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// classify labels err with its kind. clientCtx is the inbound request's
// context: when the client has left, that is why the exchange failed,
// whatever error the upstream leg reports. midBody says the response was
// already streaming, where any other read failure means the upstream broke
// off. Errors of no known kind are returned as they are.
func classify(clientCtx context.Context, err error, midBody bool) error {
	if err == nil {
		return nil
	}
	var kind error
	switch cerr := clientCtx.Err(); {
	case errors.Is(cerr, context.Canceled):
		kind = ErrClientGone
	case cerr != nil || isTimeout(err):
		kind = ErrUpstreamTimeout
	case isDialFailure(err):
		kind = ErrUpstreamUnavailable
	case isMalformed(err):
		kind = ErrUpstreamMalformed
	case midBody || isReset(err):
		kind = ErrUpstreamReset
	default:
		return err
	}
	return &kindError{kind: kind, err: err}
}

// kindOf returns the kind err was classified as, or nil.
func kindOf(err error) error {
	if ke, ok := err.(*kindError); ok {
		return ke.kind
	}
	return nil
}

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
