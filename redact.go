package tapproxy

import (
	"net/http"

	"github.com/tapproxy/tapproxy/internal/redact"
)

// redactCredentials gives observers copies of the request and response whose
// credential headers keep their shape but not their secrets: the scheme of
// Authorization, the names and attributes of cookies. The request and
// response the proxy relays are untouched. When no such header is present
// it costs a few map lookups and allocates nothing.
func redactCredentials(ex *Exchange) {
	if r := ex.Request; r != nil && hasAny(r.Header, redact.RequestHeaders...) {
		c := *r
		c.Header = r.Header.Clone()
		redact.Request(c.Header)
		ex.Request = &c
	}
	if r := ex.Response; r != nil && hasAny(r.Header, "Set-Cookie") {
		c := *r
		c.Header = r.Header.Clone()
		redact.Response(c.Header)
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
