package har

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tapproxy/tapproxy"
)

// startedLayout is RFC 3339 with milliseconds, as viewers expect.
const startedLayout = "2006-01-02T15:04:05.000Z07:00"

// FromExchange converts one exchange into an entry. It is meant to be called
// inside an observer, while ex is valid; the entry it returns holds its own
// lists and copies of the bodies (its other strings are immutable), so it
// stays valid after the call. It is safe for concurrent use and allocates
// only what the entry holds, reading the body through a pooled buffer.
//
// The request is the one sent upstream; the response is the one the client
// received, with its body decoded through [tapproxy.Exchange.DecodedBody]
// and therefore within the proxy's decode limit. Credentials appear as the
// proxy shows them to observers: redacted unless the proxy was built with
// [tapproxy.WithUnredactedCredentials].
//
// An exchange that got no response has the status the proxy's default error
// handler answers with: 504 for [tapproxy.ErrUpstreamTimeout], 503 for
// [tapproxy.ErrNoUpstream], 0 when the client left, 502 otherwise. Every exchange that did not end cleanly
// carries an [Error].
func FromExchange(ex *tapproxy.Exchange) Entry {
	if ex == nil {
		return FromParts(nil)
	}
	src := source{
		req: ex.Request, res: ex.Response,
		start: ex.Start, tth: ex.TimeToHeaders, dur: ex.Duration, err: ex.Err,
		bodyBytes: ex.BodyBytes, truncated: ex.Truncated, upgraded: ex.Upgraded,
		reqBodyBytes: ex.RequestBodyBytes, reqTruncated: ex.RequestTruncated,
		ex: ex,
	}
	return src.entry()
}

// Parts are the pieces of one exchange that [FromParts] turns into an entry.
// They let exchanges recorded outside an observer call, such as the
// recordings of package tapproxytest, share one conversion with
// [FromExchange].
type Parts struct {
	// Request is the request sent upstream: its Method, URL, Host, Proto
	// and Header are used. Nil gives an entry with an empty request.
	Request *http.Request

	// RequestBody holds the first bytes of the request body, and
	// RequestBodyBytes counts all that were sent. RequestTruncated says
	// RequestBody holds fewer.
	RequestBody      []byte
	RequestBodyBytes int64
	RequestTruncated bool

	// Response is the response the client received: its StatusCode,
	// Proto, Header and Trailer are used. Nil means no response arrived.
	Response *http.Response

	// Body holds the first bytes of the response body as they were
	// delivered, still in their Content-Encoding, and BodyBytes counts all
	// that were. Truncated says Body holds fewer.
	Body      []byte
	BodyBytes int64
	Truncated bool

	// Upgraded reports a 101 Switching Protocols response whose
	// connection was relayed.
	Upgraded bool

	// Start, TimeToHeaders, Duration and Err are as in
	// [tapproxy.Exchange].
	Start         time.Time
	TimeToHeaders time.Duration
	Duration      time.Duration
	Err           error

	// DecodeLimit bounds the decoded body, as [tapproxy.WithDecodeLimit]
	// does for the proxy; gzip, x-gzip and deflate are undone. Zero means
	// [tapproxy.DefaultDecodeLimit].
	DecodeLimit int64
}

// FromParts converts the parts of one exchange into an entry, as
// [FromExchange] does for an exchange. The entry holds its own lists and
// copies of the bodies, so p may change afterwards; nil p gives an empty
// entry. Credentials are converted as they are; use [Redact] to hide them.
func FromParts(p *Parts) Entry {
	if p == nil {
		p = &Parts{}
	}
	src := source{
		req: p.Request, res: p.Response,
		start: p.Start, tth: p.TimeToHeaders, dur: p.Duration, err: p.Err,
		bodyBytes: p.BodyBytes, truncated: p.Truncated, upgraded: p.Upgraded,
		reqBodyBytes: p.RequestBodyBytes, reqTruncated: p.RequestTruncated,
		parts: p,
	}
	return src.entry()
}

// source is what an entry is made from: an exchange or parts.
type source struct {
	req                     *http.Request
	res                     *http.Response
	start                   time.Time
	tth, dur                time.Duration
	err                     error
	bodyBytes, reqBodyBytes int64
	truncated, reqTruncated bool
	upgraded                bool

	ex    *tapproxy.Exchange // one of these two
	parts *Parts
}

func (s *source) entry() Entry {
	e := Entry{
		StartedDateTime: s.start.Format(startedLayout),
		Request:         s.request(),
		Response:        s.response(),
		Timings:         timings(s.tth, s.dur),
	}
	e.Time = e.Timings.Send + e.Timings.Wait + e.Timings.Receive
	if s.req != nil && s.req.URL != nil {
		host := s.req.URL.Hostname()
		if a, err := netip.ParseAddr(host); err == nil {
			if a.Zone() == "" && !a.Is4In6() {
				e.ServerIPAddress = host // already the literal: no allocation
			} else {
				e.ServerIPAddress = a.WithZone("").Unmap().String()
			}
		}
	}
	if s.err != nil {
		e.Error = &Error{Kind: KindOf(s.err), Message: s.err.Error(), BytesDelivered: s.bodyBytes}
	}
	return e
}

// timings splits the exchange's duration: wait until the headers, receive
// after them. The proxy does not see the send, so it is 0; rounding to the
// microsecond keeps the numbers short.
func timings(tth, dur time.Duration) Timings {
	w, d := max(tth.Microseconds(), 0), max(dur.Microseconds(), 0)
	return Timings{
		Blocked: -1, DNS: -1, Connect: -1, SSL: -1,
		Wait:    float64(w) / 1000,
		Receive: float64(max(d-w, 0)) / 1000,
	}
}

func (s *source) request() Request {
	r := Request{HeadersSize: -1, BodySize: s.reqBodyBytes}
	req := s.req
	if req == nil {
		return r
	}
	r.Method = req.Method
	r.HTTPVersion = cmp.Or(req.Proto, "HTTP/1.1")
	if req.URL != nil {
		u := *req.URL
		if u.Host == "" {
			u.Host = req.Host
		}
		if u.Scheme == "" {
			u.Scheme = "http"
		}
		r.URL = u.String()
		r.QueryString = query(req.URL.RawQuery)
	}
	r.Headers = headers(req.Header)
	if cs := req.Header["Cookie"]; len(cs) > 0 {
		n := 0
		for _, v := range cs {
			n += strings.Count(v, ";") + 1
		}
		r.Cookies = make([]Cookie, 0, n)
		for _, v := range cs {
			r.Cookies = appendCookies(r.Cookies, v)
		}
	}
	if s.reqBodyBytes > 0 || len(req.Header["Content-Type"]) > 0 {
		r.PostData = s.postData()
	}
	return r
}

func (s *source) postData() *PostData {
	buf := getBuffer()
	defer putBuffer(buf)
	if s.ex != nil {
		_, _ = buf.ReadFrom(s.ex.RequestBody())
	} else {
		buf.Write(s.parts.RequestBody)
	}
	pd := &PostData{MimeType: s.req.Header.Get("Content-Type")}
	var binary bool
	pd.Text, binary = text(buf.Bytes())
	if binary {
		pd.Encoding = "base64"
	}
	if s.reqTruncated || int64(buf.Len()) < s.reqBodyBytes {
		pd.Truncated = true
		pd.Comment = "capture holds the first " + strconv.Itoa(buf.Len()) + " of " +
			strconv.FormatInt(s.reqBodyBytes, 10) + " bytes"
	}
	return pd
}

func (s *source) response() Response {
	r := Response{HeadersSize: -1, BodySize: s.bodyBytes}
	res := s.res
	if res == nil {
		switch KindOf(s.err) {
		case "", KindClientGone:
			// A client that left before the headers got none.
		case KindUpstreamTimeout:
			r.Status = http.StatusGatewayTimeout
		case KindNoUpstream:
			r.Status = http.StatusServiceUnavailable
		default:
			r.Status = http.StatusBadGateway
		}
		r.StatusText = http.StatusText(r.Status)
		return r
	}
	r.Status = res.StatusCode
	r.StatusText = http.StatusText(res.StatusCode)
	r.HTTPVersion = cmp.Or(res.Proto, "HTTP/1.1")
	r.Headers = headers(res.Header)
	if cs := res.Header["Set-Cookie"]; len(cs) > 0 {
		r.Cookies = make([]Cookie, len(cs))
		for i, v := range cs {
			r.Cookies[i] = setCookie(v)
		}
	}
	r.RedirectURL = res.Header.Get("Location")
	if len(res.Trailer) > 0 {
		r.Trailers = headers(res.Trailer)
	}
	r.Content = s.content()
	return r
}

// content decodes the captured body. The size is the decoded size when the
// whole body was decoded, and the bytes delivered otherwise.
func (s *source) content() Content {
	c := Content{Size: s.bodyBytes, MimeType: s.res.Header.Get("Content-Type")}
	if s.upgraded {
		c.Comment = "upgraded connection: its bytes are not captured"
		return c
	}
	buf := getBuffer()
	defer putBuffer(buf)
	encoded := isEncoded(s.res.Header)
	var err error
	switch {
	case s.ex != nil && encoded:
		_, err = buf.ReadFrom(s.ex.DecodedBody())
	case s.ex != nil:
		_, err = buf.ReadFrom(s.ex.Body()) // the same bytes, for fewer allocations
	case encoded:
		err = decode(buf, s.parts.Body, s.res.Header, s.parts.DecodeLimit, s.truncated)
	default:
		buf.Write(s.parts.Body)
	}
	captured := int64(buf.Len())
	switch {
	case errors.Is(err, tapproxy.ErrCaptureTruncated), err == nil && s.truncated:
		c.Truncated = true
		c.Comment = "capture truncated: " + strconv.FormatInt(s.bodyBytes, 10) + " bytes delivered"
	case errors.Is(err, tapproxy.ErrDecodeLimit):
		c.Truncated = true
		c.Comment = "decoded body cut at the decode limit: " + strconv.FormatInt(s.bodyBytes, 10) + " bytes delivered"
	case err != nil:
		// Unknown or corrupt coding: show the bytes as they came.
		buf.Reset()
		if s.ex != nil {
			_, _ = buf.ReadFrom(s.ex.Body())
		} else {
			buf.Write(s.parts.Body)
		}
		c.Truncated = s.truncated
		c.Comment = "not decoded: " + err.Error()
	case encoded:
		c.Size = captured
		if captured > s.bodyBytes {
			c.Compression = captured - s.bodyBytes
		}
	}
	var binary bool
	c.Text, binary = text(buf.Bytes())
	if binary {
		c.Encoding = "base64"
	}
	return c
}

// text returns b as it is when it is UTF-8, or else in base64.
func text(b []byte) (string, bool) {
	if utf8.Valid(b) {
		return string(b), false
	}
	return base64.StdEncoding.EncodeToString(b), true
}

func isEncoded(h http.Header) bool {
	for _, v := range h["Content-Encoding"] {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return true
			}
		}
	}
	return false
}

// decode undoes the codings of a recorded body into buf, as
// [tapproxy.Exchange.DecodedBody] does for a live one.
func decode(buf *bytes.Buffer, body []byte, h http.Header, limit int64, truncated bool) error {
	if limit <= 0 {
		limit = tapproxy.DefaultDecodeLimit
	}
	var r io.Reader = bytes.NewReader(body)
	codings := h["Content-Encoding"]
	for i := len(codings) - 1; i >= 0; i-- {
		list := strings.Split(codings[i], ",")
		for j := len(list) - 1; j >= 0; j-- {
			var err error
			switch name := strings.ToLower(strings.TrimSpace(list[j])); name {
			case "", "identity":
			case "gzip", "x-gzip":
				r, err = gzip.NewReader(r)
			case "deflate":
				br := bufio.NewReader(r)
				if h, perr := br.Peek(2); perr == nil && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 && h[0]&0x0f == 8 {
					r, err = zlib.NewReader(br)
				} else {
					r = flate.NewReader(br)
				}
			default:
				return errors.New("tapproxy: cannot decode content coding " + strconv.Quote(name))
			}
			if err != nil {
				return decodeErr(err, truncated)
			}
		}
	}
	n, err := buf.ReadFrom(io.LimitReader(r, limit+1))
	switch {
	case err != nil:
		return decodeErr(err, truncated)
	case n > limit:
		buf.Truncate(int(limit))
		return tapproxy.ErrDecodeLimit
	}
	return nil
}

func decodeErr(err error, truncated bool) error {
	if truncated && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)) {
		return tapproxy.ErrCaptureTruncated
	}
	return err
}

// headers lists h one pair per value, sorted by name so that files compare
// well; the values of a name keep their order.
func headers(h http.Header) []NameValue {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	out := make([]NameValue, 0, n)
	for k, vs := range h {
		for _, v := range vs {
			out = append(out, NameValue{Name: k, Value: v})
		}
	}
	slices.SortStableFunc(out, func(a, b NameValue) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// query lists the query's parameters in the order they were sent.
func query(raw string) []NameValue {
	if raw == "" {
		return []NameValue{}
	}
	out := make([]NameValue, 0, strings.Count(raw, "&")+1)
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err == nil {
			k = uk
		}
		if uv, err := url.QueryUnescape(v); err == nil {
			v = uv
		}
		out = append(out, NameValue{Name: k, Value: v})
	}
	return out
}

// appendCookies parses a Cookie header: "a=1; b=2".
func appendCookies(out []Cookie, v string) []Cookie {
	for part := range strings.SplitSeq(v, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, value, _ := strings.Cut(part, "=")
		out = append(out, Cookie{Name: name, Value: value})
	}
	return out
}

// setCookie parses one Set-Cookie header, keeping the attributes HAR has.
func setCookie(v string) Cookie {
	pair, attrs, _ := strings.Cut(v, ";")
	name, value, _ := strings.Cut(strings.TrimSpace(pair), "=")
	c := Cookie{Name: name, Value: value}
	for a := range strings.SplitSeq(attrs, ";") {
		k, val, _ := strings.Cut(strings.TrimSpace(a), "=")
		switch strings.ToLower(k) {
		case "path":
			c.Path = val
		case "domain":
			c.Domain = val
		case "expires":
			if t, err := http.ParseTime(val); err == nil {
				c.Expires = t.UTC().Format(startedLayout)
			}
		case "httponly":
			c.HTTPOnly = true
		case "secure":
			c.Secure = true
		}
	}
	return c
}

// buffers hold bodies while they are checked and turned into text.
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooled keeps the pool from holding on to the rare huge body.
const maxPooled = 1 << 20

func getBuffer() *bytes.Buffer { return buffers.Get().(*bytes.Buffer) }

func putBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooled+bytes.MinRead {
		return
	}
	b.Reset()
	buffers.Put(b)
}
