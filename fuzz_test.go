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

// FuzzBodyBufferBudget checks that two buffers sharing a budget, written
// in turns, never reserve more than the budget, hold no more than they
// reserved, keep a prefix of what was written, say when the budget cut
// them, and give every byte back on release.
func FuzzBodyBufferBudget(f *testing.F) {
	f.Add([]byte("hello, world"), uint16(8), uint16(12), uint8(3))
	f.Add(bytes.Repeat([]byte{'x'}, 3000), uint16(2048), uint16(2500), uint8(200))
	f.Add(bytes.Repeat([]byte{'y'}, 1000), uint16(600), uint16(0), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, limit, budget uint16, split uint8) {
		var pool capturePool
		cb := &captureBudget{limit: int64(budget)}
		bufs := []*bodyBuffer{
			{limit: int(limit), pool: &pool, budget: cb},
			{limit: int(limit), pool: &pool, budget: cb},
		}
		step := int(split) + 1
		for i := 0; i < len(data); i += step {
			chunk := data[i:min(i+step, len(data))]
			for _, b := range bufs {
				if n, err := b.Write(chunk); n != len(chunk) || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(chunk))
				}
			}
			if used := cb.used.Load(); used > cb.limit || used != bufs[0].reserved+bufs[1].reserved {
				t.Fatalf("budget used %d of %d; reserved %d + %d", used, cb.limit, bufs[0].reserved, bufs[1].reserved)
			}
		}
		for _, b := range bufs {
			kept := b.bytes()
			if int64(cap(kept)) > b.reserved {
				t.Fatalf("capacity %d past the %d reserved", cap(kept), b.reserved)
			}
			if !bytes.HasPrefix(data, kept) || len(kept) > int(limit) {
				t.Fatalf("kept %d bytes that are not a prefix within the limit %d", len(kept), limit)
			}
			if full := min(len(data), int(limit)); len(kept) < full != b.overBudget {
				t.Fatalf("kept %d of %d bytes, but overBudget is %v", len(kept), full, b.overBudget)
			}
		}
		bufs[0].release()
		bufs[1].release()
		if used := cb.used.Load(); used != 0 {
			t.Fatalf("%d bytes still reserved after release", used)
		}
	})
}

// FuzzStripPrefix checks that StripPrefix never panics, leaves paths without
// the prefix alone, and otherwise yields the target's path joined to a
// stripped path that still starts with a slash. The prefix matches the
// escaped path segment by segment, so an escaped slash never ends one.
func FuzzStripPrefix(f *testing.F) {
	f.Add("/api", "/api/users", "", "/v1")
	f.Add("/api/", "/api", "", "")
	f.Add("/api", "/apix/y", "", "/base/")
	f.Add("/a%2Fb", "/a/b/c", "/a%2Fb/c", "/")
	f.Add("/a", "/a/b/c", "/a%2Fb/c", "/v1")
	f.Add("/api", "/api/x", "/%61pi/x", "/v1")
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

		// The reference: whole segments of the escaped path, split at
		// bare slashes only, each decoding to the prefix's segment.
		esc := in.URL.EscapedPath()
		p := strings.TrimSuffix(prefix, "/")
		psegs, esegs := strings.Split(p, "/"), strings.Split(esc, "/")
		matches := p != "" && len(esegs) >= len(psegs)
		for i := 0; matches && i < len(psegs); i++ {
			dec, err := url.PathUnescape(esegs[i])
			matches = err == nil && dec == psegs[i]
		}
		if !matches {
			if *pr.Out.URL != before {
				t.Fatalf("path %q without prefix %q changed: %q -> %q", esc, prefix, before.Path, pr.Out.URL.Path)
			}
			return
		}
		rest := "/" + strings.Join(esegs[len(psegs):], "/")
		decoded, err := url.PathUnescape(rest)
		if err != nil {
			t.Fatalf("the rest %q of %q does not unescape: %v", rest, esc, err)
		}
		if want := singleJoiningSlash(base, decoded); pr.Out.URL.Path != want {
			t.Fatalf("StripPrefix(%q) of %q onto %q = %q, want %q", prefix, esc, base, pr.Out.URL.Path, want)
		}
		if rest != "/" && !strings.HasSuffix(pr.Out.URL.EscapedPath(), rest) {
			t.Fatalf("StripPrefix(%q) of %q onto %q = %q, which lost the escaping of %q", prefix, esc, base, pr.Out.URL.EscapedPath(), rest)
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
