package tapproxy

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
)

// FuzzBodyBuffer checks that the capped writer keeps exactly the first limit
// bytes of whatever is written, in any split, never fails, and never grows
// past its limit.
func FuzzBodyBuffer(f *testing.F) {
	f.Add([]byte("hello, world"), uint16(5), uint8(3))
	f.Add([]byte{}, uint16(0), uint8(1))
	f.Add(bytes.Repeat([]byte{0xff}, 1000), uint16(512), uint8(7))
	f.Fuzz(func(t *testing.T, data []byte, limit uint16, split uint8) {
		var pool capturePool
		b := bodyBuffer{limit: int(limit), pool: &pool}
		step := int(split) + 1
		for i := 0; i < len(data); i += step {
			chunk := data[i:min(i+step, len(data))]
			if n, err := b.Write(chunk); n != len(chunk) || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(chunk))
			}
		}
		want := data[:min(len(data), int(limit))]
		if !bytes.Equal(b.bytes(), want) {
			t.Fatalf("kept %q, want %q", b.bytes(), want)
		}
		if b.total != int64(len(data)) || b.truncated() != (len(data) > int(limit)) {
			t.Fatalf("total %d truncated %v for %d bytes, limit %d", b.total, b.truncated(), len(data), limit)
		}
		if cap(b.bytes()) > int(limit) {
			t.Fatalf("capacity %d past limit %d", cap(b.bytes()), limit)
		}
		b.release()
	})
}

// FuzzStripPrefix checks that StripPrefix never panics, leaves paths without
// the prefix alone, and otherwise yields the target's path joined to a
// stripped path that still starts with a slash.
func FuzzStripPrefix(f *testing.F) {
	f.Add("/api", "/api/users", "", "/v1")
	f.Add("/api/", "/api", "", "")
	f.Add("/api", "/apix/y", "", "/base/")
	f.Add("/a%2Fb", "/a/b/c", "/a%2Fb/c", "/")
	f.Add("", "/x", "", "/v1")
	f.Fuzz(func(t *testing.T, prefix, path, rawPath, base string) {
		in := &http.Request{URL: &url.URL{Path: path, RawPath: rawPath}, Header: http.Header{}}
		target := &url.URL{Scheme: "http", Host: "upstream", Path: base}
		out := in.Clone(in.Context())
		st := &exchangeState{target: target}
		out = out.WithContext(contextWithState(out.Context(), st))
		pr := &httputil.ProxyRequest{In: in, Out: out}
		pr.SetURL(target)
		before := *pr.Out.URL
		StripPrefix(prefix)(pr)
		p := strings.TrimSuffix(prefix, "/")
		matches := p != "" && (path == p || strings.HasPrefix(path, p+"/"))
		if !matches {
			if *pr.Out.URL != before {
				t.Fatalf("path %q without prefix %q changed: %q -> %q", path, prefix, before.Path, pr.Out.URL.Path)
			}
			return
		}
		rest := strings.TrimPrefix(path, p)
		if rest == "" {
			rest = "/"
		}
		if want := singleJoiningSlash(base, rest); pr.Out.URL.Path != want {
			t.Fatalf("StripPrefix(%q) of %q onto %q = %q, want %q", prefix, path, base, pr.Out.URL.Path, want)
		}
	})
}

// FuzzDecodedBody checks that any captured bytes under any coding decode to
// at most the limit, without panicking, and end in EOF or a worded error.
func FuzzDecodedBody(f *testing.F) {
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(bytes.Repeat([]byte("abc"), 1000))
	w.Close()
	f.Add(gz.Bytes(), "gzip", false)
	f.Add(gz.Bytes()[:40], "gzip", true)
	f.Add([]byte{0x78, 0x9c, 0x4b, 0x4c, 0x4a, 0x06, 0x00, 0x02, 0x4d, 0x01, 0x27}, "deflate", false)
	f.Add([]byte("plain"), "", false)
	f.Add([]byte("x"), "br, gzip", false)
	const limit = 4096
	f.Fuzz(func(t *testing.T, capture []byte, coding string, truncated bool) {
		ex := &Exchange{
			Response:    &http.Response{Header: http.Header{"Content-Encoding": {coding}}},
			Truncated:   truncated,
			body:        capture,
			decodeLimit: limit,
		}
		defer ex.closeDecoders()
		got, err := io.ReadAll(io.LimitReader(ex.DecodedBody(), limit+1))
		if len(got) > limit {
			t.Fatalf("decoded %d bytes past the limit %d", len(got), limit)
		}
		if err != nil && !errors.Is(err, ErrCaptureTruncated) && !errors.Is(err, ErrDecodeLimit) &&
			!strings.HasPrefix(err.Error(), "tapproxy: ") {
			t.Fatalf("unworded error %v", err)
		}
	})
}
