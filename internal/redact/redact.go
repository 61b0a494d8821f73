// Package redact hides credentials in header values, one way for the
// observers' view of an exchange, HAR files and cassettes alike: a value
// keeps its shape (the scheme of an Authorization, the names and attributes
// of cookies) but not its secret.
package redact

import (
	"net/http"
	"strings"
)

// Placeholder stands in for a secret.
const Placeholder = "REDACTED"

// Auth keeps the scheme: "Bearer abc" becomes "Bearer REDACTED".
func Auth(v string) string {
	if scheme, _, ok := strings.Cut(v, " "); ok {
		return scheme + " " + Placeholder
	}
	return Placeholder
}

// Cookies keeps the names: "a=1; b=2" becomes "a=REDACTED; b=REDACTED".
func Cookies(v string) string {
	parts := strings.Split(v, ";")
	for i, p := range parts {
		name, _, _ := strings.Cut(p, "=")
		parts[i] = name + "=" + Placeholder
	}
	return strings.Join(parts, ";")
}

// SetCookie keeps the name and the attributes, which are not secret and
// which audits check (Secure, HttpOnly, SameSite).
func SetCookie(v string) string {
	pair, attrs, found := strings.Cut(v, ";")
	name, _, _ := strings.Cut(pair, "=")
	if !found {
		return name + "=" + Placeholder
	}
	return name + "=" + Placeholder + ";" + attrs
}

// RequestHeaders are the request headers that carry credentials.
var RequestHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie"}

// Request redacts h's credential headers in place.
func Request(h http.Header) {
	each(h, "Authorization", Auth)
	each(h, "Proxy-Authorization", Auth)
	each(h, "Cookie", Cookies)
}

// Response redacts h's Set-Cookie headers in place.
func Response(h http.Header) { each(h, "Set-Cookie", SetCookie) }

func each(h http.Header, key string, f func(string) string) {
	for i, v := range h[key] {
		h[key][i] = f(v)
	}
}
