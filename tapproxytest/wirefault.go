package tapproxytest

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"

	"github.com/tapproxy/tapproxy"
)

// The faults below break the client's connection itself, as WireMock's
// CONNECTION_RESET_BY_PEER, EMPTY_RESPONSE, MALFORMED_RESPONSE_CHUNK and
// RANDOM_DATA_THEN_CLOSE do. None contacts the upstream. Each reads the
// request body first, up to maxDrain bytes, so that the recorder sees it
// and so that closing the connection sends a FIN: closing a socket with
// unread bytes makes the kernel send a RST instead. Delays apply first.
//
// On HTTP/1 the server takes the connection over from net/http. An HTTP/2
// connection carries other streams and cannot be taken over: there each of
// these faults resets the request's stream instead (RST_STREAM), after the
// response headers for MalformedChunk.
//
// Go's client re-sends an idempotent request (GET, HEAD, OPTIONS, TRACE,
// or any with an Idempotency-Key header, and no body or a replayable one)
// on a new connection when a reused connection fails before the first byte
// of the response, as it does under CloseConnection, ResetConnection or
// Garbage. The code under test never sees such a failure; the [Recorder]
// sees both attempts. A one-shot fault, such as CloseConnection().On(Nth(2))
// on a GET over a kept-alive connection, then seems to have no effect. To
// see the failure, send over a new connection (a client whose transport
// sets DisableKeepAlives, or the first request of a fresh client), use a
// method that is not idempotent, or fail more attempts than the client
// retries, as with FirstN(2).

// maxDrain bounds how much request body a connection fault reads before it
// acts.
const maxDrain = 1 << 20

// garbageLen is how many random bytes Garbage sends.
const garbageLen = 64

// malformedChunkResponse is what MalformedChunk sends: a 200 whose chunked
// body starts with a size line that is not hexadecimal.
const malformedChunkResponse = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Transfer-Encoding: chunked\r\n" +
	"\r\n" +
	"zz\r\nnot a chunk\r\n"

// CloseConnection returns a Fault that closes the client's connection
// before any byte of the response: the request body is read (up to 1 MiB),
// then the connection ends with a FIN, not a RST. A Go client gets
// [io.EOF] (see the note on re-sent requests above). The exchange is
// recorded with no status, and an Err that names the fault.
func CloseConnection() Fault {
	return Fault{name: "close-connection", kind: kindCloseConn}
}

// ResetConnection returns a Fault that resets the client's connection with
// a TCP RST (SO_LINGER 0) before the status line: a Go client gets
// "connection reset by peer" ([syscall.ECONNRESET]). The request body is
// read first, up to 1 MiB. The exchange is recorded with no status, and an
// Err that names the fault. [ResetAfter] resets later, mid-body.
func ResetConnection() Fault {
	return Fault{name: "reset-connection", kind: kindResetConn}
}

// MalformedChunk returns a Fault that sends a 200 with chunked framing, then
// bytes that are not a chunk, then closes the connection: a Go client gets
// the response headers, and then reading the body fails. The request body
// is read first, up to 1 MiB. The exchange is recorded with no status, and
// an Err that names the fault.
func MalformedChunk() Fault {
	return Fault{name: "malformed-chunk", kind: kindMalformedChunk}
}

// Garbage returns a Fault that sends 64 random bytes and a CRLF, where the
// status line should be, then closes the connection: a Go client gets
// "malformed HTTP response". The bytes contain no space, CR or LF, so that
// every HTTP/1 parser rejects them. [WithSeed] makes them reproducible. The
// request body is read first, up to 1 MiB. The exchange is recorded with no
// status, and an Err that names the fault.
func Garbage() Fault {
	return Fault{name: "garbage", kind: kindGarbage}
}

// wireError is what the fault transport returns for a connection fault; the
// server's error handler then acts on the client's connection.
type wireError struct {
	kind    faultKind
	name    string
	garbage []byte
}

func (e *wireError) Error() string {
	return "tapproxytest: connection broken by fault " + e.name
}

// onError is the proxy's error handler: it carries out connection faults,
// and answers other failures as the proxy would by default.
func (s *Server) onError(w http.ResponseWriter, r *http.Request, err error) {
	var we *wireError
	if errors.As(err, &we) {
		s.breakConn(w, r, we)
		return
	}
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, tapproxy.ErrClientGone):
		return // nobody will read it
	case errors.Is(err, tapproxy.ErrUpstreamTimeout):
		code = http.StatusGatewayTimeout
	}
	s.logger().LogAttrs(r.Context(), slog.LevelError, "tapproxy: upstream error",
		slog.String("method", r.Method), slog.String("url", r.URL.Redacted()), slog.Any("error", err))
	w.WriteHeader(code)
}

// breakConn carries out a connection fault on the client's connection.
func (s *Server) breakConn(w http.ResponseWriter, r *http.Request, we *wireError) {
	rc := http.NewResponseController(w)
	conn, _, err := rc.Hijack()
	if err != nil {
		// HTTP/2: reset the stream once the proxy is done with it.
		if t := tagFrom(r.Context()); t != nil {
			t.abort = true
		}
		if we.kind == kindMalformedChunk {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusOK)
			_ = rc.Flush()
		}
		return
	}
	switch we.kind {
	case kindResetConn:
		// Close beneath TLS: its close_notify alert would read as a
		// clean EOF before the RST.
		if tc, ok := conn.(*tls.Conn); ok {
			conn = tc.NetConn()
		}
		setLingerZero(conn)
	case kindGarbage:
		_, _ = conn.Write(append(we.garbage, '\r', '\n'))
	case kindMalformedChunk:
		_, _ = conn.Write([]byte(malformedChunkResponse))
	}
	_ = conn.Close()
}

// setLingerZero makes closing c send a RST.
func setLingerZero(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}
