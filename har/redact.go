package har

import "strings"

// redacted stands in for a credential's value, as in the proxy's own
// redaction.
const redacted = "REDACTED"

// Redact hides the credentials in e as the proxy does for observers: the
// Authorization and Proxy-Authorization headers keep only their scheme, and
// cookies, in the Cookie and Set-Cookie headers and in the cookie lists,
// keep their names and attributes but not their values. It changes e in
// place; the lists of an entry from [FromExchange] or [FromParts] are its
// own, so nothing else changes with them.
func Redact(e *Entry) {
	if e == nil {
		return
	}
	redactHeaders(e.Request.Headers)
	redactHeaders(e.Response.Headers)
	for i := range e.Request.Cookies {
		e.Request.Cookies[i].Value = redacted
	}
	for i := range e.Response.Cookies {
		e.Response.Cookies[i].Value = redacted
	}
}

func redactHeaders(hs []NameValue) {
	for i, h := range hs {
		switch {
		case strings.EqualFold(h.Name, "Authorization"), strings.EqualFold(h.Name, "Proxy-Authorization"):
			hs[i].Value = redactAuth(h.Value)
		case strings.EqualFold(h.Name, "Cookie"):
			hs[i].Value = redactCookies(h.Value)
		case strings.EqualFold(h.Name, "Set-Cookie"):
			hs[i].Value = redactSetCookie(h.Value)
		}
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

// redactSetCookie keeps the name and the attributes, which are not secret.
func redactSetCookie(v string) string {
	pair, attrs, found := strings.Cut(v, ";")
	name, _, _ := strings.Cut(pair, "=")
	if !found {
		return name + "=" + redacted
	}
	return name + "=" + redacted + ";" + attrs
}
