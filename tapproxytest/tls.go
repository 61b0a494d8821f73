package tapproxytest

import (
	"crypto/x509"
	"net/http"
)

// WithTLS makes the server's front speak HTTPS, with the certificate that
// [net/http/httptest] uses for 127.0.0.1: [Server.URL] then starts with
// https://, [Server.Client] trusts the certificate, and
// [Server.Certificate] returns it for clients of other kinds, such as gRPC
// with credentials from a cert pool. By default the front speaks plain
// HTTP. It speaks HTTP/1.1 only, unless [WithHTTP2] is given too. Repeating
// it changes nothing. It does not concern the upstream leg: see
// [WithTransport].
func WithTLS() Option {
	return optionFunc(func(c *config) { c.tls = true })
}

// WithHTTP2 makes the server's front speak HTTP/2 as well as HTTP/1.1, so
// that gRPC and other HTTP/2 clients can use it. With [WithTLS] the
// protocol is chosen by ALPN; without it the front speaks HTTP/2 without
// TLS ("h2c", with prior knowledge) and HTTP/1.1 on the same port.
// [Server.Client] speaks HTTP/2 in either case. On HTTP/2, faults that
// break a connection reset the request's stream instead (see
// [CloseConnection]), and [ResetAfter] resets the stream. By default the
// front speaks HTTP/1.1 only. Repeating it changes nothing. It does not
// concern the upstream leg: see [WithTransport].
func WithHTTP2() Option {
	return optionFunc(func(c *config) { c.http2 = true })
}

// startFront starts the front server as the options ask.
func (s *Server) startFront(c *config) {
	switch {
	case c.tls:
		s.front.EnableHTTP2 = c.http2
		s.front.StartTLS()
	case c.http2:
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		s.front.Config.Protocols = &p
		s.front.Start()
		if tr, ok := s.front.Client().Transport.(*http.Transport); ok {
			var cp http.Protocols
			cp.SetUnencryptedHTTP2(true)
			tr.Protocols = &cp
		}
	default:
		s.front.Start()
	}
}

// Certificate returns the certificate of the server's front with
// [WithTLS], or nil without it.
func (s *Server) Certificate() *x509.Certificate { return s.front.Certificate() }
