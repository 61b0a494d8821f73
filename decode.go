package tapproxy

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"strings"
)

// DefaultDecodeLimit is how many decoded bytes [Exchange.DecodedBody] yields
// at most when [WithDecodeLimit] is not given.
const DefaultDecodeLimit = 1 << 20

var (
	// ErrCaptureTruncated ends a decoded body whose capture was cut off by
	// the capture limit: the bytes before it are all the capture held.
	ErrCaptureTruncated = errors.New("tapproxy: capture truncated; decoded as far as it goes")

	// ErrDecodeLimit ends a decoded body that reached the decode limit, a
	// guard against decompression bombs.
	ErrDecodeLimit = errors.New("tapproxy: decoded body exceeds the decode limit")
)

// viewSettings are how observers see an exchange: the decoders and decode
// limit behind [Exchange.DecodedBody], and whether credentials are shown.
type viewSettings struct {
	decoders        map[string]Decoder // beyond the built-in ones
	decodeLimit     int64
	showCredentials bool
}

// newViewSettings validates c's view options and returns the settings
// they make.
func newViewSettings(c *config) (viewSettings, error) {
	if c.decodeLimit < 0 {
		return viewSettings{}, fmt.Errorf("tapproxy: decode limit %d is negative", c.decodeLimit)
	}
	return viewSettings{decoders: c.decoders, decodeLimit: c.decodeLimit, showCredentials: c.showCredentials}, nil
}

// prepare readies ex for the observers: credentials redacted unless they
// are to be shown, and the decoders in place.
func (v *viewSettings) prepare(ex *Exchange) {
	if !v.showCredentials {
		redactCredentials(ex)
	}
	ex.decoders, ex.decodeLimit = v.decoders, v.decodeLimit
}

// A Decoder undoes one content coding: it returns a reader of the decoded
// bytes of r. The proxy reads at most the decode limit from it, and closes it
// when the observer call ends if it is an [io.Closer].
type Decoder func(r io.Reader) (io.Reader, error)

// builtinDecoders are the codings the standard library can undo.
var builtinDecoders = map[string]Decoder{
	"gzip":   func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) },
	"x-gzip": func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) },
	"deflate": func(r io.Reader) (io.Reader, error) {
		// RFC 9110 deflate is zlib-wrapped, but some servers send raw
		// DEFLATE; the zlib header tells them apart.
		br := bufio.NewReader(r)
		if h, err := br.Peek(2); err == nil && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 && h[0]&0x0f == 8 {
			return zlib.NewReader(br)
		}
		return flate.NewReader(br), nil
	},
}

// DecodedBody returns a reader over the captured response body with its
// Content-Encoding undone: gzip and deflate, plus any coding registered with
// [WithDecoder]. Without a Content-Encoding it reads the capture as is. The
// bytes the client received are never changed; this is a view of the capture.
//
// The reader yields at most the decode limit (see [WithDecodeLimit]) and then
// fails with [ErrDecodeLimit]. If the capture was truncated, the reader
// decodes as far as the capture goes and then fails with
// [ErrCaptureTruncated]. An unknown or corrupt coding fails with an error
// that says so. Like [Exchange.Body], each call starts afresh, and the
// reader is valid only during the observer call.
func (ex *Exchange) DecodedBody() io.Reader {
	var r io.Reader = ex.Body()
	if ex.Response == nil {
		return r
	}
	codings := ex.Response.Header.Values("Content-Encoding")
	// Codings are listed in the order they were applied; undo the last
	// first.
	for i := len(codings) - 1; i >= 0; i-- {
		list := strings.Split(codings[i], ",")
		for j := len(list) - 1; j >= 0; j-- {
			name := strings.ToLower(strings.TrimSpace(list[j]))
			if name == "" || name == "identity" {
				continue
			}
			dec := ex.decoders[name]
			if dec == nil {
				dec = builtinDecoders[name]
			}
			if dec == nil {
				return errReader{fmt.Errorf("tapproxy: cannot decode content coding %q", name)}
			}
			next, err := dec(r)
			if err != nil {
				return errReader{ex.decodeErr(name, err)}
			}
			if c, ok := next.(io.Closer); ok {
				ex.open = append(ex.open, c)
			}
			r = next
		}
	}
	return &decodedReader{r: r, ex: ex, left: ex.decodeLimit}
}

// decodeErr explains a decoding failure: the end of a truncated capture, or
// a corrupt stream.
func (ex *Exchange) decodeErr(name string, err error) error {
	if ex.Truncated && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)) {
		return ErrCaptureTruncated
	}
	return fmt.Errorf("tapproxy: decoding %s: %w", name, err)
}

// decodedReader caps the decoded stream and words its errors.
type decodedReader struct {
	r    io.Reader
	ex   *Exchange
	left int64
	err  error
}

func (d *decodedReader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.left <= 0 {
		// At the limit: a stream that ends exactly here is not over it.
		var probe [1]byte
		if n, err := d.r.Read(probe[:]); n == 0 && err != nil {
			return 0, d.end(err)
		}
		return 0, d.end(ErrDecodeLimit)
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.r.Read(p)
	d.left -= int64(n)
	if err != nil {
		return n, d.end(err)
	}
	return n, nil
}

// end words the error that ends the stream, and keeps it.
func (d *decodedReader) end(err error) error {
	switch {
	case err == io.EOF && d.ex.Truncated:
		// The decoder may stop cleanly at a block boundary, or the body
		// was not encoded at all: the capture still ended early.
		err = ErrCaptureTruncated
	case err != io.EOF && err != ErrDecodeLimit:
		err = d.ex.decodeErr(d.ex.Response.Header.Get("Content-Encoding"), err)
	}
	d.err = err
	return err
}

// closeDecoders closes what DecodedBody opened; the proxy calls it when the
// observers are done.
func (ex *Exchange) closeDecoders() {
	for _, c := range ex.open {
		c.Close()
	}
	clear(ex.open)
	ex.open = ex.open[:0]
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
