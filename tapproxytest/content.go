package tapproxytest

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/tapproxy/tapproxy/har"
)

// A cassette stores a response body decoded when it can, so that the file
// is readable and diffs well, and encodes it again on replay.

// storeContent puts the body in the content: decoded when its codings are
// ones the standard library undoes and it is complete, or else as it came,
// in base64.
func storeContent(ct *har.Content, h http.Header, raw []byte, complete bool) {
	var codings []string
	for _, v := range h.Values("Content-Encoding") {
		codings = appendCodings(codings, v)
	}
	ct.Comment, ct.Truncated, ct.Compression = "", false, 0
	if len(codings) == 0 {
		ct.Text, ct.Encoding = text(raw)
		ct.Size = int64(len(raw))
		return
	}
	if complete {
		if decoded, err := decode(raw, codings); err == nil {
			ct.Text, ct.Encoding = text(decoded)
			ct.Size = int64(len(decoded))
			return
		}
	}
	ct.Text, ct.Encoding = base64.StdEncoding.EncodeToString(raw), "base64"
	ct.Size = int64(len(raw))
	ct.Comment = rawComment
}

func contentCodings(hs []har.NameValue) []string {
	var codings []string
	for _, nv := range hs {
		if strings.EqualFold(nv.Name, "Content-Encoding") {
			codings = appendCodings(codings, nv.Value)
		}
	}
	return codings
}

func appendCodings(codings []string, v string) []string {
	for c := range strings.SplitSeq(v, ",") {
		if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
			codings = append(codings, c)
		}
	}
	return codings
}

// maxDecoded bounds a decoded body, against a recorded decompression bomb.
const maxDecoded = 256 << 20

// decode undoes codings, listed in the order they were applied.
func decode(b []byte, codings []string) ([]byte, error) {
	for i := len(codings) - 1; i >= 0; i-- {
		var r io.Reader
		var err error
		switch codings[i] {
		case "gzip", "x-gzip":
			r, err = gzip.NewReader(bytes.NewReader(b))
		case "deflate":
			// HTTP's deflate is zlib; some servers send raw deflate.
			if r, err = zlib.NewReader(bytes.NewReader(b)); err != nil {
				r, err = flate.NewReader(bytes.NewReader(b)), nil
			}
		default:
			return nil, fmt.Errorf("tapproxytest: cannot decode content coding %q", codings[i])
		}
		if err != nil {
			return nil, err
		}
		out, err := io.ReadAll(io.LimitReader(r, maxDecoded+1))
		if err != nil {
			return nil, err
		}
		if len(out) > maxDecoded {
			return nil, errors.New("tapproxytest: decoded body too large")
		}
		b = out
	}
	return b, nil
}

// encode applies codings in order.
func encode(b []byte, codings []string) ([]byte, error) {
	for _, c := range codings {
		var buf bytes.Buffer
		var w io.WriteCloser
		switch c {
		case "gzip", "x-gzip":
			w = gzip.NewWriter(&buf)
		case "deflate":
			w = zlib.NewWriter(&buf)
		default:
			return nil, fmt.Errorf("tapproxytest: cannot encode content coding %q", c)
		}
		if _, err := w.Write(b); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		b = buf.Bytes()
	}
	return b, nil
}

// text returns b as HAR text: as it is when it is UTF-8, else in base64.
func text(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

func textBytes(s, encoding string) ([]byte, error) {
	if encoding == "base64" {
		return base64.StdEncoding.DecodeString(s)
	}
	return []byte(s), nil
}
