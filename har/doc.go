// Package har turns the exchanges a [tapproxy.Proxy] relays into HAR 1.2
// (HTTP Archive) documents, the format every browser's network panel opens.
//
// The types follow the HAR 1.2 specification, written so that Chrome's and
// Firefox's importers and the HAR 1.2 JSON schema accept them: lists are
// never null, repeated headers stay separate pairs, and text bodies stay
// text. Custom fields start with an underscore: _error, _truncated,
// _trailers and _encoding.
package har
