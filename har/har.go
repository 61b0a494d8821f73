package har

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/tapproxy/tapproxy"
)

// Version is the HAR format version this package writes.
const Version = "1.2"

// HAR is a whole HAR document: {"log": {...}}.
type HAR struct {
	Log Log `json:"log"`
}

// Log is the root of the exported data. Pages and Entries are written as []
// when empty, never as null: viewers such as Firefox's importer fail on a
// missing list.
type Log struct {
	Version string   `json:"version"`
	Creator Creator  `json:"creator"`
	Browser *Creator `json:"browser,omitempty"`
	Pages   []Page   `json:"pages"`
	Entries []Entry  `json:"entries"`
	Comment string   `json:"comment,omitempty"`
}

// MarshalJSON writes Log with [] for nil lists.
func (l Log) MarshalJSON() ([]byte, error) {
	type plain Log
	p := plain(l)
	p.Pages = nonNil(p.Pages)
	p.Entries = nonNil(p.Entries)
	return marshal(p)
}

// Creator names the application that wrote the log (and, as Log.Browser,
// the browser).
type Creator struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Comment string `json:"comment,omitempty"`
}

// DefaultCreator is the creator this package writes.
var DefaultCreator = Creator{Name: "tapproxy", Version: tapproxy.Version}

// Page is one page of a browser's log. A proxy has no pages, so this
// package writes none; the type lets callers read logs that have them.
type Page struct {
	StartedDateTime string      `json:"startedDateTime"`
	ID              string      `json:"id"`
	Title           string      `json:"title"`
	PageTimings     PageTimings `json:"pageTimings"`
	Comment         string      `json:"comment,omitempty"`
}

// PageTimings are a page's load timings in milliseconds, -1 when unknown.
type PageTimings struct {
	OnContentLoad float64 `json:"onContentLoad"`
	OnLoad        float64 `json:"onLoad"`
	Comment       string  `json:"comment,omitempty"`
}

// Entry is one exchange.
//
// Error is the custom field _error: set when the exchange did not end
// cleanly. Viewers ignore it; tools reading the log back use it to tell a
// 502 the upstream sent from one the proxy made up.
type Entry struct {
	Pageref         string   `json:"pageref,omitempty"`
	StartedDateTime string   `json:"startedDateTime"` // RFC 3339 with milliseconds
	Time            float64  `json:"time"`            // milliseconds: the sum of the Timings that are not -1
	Request         Request  `json:"request"`
	Response        Response `json:"response"`
	Cache           Cache    `json:"cache"`
	Timings         Timings  `json:"timings"`
	ServerIPAddress string   `json:"serverIPAddress,omitempty"` // an IP literal, or absent
	Connection      string   `json:"connection,omitempty"`
	Comment         string   `json:"comment,omitempty"`
	Error           *Error   `json:"_error,omitempty"`
}

// Request is an entry's request, as it was sent upstream.
type Request struct {
	Method      string      `json:"method"`
	URL         string      `json:"url"` // absolute
	HTTPVersion string      `json:"httpVersion"`
	Cookies     []Cookie    `json:"cookies"`
	Headers     []NameValue `json:"headers"`
	QueryString []NameValue `json:"queryString"`
	PostData    *PostData   `json:"postData,omitempty"`
	HeadersSize int64       `json:"headersSize"` // -1: not known
	BodySize    int64       `json:"bodySize"`    // the bytes sent upstream
	Comment     string      `json:"comment,omitempty"`
}

// MarshalJSON writes Request with [] for nil lists.
func (r Request) MarshalJSON() ([]byte, error) {
	type plain Request
	p := plain(r)
	p.Cookies = nonNil(p.Cookies)
	p.Headers = nonNil(p.Headers)
	p.QueryString = nonNil(p.QueryString)
	return marshal(p)
}

// Response is an entry's response, as the client received it.
//
// Trailers is the custom field _trailers: the response's trailers, one pair
// per value, absent when there were none.
type Response struct {
	Status      int         `json:"status"` // 0 when the client left before the headers
	StatusText  string      `json:"statusText"`
	HTTPVersion string      `json:"httpVersion"`
	Cookies     []Cookie    `json:"cookies"`
	Headers     []NameValue `json:"headers"`
	Content     Content     `json:"content"`
	RedirectURL string      `json:"redirectURL"`
	HeadersSize int64       `json:"headersSize"` // -1: not known
	BodySize    int64       `json:"bodySize"`    // the bytes delivered to the client
	Comment     string      `json:"comment,omitempty"`
	Trailers    []NameValue `json:"_trailers,omitempty"`
}

// MarshalJSON writes Response with [] for nil lists.
func (r Response) MarshalJSON() ([]byte, error) {
	type plain Response
	p := plain(r)
	p.Cookies = nonNil(p.Cookies)
	p.Headers = nonNil(p.Headers)
	return marshal(p)
}

// Content is a response body.
//
// Text holds the decoded body; when its bytes are not valid UTF-8 it is
// base64 and Encoding is "base64". Size is the size of the decoded body when
// it is known, otherwise the bytes delivered; it stays the real size when
// the capture was cut short, and then Truncated (the custom field
// _truncated) is true and Comment says why.
type Content struct {
	Size        int64  `json:"size"`
	Compression int64  `json:"compression,omitempty"`
	MimeType    string `json:"mimeType"`
	Text        string `json:"text"`
	Encoding    string `json:"encoding,omitempty"`
	Comment     string `json:"comment,omitempty"`
	Truncated   bool   `json:"_truncated,omitempty"`
}

// PostData is a request body. Text is always present, even when empty.
// HAR 1.2 has no encoding for request bodies, so bytes that are not valid
// UTF-8 are base64 with the custom field _encoding set to "base64". A
// capture cut short sets Truncated (the custom field _truncated) and
// Comment.
type PostData struct {
	MimeType  string  `json:"mimeType"`
	Params    []Param `json:"params"`
	Text      string  `json:"text"`
	Comment   string  `json:"comment,omitempty"`
	Encoding  string  `json:"_encoding,omitempty"`
	Truncated bool    `json:"_truncated,omitempty"`
}

// MarshalJSON writes PostData with [] for nil lists.
func (p PostData) MarshalJSON() ([]byte, error) {
	type plain PostData
	q := plain(p)
	q.Params = nonNil(q.Params)
	return marshal(q)
}

// Param is a posted form parameter. This package keeps bodies in
// PostData.Text and writes no params.
type Param struct {
	Name        string `json:"name"`
	Value       string `json:"value,omitempty"`
	FileName    string `json:"fileName,omitempty"`
	ContentType string `json:"contentType,omitempty"`
	Comment     string `json:"comment,omitempty"`
}

// NameValue is a header, trailer or query parameter. Repeated names stay
// separate pairs, in the order they were sent.
type NameValue struct {
	Name    string `json:"name"`
	Value   string `json:"value"`
	Comment string `json:"comment,omitempty"`
}

// Cookie is a cookie sent in a Cookie header or set by a Set-Cookie header.
type Cookie struct {
	Name     string `json:"name"`
	Value    string `json:"value"`
	Path     string `json:"path,omitempty"`
	Domain   string `json:"domain,omitempty"`
	Expires  string `json:"expires,omitempty"` // RFC 3339
	HTTPOnly bool   `json:"httpOnly,omitempty"`
	Secure   bool   `json:"secure,omitempty"`
	Comment  string `json:"comment,omitempty"`
}

// Cache describes the browser cache's part in an entry. A proxy knows
// nothing of it, so it is written as {}.
type Cache struct {
	BeforeRequest *CacheEntry `json:"beforeRequest,omitempty"`
	AfterRequest  *CacheEntry `json:"afterRequest,omitempty"`
	Comment       string      `json:"comment,omitempty"`
}

// CacheEntry is the state of a cache entry before or after the request.
type CacheEntry struct {
	Expires    string `json:"expires,omitempty"`
	LastAccess string `json:"lastAccess"`
	ETag       string `json:"eTag"`
	HitCount   int    `json:"hitCount"`
	Comment    string `json:"comment,omitempty"`
}

// Timings are an entry's phases in milliseconds; -1 means the phase does not
// apply or is not known. Send, Wait and Receive are never negative: Wait is
// the time until the response headers arrived ([tapproxy.Exchange]'s
// TimeToHeaders), and Receive the rest of the exchange's duration.
type Timings struct {
	Blocked float64 `json:"blocked"`
	DNS     float64 `json:"dns"`
	Connect float64 `json:"connect"`
	Send    float64 `json:"send"`
	Wait    float64 `json:"wait"`
	Receive float64 `json:"receive"`
	SSL     float64 `json:"ssl"`
	Comment string  `json:"comment,omitempty"`
}

// Error is the custom field _error of an entry whose exchange did not end
// cleanly.
//
// Kind is one of the Kind constants. BytesDelivered counts the response
// body bytes the client received before the failure, so that a replay can
// cut the body at the same place. Message is the error's text.
//
// *Error is an error that matches the tapproxy sentinel of its kind with
// [errors.Is], such as [tapproxy.ErrUpstreamReset].
type Error struct {
	Kind           string `json:"kind"`
	Message        string `json:"message"`
	BytesDelivered int64  `json:"bytesDelivered"`
}

// The kinds of Error, named as the proxy's error.type metric attribute
// names them.
const (
	KindUpstreamUnavailable = "upstream_unavailable"
	KindUpstreamTimeout     = "upstream_timeout"
	KindUpstreamReset       = "upstream_reset"
	KindUpstreamMalformed   = "upstream_malformed"
	KindClientGone          = "client_gone"
	KindNoUpstream          = "no_upstream"
	KindBadRequest          = "bad_request"
	KindOther               = "_OTHER"
)

// kinds pairs each kind with its sentinel; adding a kind is one row.
var kinds = [...]struct {
	name string
	err  error
}{
	{KindUpstreamUnavailable, tapproxy.ErrUpstreamUnavailable},
	{KindUpstreamTimeout, tapproxy.ErrUpstreamTimeout},
	{KindUpstreamReset, tapproxy.ErrUpstreamReset},
	{KindUpstreamMalformed, tapproxy.ErrUpstreamMalformed},
	{KindClientGone, tapproxy.ErrClientGone},
	{KindNoUpstream, tapproxy.ErrNoUpstream},
	{KindBadRequest, tapproxy.ErrBadRequest},
}

// KindOf returns the Kind of err: "" for nil, KindOther for an error of no
// known kind.
func KindOf(err error) string {
	if err == nil {
		return ""
	}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return KindOther
}

// Error returns the message, or the kind when there is none.
func (e *Error) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return "tapproxy: " + e.Kind
}

// Unwrap returns the tapproxy sentinel of e's kind, or nil.
func (e *Error) Unwrap() error {
	for _, k := range kinds {
		if k.name == e.Kind {
			return k.err
		}
	}
	return nil
}

// marshal is json.Marshal without HTML escaping, so that URLs and bodies
// keep their & < > as they are.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
