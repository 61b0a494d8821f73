package tapproxy

import (
	"net/http"
	"strings"
)

// redacted stands in for a credential's value in what observers see.
const redacted = "REDACTED"

// redactCredentials gives observers copies of the request and response whose
// credential headers keep their shape but not their secrets: the scheme of
// Authorization, the names and attributes of cookies. The request and
// response the proxy relays are untouched. When no such header is present
// it costs a few map lookups and allocates nothing.
func redactCredentials(ex *Exchange) {
	if r := ex.Request; r != nil && hasAny(r.Header, "Authorization", "Proxy-Authorization", "Cookie") {
		c := *r
		c.Header = r.Header.Clone()
		redactEach(c.Header, "Authorization", redactAuth)
		redactEach(c.Header, "Proxy-Authorization", redactAuth)
		redactEach(c.Header, "Cookie", redactCookies)
		ex.Request = &c
	}
	if r := ex.Response; r != nil && hasAny(r.Header, "Set-Cookie") {
		c := *r
		c.Header = r.Header.Clone()
		redactEach(c.Header, "Set-Cookie", redactSetCookie)
		ex.Response = &c
	}
}

func hasAny(h http.Header, keys ...string) bool {
	for _, k := range keys {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

func redactEach(h http.Header, key string, f func(string) string) {
	for i, v := range h[key] {
		h[key][i] = f(v)
	}
}

// redactAuth keeps the scheme: "Bearer abc" becomes "Bearer REDACTED".
func redactAuth(v string) string {
	if scheme, _, ok := strings.Cut(v, " "); ok {
		return scheme + " " + redacted
	}
	return redacted
}

// redactCookies keeps the names: "a=1; b=2" becomes "a=REDACTED; b=REDACTED".
func redactCookies(v string) string {
	parts := strings.Split(v, ";")
	for i, p := range parts {
		name, _, _ := strings.Cut(p, "=")
		parts[i] = name + "=" + redacted
	}
	return strings.Join(parts, ";")
}

// redactSetCookie keeps the name and the attributes, which are not secret
// and which audits check (Secure, HttpOnly, SameSite).
func redactSetCookie(v string) string {
	pair, attrs, found := strings.Cut(v, ";")
	name, _, _ := strings.Cut(pair, "=")
	if !found {
		return name + "=" + redacted
	}
	return name + "=" + redacted + ";" + attrs
}
