package har_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

func gzipped(tb testing.TB, s string) []byte {
	tb.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, err := zw.Write([]byte(s))
	require.NoError(tb, err)
	require.NoError(tb, zw.Close())
	return b.Bytes()
}

// TestShapes sends each shape of exchange the issue names through a real
// proxy, and checks that the recorded document passes the HAR 1.2 schema and
// the importers' invariants, and that the entry says what happened.
func TestShapes(t *testing.T) {
	binary := []byte{0xff, 0xfe, 0x00, 0x01, 0x80, 'x'}
	const text = `{"hello":"world","n":1}`
	zipped := gzipped(t, strings.Repeat(text, 20))
	arrived := make(chan struct{}, 1)

	tests := []struct {
		name  string
		h     http.HandlerFunc
		opts  []tapproxy.Option
		do    func(t *testing.T, front *httptest.Server)
		check func(t *testing.T, e har.Entry)
	}{{
		name: "GET",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, text)
		},
		do: func(t *testing.T, front *httptest.Server) {
			req, err := http.NewRequest(http.MethodGet, front.URL+"/items?b=2&a=1&a=x%20y", nil)
			require.NoError(t, err)
			req.Header.Add("X-Multi", "one")
			req.Header.Add("X-Multi", "two")
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		},
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, http.MethodGet, e.Request.Method)
			assert.True(t, strings.HasPrefix(e.Request.URL, "http://127.0.0.1:"), e.Request.URL)
			assert.True(t, strings.HasSuffix(e.Request.URL, "/items?b=2&a=1&a=x%20y"), e.Request.URL)
			assert.Equal(t, []har.NameValue{{Name: "b", Value: "2"}, {Name: "a", Value: "1"}, {Name: "a", Value: "x y"}}, e.Request.QueryString)
			assert.Equal(t, []string{"one", "two"}, header(e.Request.Headers, "X-Multi"))
			assert.Nil(t, e.Request.PostData)
			assert.Equal(t, "HTTP/1.1", e.Request.HTTPVersion)
			assert.Equal(t, 200, e.Response.Status)
			assert.Equal(t, "OK", e.Response.StatusText)
			assert.Equal(t, "HTTP/1.1", e.Response.HTTPVersion)
			assert.Equal(t, text, e.Response.Content.Text)
			assert.Empty(t, e.Response.Content.Encoding)
			assert.EqualValues(t, len(text), e.Response.Content.Size)
			assert.EqualValues(t, len(text), e.Response.BodySize)
			assert.Equal(t, "application/json", e.Response.Content.MimeType)
			assert.Equal(t, "127.0.0.1", e.ServerIPAddress)
			assert.Nil(t, e.Error)
		},
	}, {
		name: "POST JSON",
		h: func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusCreated)
		},
		opts: []tapproxy.Option{tapproxy.WithRequestCaptureLimit(1 << 10)},
		do: func(t *testing.T, front *httptest.Server) {
			res, err := front.Client().Post(front.URL+"/items", "application/json", strings.NewReader(text))
			require.NoError(t, err)
			res.Body.Close()
		},
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, http.MethodPost, e.Request.Method)
			require.NotNil(t, e.Request.PostData)
			assert.Equal(t, "application/json", e.Request.PostData.MimeType)
			assert.Equal(t, text, e.Request.PostData.Text)
			assert.False(t, e.Request.PostData.Truncated)
			assert.EqualValues(t, len(text), e.Request.BodySize)
			assert.Equal(t, 201, e.Response.Status)
			assert.Equal(t, "", e.Response.Content.Text)
			assert.EqualValues(t, 0, e.Response.Content.Size)
		},
	}, {
		name: "POST without request capture",
		h: func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
		},
		do: func(t *testing.T, front *httptest.Server) {
			res, err := front.Client().Post(front.URL, "text/plain", strings.NewReader("not captured"))
			require.NoError(t, err)
			res.Body.Close()
		},
		check: func(t *testing.T, e har.Entry) {
			require.NotNil(t, e.Request.PostData)
			assert.Equal(t, "", e.Request.PostData.Text)
			assert.True(t, e.Request.PostData.Truncated)
			assert.NotEmpty(t, e.Request.PostData.Comment)
			assert.EqualValues(t, len("not captured"), e.Request.BodySize)
		},
	}, {
		name: "binary body",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(binary)
		},
		do: func(t *testing.T, front *httptest.Server) { get(t, front.Client(), front.URL) },
		check: func(t *testing.T, e har.Entry) {
			c := e.Response.Content
			assert.Equal(t, "base64", c.Encoding)
			got, err := base64.StdEncoding.DecodeString(c.Text)
			require.NoError(t, err)
			assert.Equal(t, binary, got)
			assert.EqualValues(t, len(binary), c.Size)
		},
	}, {
		name: "gzip body",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(zipped)
		},
		do: func(t *testing.T, front *httptest.Server) {
			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			req.Header.Set("Accept-Encoding", "gzip") // so that the client does not decode
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			got, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			res.Body.Close()
			require.Equal(t, zipped, got)
		},
		check: func(t *testing.T, e har.Entry) {
			c := e.Response.Content
			want := strings.Repeat(text, 20)
			assert.Equal(t, want, c.Text)
			assert.Empty(t, c.Encoding)
			assert.EqualValues(t, len(want), c.Size, "the decoded size")
			assert.EqualValues(t, len(want)-len(zipped), c.Compression)
			assert.EqualValues(t, len(zipped), e.Response.BodySize, "the bytes delivered")
			assert.Equal(t, []string{"gzip"}, header(e.Response.Headers, "Content-Encoding"))
			assert.False(t, c.Truncated)
		},
	}, {
		name: "truncated capture",
		h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, strings.Repeat("a", 1000))
		},
		opts: []tapproxy.Option{tapproxy.WithCaptureLimit(16)},
		do:   func(t *testing.T, front *httptest.Server) { get(t, front.Client(), front.URL) },
		check: func(t *testing.T, e har.Entry) {
			c := e.Response.Content
			assert.Equal(t, strings.Repeat("a", 16), c.Text)
			assert.EqualValues(t, 1000, c.Size, "the real size")
			assert.True(t, c.Truncated)
			assert.NotEmpty(t, c.Comment)
		},
	}, {
		name: "truncated gzip capture",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(zipped)
		},
		opts: []tapproxy.Option{tapproxy.WithCaptureLimit(int64(len(zipped) / 2))},
		do: func(t *testing.T, front *httptest.Server) {
			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			req.Header.Set("Accept-Encoding", "gzip")
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		},
		check: func(t *testing.T, e har.Entry) {
			c := e.Response.Content
			assert.True(t, c.Truncated)
			assert.NotEmpty(t, c.Comment)
			assert.EqualValues(t, len(zipped), c.Size, "the bytes delivered, as the decoded size is not known")
			assert.True(t, strings.HasPrefix(strings.Repeat(text, 20), c.Text), "a decoded prefix: %q", c.Text)
		},
	}, {
		name: "trailers",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "X-Checksum")
			io.WriteString(w, "body")
			w.Header().Set("X-Checksum", "abc123")
		},
		do: func(t *testing.T, front *httptest.Server) { get(t, front.Client(), front.URL) },
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, []har.NameValue{{Name: "X-Checksum", Value: "abc123"}}, e.Response.Trailers)
			assert.Equal(t, "body", e.Response.Content.Text)
		},
	}, {
		name: "upstream timeout",
		h: func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		},
		opts: []tapproxy.Option{tapproxy.WithTransport(&http.Transport{ResponseHeaderTimeout: 50 * time.Millisecond})},
		do: func(t *testing.T, front *httptest.Server) {
			res, _ := get(t, front.Client(), front.URL)
			require.Equal(t, http.StatusGatewayTimeout, res.StatusCode)
		},
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, http.StatusGatewayTimeout, e.Response.Status)
			require.NotNil(t, e.Error)
			assert.Equal(t, har.KindUpstreamTimeout, e.Error.Kind)
			assert.ErrorIs(t, e.Error, tapproxy.ErrUpstreamTimeout)
			assert.NotEmpty(t, e.Error.Message)
		},
	}, {
		name: "client left before the headers",
		h: func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-r.Context().Done()
		},
		do: func(t *testing.T, front *httptest.Server) {
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				<-arrived
				cancel()
			}()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			_, err = front.Client().Do(req)
			require.ErrorIs(t, err, context.Canceled)
		},
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, 0, e.Response.Status)
			require.NotNil(t, e.Error)
			assert.Equal(t, har.KindClientGone, e.Error.Kind)
			assert.EqualValues(t, 0, e.Error.BytesDelivered)
		},
	}, {
		name: "client left after the headers",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Write(bytes.Repeat([]byte("x"), 1024))
			http.NewResponseController(w).Flush()
			<-r.Context().Done()
		},
		do: func(t *testing.T, front *httptest.Server) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			_, err = io.ReadFull(res.Body, make([]byte, 1024))
			require.NoError(t, err)
			cancel()
			res.Body.Close()
		},
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, http.StatusOK, e.Response.Status, "the status it received")
			require.NotNil(t, e.Error)
			assert.Equal(t, har.KindClientGone, e.Error.Kind)
			assert.EqualValues(t, 1024, e.Error.BytesDelivered)
			assert.EqualValues(t, 1024, e.Response.Content.Size)
		},
	}, {
		name: "upgrade",
		h: func(w http.ResponseWriter, r *http.Request) {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tap-echo\r\n\r\n")
			brw.Flush()
			line, _ := brw.ReadString('\n')
			brw.WriteString("echo: " + line)
			brw.Flush()
		},
		do: func(t *testing.T, front *httptest.Server) {
			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "tap-echo")
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
			conn := res.Body.(io.ReadWriteCloser)
			io.WriteString(conn, "ping\n")
			got, _ := io.ReadAll(conn)
			assert.Equal(t, "echo: ping\n", string(got))
			conn.Close()
		},
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, http.StatusSwitchingProtocols, e.Response.Status)
			assert.Equal(t, []string{"tap-echo"}, header(e.Response.Headers, "Upgrade"))
			assert.Equal(t, "", e.Response.Content.Text)
			assert.NotEmpty(t, e.Response.Content.Comment)
			assert.Nil(t, e.Error)
		},
	}, {
		name: "repeated Set-Cookie, redacted",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "session=s3cret; Path=/; HttpOnly")
			w.Header().Add("Set-Cookie", "theme=dark; Domain=example.test; Secure; Expires=Wed, 21 Oct 2037 07:28:00 GMT")
		},
		do: func(t *testing.T, front *httptest.Server) {
			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			req.Header.Set("Cookie", "a=1; b=2")
			req.Header.Set("Authorization", "Bearer t0ken")
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			res.Body.Close()
		},
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, []string{"session=REDACTED; Path=/; HttpOnly",
				"theme=REDACTED; Domain=example.test; Secure; Expires=Wed, 21 Oct 2037 07:28:00 GMT"},
				header(e.Response.Headers, "Set-Cookie"), "separate pairs, never joined")
			assert.Equal(t, []har.Cookie{
				{Name: "session", Value: "REDACTED", Path: "/", HTTPOnly: true},
				{Name: "theme", Value: "REDACTED", Domain: "example.test", Secure: true, Expires: "2037-10-21T07:28:00.000Z"},
			}, e.Response.Cookies)
			assert.Equal(t, []har.Cookie{{Name: "a", Value: "REDACTED"}, {Name: "b", Value: "REDACTED"}}, e.Request.Cookies)
			assert.Equal(t, []string{"Bearer REDACTED"}, header(e.Request.Headers, "Authorization"))
		},
	}, {
		name: "repeated Set-Cookie, unredacted",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "session=s3cret; Path=/")
			w.Header().Add("Set-Cookie", "theme=dark")
		},
		opts: []tapproxy.Option{tapproxy.WithUnredactedCredentials()},
		do: func(t *testing.T, front *httptest.Server) {
			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			req.Header.Set("Cookie", "a=1")
			req.Header.Set("Authorization", "Bearer t0ken")
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			res.Body.Close()
		},
		check: func(t *testing.T, e har.Entry) {
			assert.Equal(t, []string{"session=s3cret; Path=/", "theme=dark"}, header(e.Response.Headers, "Set-Cookie"))
			assert.Equal(t, []har.Cookie{{Name: "session", Value: "s3cret", Path: "/"}, {Name: "theme", Value: "dark"}}, e.Response.Cookies)
			assert.Equal(t, []har.Cookie{{Name: "a", Value: "1"}}, e.Request.Cookies)
			assert.Equal(t, []string{"Bearer t0ken"}, header(e.Request.Headers, "Authorization"))
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := through(t, tt.h, func(front *httptest.Server) { tt.do(t, front) }, tt.opts...)
			got, _ := marshal(t, h)
			require.Len(t, got.Log.Entries, 1)
			tt.check(t, got.Log.Entries[0])
		})
	}
}

// TestUpstreamUnavailable records an exchange whose upstream refused the
// connection: the entry has the 502 the client got, and the error's kind.
func TestUpstreamUnavailable(t *testing.T) {
	up := newUpstream(t, func(http.ResponseWriter, *http.Request) {})
	up.Close() // its port now refuses connections
	rec := har.NewRecorder()
	front := newFront(t, up.URL, tapproxy.WithObserver(rec))
	res, _ := get(t, front.Client(), front.URL+"/down")
	require.Equal(t, http.StatusBadGateway, res.StatusCode)
	front.Close()

	got, _ := marshal(t, rec.HAR())
	require.Len(t, got.Log.Entries, 1)
	e := got.Log.Entries[0]
	assert.Equal(t, http.StatusBadGateway, e.Response.Status)
	assert.Equal(t, "Bad Gateway", e.Response.StatusText)
	require.NotNil(t, e.Error)
	assert.Equal(t, har.KindUpstreamUnavailable, e.Error.Kind)
	assert.ErrorIs(t, e.Error, tapproxy.ErrUpstreamUnavailable)
	assert.True(t, strings.HasSuffix(e.Request.URL, "/down"), e.Request.URL)
}

// TestEmptyLists pins the JSON of empty lists, cache and pages: [] and {},
// never null, which Firefox's importer cannot read.
func TestEmptyLists(t *testing.T) {
	e := har.FromParts(&har.Parts{Request: httptest.NewRequest(http.MethodGet, "http://example.test/", nil), Start: time.Now()})
	e.Request.Headers, e.Request.QueryString = nil, nil // as a hand-built entry might have them
	h := har.HAR{Log: har.Log{Version: har.Version, Creator: har.DefaultCreator, Entries: []har.Entry{e}}}
	_, b := marshal(t, &h)
	for _, want := range []string{`"pages":[]`, `"cache":{}`, `"headers":[]`, `"cookies":[]`, `"queryString":[]`} {
		assert.Contains(t, string(b), want)
	}
	assert.NotContains(t, string(b), "null")

	empty, err := json.Marshal(har.HAR{})
	require.NoError(t, err)
	assert.Contains(t, string(empty), `"entries":[]`)
	assert.NotContains(t, string(empty), "null")

	pd, err := json.Marshal(har.PostData{})
	require.NoError(t, err)
	assert.JSONEq(t, `{"mimeType":"","params":[],"text":""}`, string(pd))
}

func TestFromPartsNil(t *testing.T) {
	e := har.FromParts(nil)
	assert.Equal(t, 0, e.Response.Status)
	assert.Nil(t, e.Error)
	assert.Equal(t, har.FromExchange(nil), e)
}

func TestKindOf(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{io.EOF, har.KindOther},
		{tapproxy.ErrUpstreamReset, har.KindUpstreamReset},
		{tapproxy.ErrUpstreamMalformed, har.KindUpstreamMalformed},
		{tapproxy.ErrUpstreamUnavailable, har.KindUpstreamUnavailable},
		{tapproxy.ErrUpstreamTimeout, har.KindUpstreamTimeout},
		{tapproxy.ErrClientGone, har.KindClientGone},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			assert.Equal(t, tt.want, har.KindOf(tt.err))
			if tt.err != nil && tt.want != har.KindOther {
				e := &har.Error{Kind: tt.want}
				assert.ErrorIs(t, e, tt.err, "the Error matches its sentinel")
				assert.Equal(t, "tapproxy: "+tt.want, e.Error())
			}
		})
	}
}
