package har

import (
	"strings"

	"github.com/tapproxy/tapproxy/internal/redact"
)

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
		e.Request.Cookies[i].Value = redact.Placeholder
	}
	for i := range e.Response.Cookies {
		e.Response.Cookies[i].Value = redact.Placeholder
	}
}

func redactHeaders(hs []NameValue) {
	for i, h := range hs {
		switch {
		case strings.EqualFold(h.Name, "Authorization"), strings.EqualFold(h.Name, "Proxy-Authorization"):
			hs[i].Value = redact.Auth(h.Value)
		case strings.EqualFold(h.Name, "Cookie"):
			hs[i].Value = redact.Cookies(h.Value)
		case strings.EqualFold(h.Name, "Set-Cookie"):
			hs[i].Value = redact.SetCookie(h.Value)
		}
	}
}
