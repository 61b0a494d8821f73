package tapproxy

import (
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strings"
)

// A Director rewrites the outbound request of a proxied exchange. Directors
// run inside [httputil.ReverseProxy.Rewrite], after the proxy has routed
// pr.Out to the target with [httputil.ProxyRequest.SetURL]. By then inbound
// Forwarded and X-Forwarded-* headers and hop-by-hop headers are gone, so a
// client cannot remove or spoof a header that a director sets.
//
// A Director must not retain pr or its contents after returning, and must
// not modify pr.In.
type Director func(pr *httputil.ProxyRequest)

// Mutate adapts a function that modifies a plain outbound request, such as
// an existing Director-style hook, to a Director.
func Mutate(f func(out *http.Request)) Director {
	return func(pr *httputil.ProxyRequest) { f(pr.Out) }
}

// SetHeader returns a Director that sets the outbound header key to value,
// replacing any values it had.
func SetHeader(key, value string) Director {
	return func(pr *httputil.ProxyRequest) { pr.Out.Header.Set(key, value) }
}

// DeleteHeader returns a Director that removes the outbound header key.
func DeleteHeader(key string) Director {
	return func(pr *httputil.ProxyRequest) { pr.Out.Header.Del(key) }
}

// PreserveHost returns a Director that sends the inbound Host header
// upstream instead of the target's host.
func PreserveHost() Director {
	return func(pr *httputil.ProxyRequest) { pr.Out.Host = pr.In.Host }
}

// ForwardedHeaders returns a Director that sets X-Forwarded-For,
// X-Forwarded-Host and X-Forwarded-Proto from the inbound request, with
// [httputil.ProxyRequest.SetXForwarded]. Without it none are sent: values a
// client sent are always dropped.
func ForwardedHeaders() Director {
	return func(pr *httputil.ProxyRequest) { pr.SetXForwarded() }
}

// TrustedForwardedHeaders returns a Director for a proxy behind load
// balancers or other proxies. For a request whose peer address is in one of
// trusted, it keeps the inbound X-Forwarded-For, X-Forwarded-Host,
// X-Forwarded-Proto and Forwarded, and appends this hop: the peer's address
// to X-Forwarded-For and a for= element to Forwarded (if the request had
// one). For any other peer it acts as [ForwardedHeaders]: the inbound values
// are dropped and fresh ones set, so clients cannot spoof them. With no
// prefixes, no peer is trusted.
func TrustedForwardedHeaders(trusted ...netip.Prefix) Director {
	trusted = slices.Clone(trusted)
	return func(pr *httputil.ProxyRequest) {
		addr, err := netip.ParseAddrPort(pr.In.RemoteAddr)
		peer := addr.Addr().Unmap()
		if err != nil || !slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(peer) }) {
			pr.SetXForwarded()
			return
		}
		in, out := pr.In.Header, pr.Out.Header
		xff := peer.String()
		if prior := in.Values("X-Forwarded-For"); len(prior) > 0 {
			xff = strings.Join(prior, ", ") + ", " + xff
		}
		out.Set("X-Forwarded-For", xff)
		keepOr(out, in, "X-Forwarded-Host", pr.In.Host)
		proto := "http"
		if pr.In.TLS != nil {
			proto = "https"
		}
		keepOr(out, in, "X-Forwarded-Proto", proto)
		if prior := in.Values("Forwarded"); len(prior) > 0 {
			node := peer.String()
			if peer.Is6() {
				node = `"[` + node + `]"`
			}
			out.Set("Forwarded", strings.Join(prior, ", ")+", for="+node)
		}
	}
}

// keepOr copies header key from in to out, or sets it to def if in has none.
func keepOr(out, in http.Header, key, def string) {
	if v := in.Values(key); len(v) > 0 {
		out[key] = slices.Clone(v)
		return
	}
	out.Set(key, def)
}

// StripPrefix returns a Director that removes prefix from the inbound path
// before it is joined to the target's path: with target http://svc/v1 and
// prefix /api, a request for /api/users goes to /v1/users. The prefix
// matches whole path segments (/api matches /api and /api/x, not /apix),
// and a trailing slash on it is ignored. A path without the prefix passes
// unchanged. StripPrefix derives the path from the inbound request, so it
// replaces path changes made by directors before it.
//
// The prefix is an unescaped path, matched against the path as the client
// escaped it, segment by segment: a segment matches when it decodes to
// the prefix's segment, but an escaped slash (%2F) is part of its
// segment, never a separator. So /api%2Fx does not match /api and goes to
// /v1/api%2Fx. What remains keeps the client's escaping.
func StripPrefix(prefix string) Director {
	prefix = strings.TrimSuffix(prefix, "/")
	return func(pr *httputil.ProxyRequest) {
		rest, ok := cutEscapedPrefix(pr.In.URL.EscapedPath(), prefix)
		if !ok {
			return
		}
		var stripped, base url.URL
		setEscapedPath(&stripped, rest)
		if st := stateFrom(pr.Out.Context()); st != nil {
			base = *st.target
		}
		pr.Out.URL.Path, pr.Out.URL.RawPath = joinURLPath(&base, &stripped)
	}
}

// cutEscapedPrefix returns the escaped path esc without the unescaped
// prefix, keeping its leading slash, if prefix is esc or a run of its
// leading segments. Escapes in esc match the bytes they stand for, except
// that only a bare '/' matches a '/' of the prefix.
func cutEscapedPrefix(esc, prefix string) (string, bool) {
	if prefix == "" {
		return esc, false
	}
	i := 0
	for j := 0; j < len(prefix); j++ {
		if i >= len(esc) {
			return esc, false
		}
		c, n := esc[i], 1
		if c == '%' && i+2 < len(esc) && ishex(esc[i+1]) && ishex(esc[i+2]) {
			c, n = unhex(esc[i+1])<<4|unhex(esc[i+2]), 3
		}
		if c != prefix[j] || c == '/' && n != 1 {
			return esc, false
		}
		i += n
	}
	switch rest := esc[i:]; {
	case rest == "":
		return "/", true
	case rest[0] == '/':
		return rest, true
	}
	return esc, false
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// joinURLPath joins a's and b's paths as [httputil.ProxyRequest.SetURL]
// does, keeping the raw (escaped) forms consistent.
func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return singleJoiningSlash(a.Path, b.Path), ""
	}
	apath, bpath := a.EscapedPath(), b.EscapedPath()
	aslash, bslash := strings.HasSuffix(apath, "/"), strings.HasPrefix(bpath, "/")
	switch {
	case aslash && bslash:
		return a.Path + b.Path[1:], apath + bpath[1:]
	case !aslash && !bslash:
		return a.Path + "/" + b.Path, apath + "/" + bpath
	}
	return a.Path + b.Path, apath + bpath
}

func singleJoiningSlash(a, b string) string {
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}
