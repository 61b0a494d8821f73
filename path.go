package tapproxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// An EscapedSlashAction says what the proxy does with a request whose path
// holds an escaped slash or backslash (%2F, %2f, %5C, %5c, or a bare
// backslash, which is relayed as %5C). See [WithEscapedSlashes].
type EscapedSlashAction int

const (
	// KeepEscaped relays escaped slashes and backslashes as the client
	// sent them: they are data within a segment, never a separator, for
	// [StripPrefix] as for the upstream. A dot-segment next to one is
	// still resolved as if it were a separator, so that an upstream that
	// decodes them cannot be led outside the target's base path. This is
	// the default.
	KeepEscaped EscapedSlashAction = iota

	// RejectEscaped answers 400 Bad Request to a request whose path holds
	// an escaped slash or backslash; nothing goes upstream.
	RejectEscaped

	// UnescapeAndRedirect answers 307 Temporary Redirect to a request
	// whose path holds an escaped slash or backslash, with a Location
	// header holding the same path (and query) with each of them turned
	// into '/'; nothing goes upstream. The client, and any cache or
	// access rule in front of the proxy, then sees the path the upstream
	// will serve. A 307 keeps the method and body when the client follows
	// it. A path that would then begin with "//", which a browser reads
	// as another host, is answered 400 instead.
	UnescapeAndRedirect
)

// allowedMethods is the Allow header of the proxy's own answers: the
// methods it relays. CONNECT is not one of them.
const allowedMethods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"

// The causes the proxy wraps in [ErrBadRequest] when it refuses a request.
var (
	errPathAboveRoot = errors.New("request path climbs above /")
	errEscapedSlash  = errors.New("request path holds an escaped slash or backslash")
	errRedirectHost  = errors.New("request path would redirect to another host")
	errConnect       = errors.New("method CONNECT is not supported")
)

// A localAnswer is a response the proxy gives itself, without asking the
// upstream.
type localAnswer struct {
	status   int
	allow    bool   // send the Allow header
	location string // the Location header, if any
	err      error  // why the request was refused; nil if it was not
}

// The answers known in advance, so that refusing costs no allocation.
var (
	answerConnect   = &localAnswer{status: http.StatusMethodNotAllowed, allow: true, err: errConnect}
	answerOptions   = &localAnswer{status: http.StatusOK, allow: true}
	answerAboveRoot = &localAnswer{status: http.StatusBadRequest, err: errPathAboveRoot}
	answerEscaped   = &localAnswer{status: http.StatusBadRequest, err: errEscapedSlash}
	answerOtherHost = &localAnswer{status: http.StatusBadRequest, err: errRedirectHost}
)

// requestScreen is what a proxy checks in a request before anything is
// routed: its request line here, its body's size in bodylimit.go.
type requestScreen struct {
	normalize      bool // resolve dot-segments in request paths
	escapedSlashes EscapedSlashAction
	bodyLimit      int64 // 0: none
}

// newRequestScreen validates c's screening options and returns the screen
// they make.
func newRequestScreen(c *config) (requestScreen, error) {
	var errs []error
	if c.escapedSlashes < KeepEscaped || c.escapedSlashes > UnescapeAndRedirect {
		errs = append(errs, fmt.Errorf("tapproxy: unknown escaped-slash action %d", c.escapedSlashes))
	}
	if c.bodyLimit < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: request body limit %d is negative", c.bodyLimit))
	}
	return requestScreen{normalize: !c.rawPaths, escapedSlashes: c.escapedSlashes, bodyLimit: c.bodyLimit}, errors.Join(errs...)
}

// requestLine looks at the request line: it answers CONNECT and OPTIONS *
// itself, applies the escaped-slash action, and resolves the path's
// dot-segments. It returns the request to proxy, whose path is the one
// every later step sees, or the answer to give instead. A path without
// dot-segments or escaped slashes costs a scan and no allocation.
func (s *requestScreen) requestLine(r *http.Request) (*http.Request, *localAnswer) {
	switch {
	case r.Method == http.MethodConnect:
		// Relaying it as a plain request could make a client take the
		// upstream's 200 for an open tunnel.
		return r, answerConnect
	case r.Method == http.MethodOptions && r.RequestURI == "*":
		// It asks about the server in general, which for the client is
		// the proxy; Go's own server answers it the same way unless
		// told not to.
		return r, answerOptions
	}
	u := r.URL
	if u.Path == "" || u.Path[0] != '/' {
		return r, nil
	}
	escaped := s.escapedSlashes != KeepEscaped && hasEscapedSlash(u)
	if !escaped && (!s.normalize || !hasDotSegment(u.Path)) {
		return r, nil
	}
	esc := u.EscapedPath()
	if s.normalize {
		var ok bool
		if esc, ok = removeDotSegments(esc); !ok {
			return r, answerAboveRoot
		}
	}
	if escaped {
		if s.escapedSlashes == RejectEscaped {
			return r, answerEscaped
		}
		loc := unescapeSlashes(esc)
		if strings.HasPrefix(loc, "//") {
			return r, answerOtherHost
		}
		if u.RawQuery != "" || u.ForceQuery {
			loc += "?" + u.RawQuery
		}
		return r, &localAnswer{status: http.StatusTemporaryRedirect, location: loc}
	}
	// Handlers must not change the server's request: copy what changes.
	out := *u
	setEscapedPath(&out, esc)
	r2 := new(http.Request)
	*r2 = *r
	r2.URL = &out
	return r2, nil
}

// setEscapedPath sets u's path from its escaped form esc, keeping esc as
// the RawPath when plain escaping would differ, so that the upstream gets
// the client's escaping of every byte that was not removed.
func setEscapedPath(u *url.URL, esc string) {
	path, err := url.PathUnescape(esc)
	if err != nil {
		// esc came from EscapedPath, whose escapes are valid.
		path = esc
	}
	u.Path, u.RawPath = path, esc
	if (&url.URL{Path: path}).EscapedPath() == esc {
		u.RawPath = ""
	}
}

// hasDotSegment reports whether the decoded path p has a segment "." or
// "..", splitting at '/' and '\': p is decoded, so %2e, %2F and %5C count.
func hasDotSegment(p string) bool {
	if strings.IndexByte(p, '.') < 0 {
		return false
	}
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' || p[i] == '\\' {
			if s := p[start:i]; s == "." || s == ".." {
				return true
			}
			start = i + 1
		}
	}
	return false
}

// hasEscapedSlash reports whether u's path holds %2F, %5C (in either case)
// or a bare backslash. An escaped slash sets RawPath, since plain escaping
// never writes one; a backslash shows in Path either way.
func hasEscapedSlash(u *url.URL) bool {
	if strings.IndexByte(u.Path, '\\') >= 0 {
		return true
	}
	raw := u.RawPath
	for i := strings.IndexByte(raw, '%'); i >= 0; {
		if separatorLen(raw[i:]) > 0 {
			return true
		}
		j := strings.IndexByte(raw[i+1:], '%')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}

// separatorLen returns the length of the separator s starts with: 1 for
// '/' and '\', 3 for %2F, %2f, %5C and %5c, and 0 if s starts with none.
func separatorLen(s string) int {
	switch {
	case s == "":
		return 0
	case s[0] == '/' || s[0] == '\\':
		return 1
	case len(s) >= 3 && s[0] == '%' &&
		(s[1] == '2' && (s[2] == 'F' || s[2] == 'f') || s[1] == '5' && (s[2] == 'C' || s[2] == 'c')):
		return 3
	}
	return 0
}

// dots returns 1 if seg is the dot-segment ".", 2 if it is "..", with %2e
// or %2E for any dot, and 0 otherwise.
func dots(seg string) int {
	n := 0
	for i := 0; i < len(seg); n++ {
		switch {
		case n == 2:
			return 0
		case seg[i] == '.':
			i++
		case len(seg)-i >= 3 && seg[i] == '%' && seg[i+1] == '2' && (seg[i+2] == 'e' || seg[i+2] == 'E'):
			i += 3
		default:
			return 0
		}
	}
	return n
}

// removeDotSegments resolves the dot-segments of esc, an escaped path that
// starts with '/', as RFC 3986 section 5.2.4 does: empty segments and a
// trailing slash are kept ("/a//b/../c" becomes "/a//c"), which is not what
// path.Clean does. It reports false if the path climbs above '/', which
// the RFC would clamp.
//
// Escaped slashes and backslashes separate segments here, as they would
// for an upstream that decodes them, but are kept as they were written.
// Where segments are removed, the next kept segment takes the separator of
// the first removed one, so the result starts with '/' and a kept segment
// stays behind the separator it had whenever nothing before it was
// removed. Kept segments keep their escaping byte for byte.
func removeDotSegments(esc string) (string, bool) {
	type kept struct {
		at  int    // where it starts in out
		sep string // the separator before it
	}
	stack := make([]kept, 0, 8)
	out := make([]byte, 0, len(esc))
	pending := "" // the separator the next kept segment takes, if any
	for i := 0; i < len(esc); {
		n := separatorLen(esc[i:])
		if n == 0 {
			// Only a path that does not start with a separator gets
			// here, and callers pass none.
			return esc, true
		}
		sep := esc[i : i+n]
		j := i + n
		for j < len(esc) && separatorLen(esc[j:]) == 0 {
			j++
		}
		seg := esc[i+n : j]
		i = j
		switch dots(seg) {
		case 1:
			if pending == "" {
				pending = sep
			}
		case 2:
			if len(stack) == 0 {
				return "", false
			}
			top := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			out = out[:top.at]
			pending = top.sep
		default:
			if pending != "" {
				sep, pending = pending, ""
			}
			stack = append(stack, kept{at: len(out), sep: sep})
			out = append(out, sep...)
			out = append(out, seg...)
		}
	}
	// A path that ends in a dot-segment ends in a slash.
	out = append(out, pending...)
	return string(out), true
}

// unescapeSlashes turns each escaped slash or backslash in esc, and each
// bare backslash, into '/'.
func unescapeSlashes(esc string) string {
	var b strings.Builder
	b.Grow(len(esc))
	for i := 0; i < len(esc); {
		if n := separatorLen(esc[i:]); n > 0 {
			b.WriteByte('/')
			i += n
			continue
		}
		b.WriteByte(esc[i])
		i++
	}
	return b.String()
}

// answer gives the client the proxy's own response a, and records it in
// st as the exchange's response: a synthetic one, with the status and
// headers the client got and no body. A refusal is the exchange's error,
// of kind [ErrBadRequest].
func (p *Proxy) answer(w http.ResponseWriter, r *http.Request, st *exchangeState, a *localAnswer) {
	h := w.Header()
	if a.allow {
		h.Set("Allow", allowedMethods)
	}
	if a.location != "" {
		h.Set("Location", a.location)
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(a.status)
	st.metrics.status = a.status
	if a.err != nil {
		st.err = newKindError(errBadRequest, a.err)
	}
	if st.ex.Request == nil {
		st.ex.Request = r
	}
	st.ex.Response = &http.Response{
		Status:        fmt.Sprintf("%d %s", a.status, http.StatusText(a.status)),
		StatusCode:    a.status,
		Proto:         r.Proto,
		ProtoMajor:    r.ProtoMajor,
		ProtoMinor:    r.ProtoMinor,
		Header:        h.Clone(),
		Body:          http.NoBody,
		ContentLength: 0,
		Request:       r,
	}
}
