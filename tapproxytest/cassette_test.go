package tapproxytest_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
	"github.com/tapproxy/tapproxy/tapproxytest"
)

// seen is what a client saw of one response.
type seen struct {
	Status  int
	Header  http.Header
	Body    []byte
	Trailer http.Header
	Err     string
}

// hopByHop are the headers that may differ between a recorded and a
// replayed response, because each connection has its own.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te", "Trailer"}

// call sends one request through c and returns what it saw.
func call(tb testing.TB, c *http.Client, method, u, body string, h http.Header) seen {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(waitCtx(tb), method, u, rd)
	require.NoError(tb, err)
	for k, vs := range h {
		req.Header[k] = vs
	}
	res, err := c.Do(req)
	if err != nil {
		return seen{Err: err.Error()}
	}
	defer res.Body.Close()
	s := seen{Status: res.StatusCode, Header: res.Header.Clone()}
	s.Body, err = io.ReadAll(res.Body)
	if err != nil {
		s.Err = err.Error()
	}
	s.Trailer = res.Trailer
	for _, k := range hopByHop {
		s.Header.Del(k)
	}
	return s
}

// offline is an upstream that fails the test if it is contacted.
func offline(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the upstream was contacted in replay: %s %s", r.Method, r.URL)
		w.WriteHeader(http.StatusTeapot)
	})
}

// recordWith runs f against a recording server in front of h and writes the
// cassette at path; it returns what the server reported through Errorf.
func recordWith(t *testing.T, h http.Handler, path string, f func(srv *tapproxytest.Server), opts ...tapproxytest.CassetteOption) []string {
	t.Helper()
	tb := &fakeTB{}
	srv := tapproxytest.NewServer(tb, h, tapproxytest.WithCassette(path, append([]tapproxytest.CassetteOption{tapproxytest.WithMode(tapproxytest.Record)}, opts...)...))
	require.NotNil(t, srv, "%v", tb.fatals)
	f(srv)
	tb.finish()
	require.Empty(t, tb.fatals)
	return tb.allErrors()
}

// replayWith starts a replaying server with no reachable upstream.
func replayWith(t *testing.T, path string, opts ...tapproxytest.CassetteOption) (*tapproxytest.Server, *fakeTB) {
	t.Helper()
	tb := &fakeTB{}
	t.Cleanup(tb.finish)
	srv := tapproxytest.NewServer(tb, offline(t), tapproxytest.WithCassette(path, opts...))
	require.NotNil(t, srv, "%v", tb.fatals)
	return srv, tb
}

func readCassette(t *testing.T, path string) (har.HAR, string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var h har.HAR
	require.NoError(t, json.Unmarshal(data, &h))
	return h, string(data)
}

func gzipped(s string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = io.WriteString(zw, s)
	_ = zw.Close()
	return b.Bytes()
}

// apiUpstream serves a small API with the shapes a cassette must keep.
func apiUpstream(binary []byte) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Add("Set-Cookie", "a=1; Path=/")
		w.Header().Add("Set-Cookie", "b=2; Path=/")
		fmt.Fprintf(w, `{"id":%q,"q":%q}`, r.PathValue("id"), r.URL.RawQuery)
	})
	mux.HandleFunc("POST /users", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"created":%s}`, body)
	})
	mux.HandleFunc("GET /gzip", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Type", "text/plain")
		w.Write(gzipped(strings.Repeat("compressible text ", 50)))
	})
	mux.HandleFunc("GET /brotli", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "br")
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte{0x1b, 0x03, 0x00, 0xf8, 0xa5, 0x40, 0x02}) // not decodable here
	})
	mux.HandleFunc("GET /binary", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(binary)
	})
	mux.HandleFunc("GET /trailers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "with trailers")
		w.Header().Set("X-Checksum", "abc123")
	})
	mux.HandleFunc("GET /empty", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// rawClient does not ask for gzip, so that it sees bodies as sent.
func rawClient(srv *tapproxytest.Server) *http.Client {
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.DisableCompression = true
	return &http.Client{Transport: tr}
}

func TestCassetteRecordThenReplay(t *testing.T) {
	binary := make([]byte, 4096)
	_, _ = rand.Read(binary)
	path := filepath.Join(t.TempDir(), "api.har")
	type step struct{ method, path, body string }
	steps := []step{
		{"GET", "/users/1?b=2&a=1", ""},
		{"POST", "/users", `{"name":"ann"}`},
		{"GET", "/gzip", ""},
		{"GET", "/brotli", ""},
		{"GET", "/binary", ""},
		{"GET", "/trailers", ""},
		{"GET", "/empty", ""},
	}
	run := func(srv *tapproxytest.Server) []seen {
		var out []seen
		for _, c := range []*http.Client{srv.Client(), rawClient(srv)} {
			for _, s := range steps {
				out = append(out, call(t, c, s.method, srv.URL+s.path, s.body, nil))
			}
		}
		return out
	}
	var recorded []seen
	errs := recordWith(t, apiUpstream(binary), path, func(srv *tapproxytest.Server) { recorded = run(srv) })
	require.Empty(t, errs)

	srv, tb := replayWith(t, path)
	replayed := run(srv)
	require.Len(t, replayed, len(recorded))
	for i := range recorded {
		// Set-Cookie is redacted in the file, so it is replayed redacted.
		if len(recorded[i].Header.Values("Set-Cookie")) > 0 {
			assert.Equal(t, []string{"a=REDACTED; Path=/", "b=REDACTED; Path=/"}, replayed[i].Header.Values("Set-Cookie"))
		}
		recorded[i].Header.Del("Set-Cookie")
		replayed[i].Header.Del("Set-Cookie")
		assert.Equal(t, recorded[i], replayed[i], "response %d (%s %s)", i, steps[i%len(steps)].method, steps[i%len(steps)].path)
	}
	assert.Equal(t, binary, replayed[4].Body, "binary bodies come back byte-exact")
	assert.Equal(t, "abc123", replayed[5].Trailer.Get("X-Checksum"))
	assert.Equal(t, strconv.Itoa(len(replayed[len(steps)+2].Body)), replayed[len(steps)+2].Header.Get("Content-Length"),
		"the gzip body is encoded again, under a recomputed Content-Length")
	assert.Empty(t, tb.allErrors())
}

func TestCassetteEncodings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "enc.har")
	plain := strings.Repeat("compressible text ", 50)
	require.Empty(t, recordWith(t, apiUpstream(nil), path, func(srv *tapproxytest.Server) {
		call(t, rawClient(srv), "GET", srv.URL+"/gzip", "", nil)
		call(t, rawClient(srv), "GET", srv.URL+"/brotli", "", nil)
	}))

	h, _ := readCassette(t, path)
	require.Len(t, h.Log.Entries, 2)
	gz, br := h.Log.Entries[0].Response.Content, h.Log.Entries[1].Response.Content
	assert.Equal(t, plain, gz.Text, "gzip is stored decoded")
	assert.Empty(t, gz.Encoding)
	assert.EqualValues(t, len(plain), gz.Size)
	assert.Equal(t, "base64", br.Encoding, "an encoding the standard library cannot undo is kept in base64")
	assert.Equal(t, "GwMA+KVAAg==", br.Text)

	srv, _ := replayWith(t, path)
	got := call(t, rawClient(srv), "GET", srv.URL+"/gzip", "", nil)
	assert.Equal(t, "gzip", got.Header.Get("Content-Encoding"))
	zr, err := gzip.NewReader(bytes.NewReader(got.Body))
	require.NoError(t, err)
	unzipped, err := io.ReadAll(zr)
	require.NoError(t, err)
	assert.Equal(t, plain, string(unzipped))

	got = call(t, rawClient(srv), "GET", srv.URL+"/brotli", "", nil)
	assert.Equal(t, "br", got.Header.Get("Content-Encoding"))
	assert.Equal(t, []byte{0x1b, 0x03, 0x00, 0xf8, 0xa5, 0x40, 0x02}, got.Body)
	assert.Equal(t, "7", got.Header.Get("Content-Length"))
}

func TestCassetteFIFOThenMiss(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo.har")
	n := 0
	counter := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		fmt.Fprintf(w, "response %d", n)
	})
	require.Empty(t, recordWith(t, counter, path, func(srv *tapproxytest.Server) {
		for range 3 {
			call(t, srv.Client(), "GET", srv.URL+"/next", "", nil)
		}
	}))

	srv, tb := replayWith(t, path)
	for i := 1; i <= 3; i++ {
		assert.Equal(t, fmt.Sprintf("response %d", i), string(call(t, srv.Client(), "GET", srv.URL+"/next", "", nil).Body))
	}
	fourth := call(t, srv.Client(), "GET", srv.URL+"/next", "", nil)
	assert.Equal(t, http.StatusBadGateway, fourth.Status)
	assert.Equal(t, "miss", fourth.Header.Get("Tapproxy-Replay"))
	assert.Contains(t, string(fourth.Body), "already replayed")
	tb.finish()
	assert.Len(t, tb.allErrors(), 1)
}

func TestCassetteConcurrentDistinctRequests(t *testing.T) {
	const n = 50
	path := filepath.Join(t.TempDir(), "many.har")
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "for "+r.URL.Query().Get("i"))
	})
	parallel := func(srv *tapproxytest.Server) []seen {
		out := make([]seen, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				out[i] = call(t, srv.Client(), "GET", srv.URL+"/item?i="+strconv.Itoa(i), "", nil)
			})
		}
		wg.Wait()
		return out
	}
	require.Empty(t, recordWith(t, echo, path, func(srv *tapproxytest.Server) { parallel(srv) }))

	srv, tb := replayWith(t, path)
	for i, s := range parallel(srv) {
		assert.Equal(t, http.StatusOK, s.Status)
		assert.Equal(t, "for "+strconv.Itoa(i), string(s.Body))
	}
	tb.finish()
	assert.Empty(t, tb.allErrors())
}

func TestCassetteMiss(t *testing.T) {
	path := filepath.Join(t.TempDir(), "miss.har")
	require.Empty(t, recordWith(t, apiUpstream(nil), path, func(srv *tapproxytest.Server) {
		call(t, srv.Client(), "GET", srv.URL+"/users/1?a=1", "", nil)
		call(t, srv.Client(), "POST", srv.URL+"/users", `{"name":"ann"}`, nil)
	}))

	srv, tb := replayWith(t, path)
	got := call(t, srv.Client(), "GET", srv.URL+"/users/2?a=1", "", nil)
	assert.Equal(t, http.StatusBadGateway, got.Status)
	assert.Equal(t, "miss", got.Header.Get("Tapproxy-Replay"))
	report := string(got.Body)
	for _, want := range []string{
		"tapproxytest: replay miss in cassette " + path,
		`path:    "/users/2"`,
		"nearest recorded entries (of 2)",
		"entry 0 (unused)",
		`path:    "/users/1", not "/users/2"`,
		"method:  same",
		"query:   same",
		`method:  "POST", not "GET"`,
	} {
		assert.Contains(t, report, want)
	}
	assert.Less(t, strings.Index(report, "entry 0"), strings.Index(report, "entry 1"), "the nearest comes first")

	ex := exchange(t, srv, 1)
	assert.Equal(t, http.StatusBadGateway, ex.Response.StatusCode)
	assert.ErrorIs(t, ex.Err, tapproxytest.ErrReplayMiss)
	assert.Equal(t, report, ex.Err.Error())

	assert.Empty(t, tb.allErrors(), "the test fails at cleanup, not before")
	tb.finish()
	errs := tb.allErrors()
	require.Len(t, errs, 1)
	assert.Equal(t, report, errs[0], "the same text as the 502's body")
}

func TestCassetteSecrets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret.har")
	const token, cookie, setCookie = "Bearer s3cr3t-token", "sid=s3cr3t-cookie", "session=s3cr3t-set; Path=/; HttpOnly"
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Set-Cookie", setCookie)
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get("Cookie") == cookie {
			// An API that echoes what it got, token included.
			fmt.Fprintf(w, "welcome %s, you sent %s", r.Header.Get("Authorization"), body)
		}
	})
	for _, opts := range [][]tapproxytest.CassetteOption{nil, {tapproxytest.MatchHeaders("authorization")}} {
		var got seen
		require.Empty(t, recordWith(t, api, path, func(srv *tapproxytest.Server) {
			got = call(t, srv.Client(), "POST", srv.URL+"/me", `{"token":"s3cr3t-token"}`, http.Header{"Authorization": {token}, "Cookie": {cookie}})
		}, opts...))
		assert.Equal(t, `welcome Bearer s3cr3t-token, you sent {"token":"s3cr3t-token"}`, string(got.Body), "the recording test gets the real response")
		assert.Equal(t, setCookie, got.Header.Get("Set-Cookie"))

		_, file := readCassette(t, path)
		assert.NotContains(t, file, "s3cr3t")
		assert.Contains(t, file, "Bearer REDACTED")

		srv, tb := replayWith(t, path, opts...)
		got = call(t, srv.Client(), "POST", srv.URL+"/me", `{"token":"another-token"}`, http.Header{"Authorization": {"Bearer another-token"}})
		assert.Equal(t, http.StatusOK, got.Status, "a different live token still matches")
		assert.Equal(t, `welcome Bearer REDACTED, you sent {"token":"REDACTED"}`, string(got.Body))
		tb.finish()
		assert.Empty(t, tb.allErrors())
	}
}

func TestCassetteTrailersAfterEOF(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trailers.har")
	require.Empty(t, recordWith(t, apiUpstream(nil), path, func(srv *tapproxytest.Server) {
		call(t, srv.Client(), "GET", srv.URL+"/trailers", "", nil)
	}))
	h, _ := readCassette(t, path)
	assert.Equal(t, []har.NameValue{{Name: "X-Checksum", Value: "abc123"}}, h.Log.Entries[0].Response.Trailers)

	srv, _ := replayWith(t, path)
	req, err := http.NewRequestWithContext(waitCtx(t), "GET", srv.URL+"/trailers", nil)
	require.NoError(t, err)
	res, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	assert.Contains(t, res.Trailer, "X-Checksum", "announced with the headers")
	assert.Empty(t, res.Trailer.Get("X-Checksum"), "but not yet sent")
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	assert.Equal(t, "with trailers", string(body))
	assert.Equal(t, "abc123", res.Trailer.Get("X-Checksum"), "after EOF")
}

func TestCassetteStreamsWhileRecording(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sse.har")
	release := make(chan struct{})
	sse := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release: // the client has the first event
		case <-time.After(waitTimeout):
		}
		io.WriteString(w, "data: second\n\n")
	})
	require.Empty(t, recordWith(t, sse, path, func(srv *tapproxytest.Server) {
		req, err := http.NewRequestWithContext(waitCtx(t), "GET", srv.URL+"/events", nil)
		require.NoError(t, err)
		res, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		rd := bufio.NewReader(res.Body)
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "data: first\n", line, "the first event arrives before the upstream ends")
		close(release)
		rest, err := io.ReadAll(rd)
		require.NoError(t, err)
		assert.Equal(t, "\ndata: second\n\n", string(rest))
	}))

	srv, _ := replayWith(t, path)
	got := call(t, srv.Client(), "GET", srv.URL+"/events", "", nil)
	assert.Equal(t, "data: first\n\ndata: second\n\n", string(got.Body))
	assert.Equal(t, "text/event-stream", got.Header.Get("Content-Type"))
}

func TestCassetteQueryOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.har")
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.RawQuery) })
	require.Empty(t, recordWith(t, echo, path, func(srv *tapproxytest.Server) {
		call(t, srv.Client(), "GET", srv.URL+"/q?a=1&b=2&a=3", "", nil)
		call(t, srv.Client(), "GET", srv.URL+"/q?a=1&b=2&a=3", "", nil)
	}))
	tests := []struct {
		name, query string
		hit         bool
	}{
		{"keys in another order", "b=2&a=1&a=3", true},
		{"as recorded", "a=1&b=2&a=3", true},
		{"values of a key in another order", "a=3&b=2&a=1", false},
	}
	srv, tb := replayWith(t, path)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := call(t, srv.Client(), "GET", srv.URL+"/q?"+tt.query, "", nil)
			if tt.hit {
				assert.Equal(t, "a=1&b=2&a=3", string(got.Body))
			} else {
				assert.Equal(t, http.StatusBadGateway, got.Status)
			}
		})
	}
	tb.finish()
	assert.Len(t, tb.allErrors(), 1)
}

func TestCassetteJSONBodyCanonical(t *testing.T) {
	path := filepath.Join(t.TempDir(), "json.har")
	require.Empty(t, recordWith(t, apiUpstream(nil), path, func(srv *tapproxytest.Server) {
		call(t, srv.Client(), "POST", srv.URL+"/users", `{"name":"ann","age":30}`, nil)
		call(t, srv.Client(), "POST", srv.URL+"/users", `not json`, nil)
	}))
	srv, tb := replayWith(t, path)
	assert.Equal(t, http.StatusCreated, call(t, srv.Client(), "POST", srv.URL+"/users", "{ \"age\": 30,\n \"name\": \"ann\" }", nil).Status)
	assert.Equal(t, http.StatusBadGateway, call(t, srv.Client(), "POST", srv.URL+"/users", `not  json`, nil).Status, "other bodies match exactly")
	tb.finish()
	assert.Len(t, tb.allErrors(), 1)
}

func TestCassetteBodyOverLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.har")
	tb := &fakeTB{}
	srv := tapproxytest.NewServer(tb, bodyUpstream(100, false, nil), tapproxytest.WithBodyLimit(10),
		tapproxytest.WithCassette(path, tapproxytest.WithMode(tapproxytest.Record)))
	got := call(t, srv.Client(), "GET", srv.URL+"/big", "", nil)
	assert.Len(t, got.Body, 100, "the client still gets all of it")
	tb.finish()
	errs := tb.allErrors()
	require.Len(t, errs, 1)
	assert.Contains(t, errs[0], "WithBodyLimit")
	assert.Contains(t, errs[0], "GET /big has 100 body bytes, more than the body limit of 10")
	h, _ := readCassette(t, path)
	assert.Empty(t, h.Log.Entries)
}

// failingUpstream breaks off: /short declares 100 bytes and sends 10, and
// /none closes the connection before any response.
func failingUpstream(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if !assert.NoError(t, err) {
			return
		}
		defer conn.Close()
		if r.URL.Path == "/short" {
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n0123456789")
			brw.Flush()
		}
	})
}

func TestCassetteReplaysFailures(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fail.har")
	var recorded []seen
	require.Empty(t, recordWith(t, failingUpstream(t), path, func(srv *tapproxytest.Server) {
		c := freshClient(srv)
		recorded = append(recorded, call(t, c, "GET", srv.URL+"/short", "", nil), call(t, c, "GET", srv.URL+"/none", "", nil))
	}))
	h, _ := readCassette(t, path)
	require.Len(t, h.Log.Entries, 2)
	short, none := h.Log.Entries[0], h.Log.Entries[1]
	require.NotNil(t, short.Error)
	assert.Equal(t, har.KindUpstreamReset, short.Error.Kind)
	assert.EqualValues(t, 10, short.Error.BytesDelivered)
	assert.Equal(t, "0123456789", short.Response.Content.Text)
	require.NotNil(t, none.Error)
	assert.Equal(t, har.KindUpstreamReset, none.Error.Kind)
	assert.Equal(t, http.StatusBadGateway, none.Response.Status)

	srv, tb := replayWith(t, path)
	c := freshClient(srv)
	replayed := []seen{call(t, c, "GET", srv.URL+"/short", "", nil), call(t, c, "GET", srv.URL+"/none", "", nil)}
	assert.Equal(t, recorded[0].Status, replayed[0].Status)
	assert.Equal(t, "0123456789", string(replayed[0].Body))
	assert.Equal(t, recorded[0].Err, replayed[0].Err, "the same failure: %s", replayed[0].Err)
	assert.Contains(t, replayed[0].Err, io.ErrUnexpectedEOF.Error())
	assert.Equal(t, http.StatusBadGateway, replayed[1].Status)
	assert.ErrorIs(t, exchange(t, srv, 1).Err, tapproxy.ErrUpstreamReset)
	assert.ErrorIs(t, exchange(t, srv, 2).Err, tapproxy.ErrUpstreamReset)
	tb.finish()
	assert.Empty(t, tb.allErrors())
}

func TestCassetteBelowFaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "faults.har")
	tb := &fakeTB{}
	srv := tapproxytest.NewServer(tb, apiUpstream(nil),
		tapproxytest.WithCassette(path, tapproxytest.WithMode(tapproxytest.Record)),
		tapproxytest.WithFaults(
			tapproxytest.DropTrailers(),
			tapproxytest.Truncate(4).On(tapproxytest.Path("/users/*")),
			tapproxytest.Respond(http.StatusTeapot, "").On(tapproxytest.Path("/empty")),
		))
	got := call(t, srv.Client(), "GET", srv.URL+"/trailers", "", nil)
	assert.Empty(t, got.Trailer.Get("X-Checksum"), "the fault dropped the trailers the client sees")
	got = call(t, srv.Client(), "GET", srv.URL+"/users/1", "", nil)
	assert.Len(t, got.Body, 4, "cut by the fault")
	call(t, srv.Client(), "GET", srv.URL+"/empty", "", nil)
	tb.finish()
	require.Empty(t, tb.allErrors())

	h, _ := readCassette(t, path)
	require.Len(t, h.Log.Entries, 2, "the fixed response never reached the cassette")
	assert.NotEmpty(t, h.Log.Entries[0].Response.Trailers, "recorded as the upstream sent them")
	assert.Equal(t, `{"id":"1","q":""}`, h.Log.Entries[1].Response.Content.Text, "the whole body, as the upstream sent it")
	assert.Nil(t, h.Log.Entries[1].Error)

	// Faults apply on replay as on live responses.
	tb2 := &fakeTB{}
	srv = tapproxytest.NewServer(tb2, offline(t), tapproxytest.WithCassette(path),
		tapproxytest.WithFaults(tapproxytest.Truncate(3).On(tapproxytest.Path("/users/*"))))
	got = call(t, srv.Client(), "GET", srv.URL+"/users/1", "", nil)
	assert.Equal(t, `{"i`, string(got.Body))
	assert.Contains(t, got.Err, "unexpected EOF")
	tb2.finish()
}

func TestCassetteDeterministicFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nested", "det.har")
	f := func(srv *tapproxytest.Server) {
		call(t, srv.Client(), "GET", srv.URL+"/users/1?z=1&a=2", "", http.Header{"X-B": {"2"}, "X-A": {"1"}})
		call(t, srv.Client(), "POST", srv.URL+"/users", `{"n":1}`, nil)
	}
	require.Empty(t, recordWith(t, apiUpstream(nil), path, f))
	h, first := readCassette(t, path)
	require.Len(t, h.Log.Entries, 2)
	for i, e := range h.Log.Entries {
		assert.True(t, strings.HasPrefix(e.Request.URL, "http://upstream.test/"), e.Request.URL)
		assert.Equal(t, fmt.Sprintf("2000-01-01T00:00:00.00%dZ", i), e.StartedDateTime)
		assert.Zero(t, e.Time)
		for j := 1; j < len(e.Request.Headers); j++ {
			assert.LessOrEqual(t, e.Request.Headers[j-1].Name, e.Request.Headers[j].Name, "headers are sorted")
		}
	}

	// Record again: the same exchanges leave the file untouched, even
	// though the upstream's Date header may have moved on.
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	require.NoError(t, os.Chtimes(path, old, old))
	require.Empty(t, recordWith(t, apiUpstream(nil), path, f))
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, old, st.ModTime(), "an unchanged recording does not rewrite the file")
	_, again := readCassette(t, path)
	assert.Equal(t, first, again)

	// A changed recording does.
	require.Empty(t, recordWith(t, apiUpstream(nil), path, func(srv *tapproxytest.Server) {
		call(t, srv.Client(), "GET", srv.URL+"/users/2", "", nil)
	}))
	st, err = os.Stat(path)
	require.NoError(t, err)
	assert.NotEqual(t, old, st.ModTime())
}

func TestCassetteKeepTimings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "timed.har")
	require.Empty(t, recordWith(t, text("ok"), path, func(srv *tapproxytest.Server) {
		call(t, srv.Client(), "GET", srv.URL+"/", "", nil)
	}, tapproxytest.KeepTimings()))
	h, _ := readCassette(t, path)
	started, err := time.Parse(time.RFC3339, h.Log.Entries[0].StartedDateTime)
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now(), started, time.Hour)
}

func TestCassetteNewServerURLHost(t *testing.T) {
	up := httptest.NewServer(text("real"))
	defer up.Close()
	path := filepath.Join(t.TempDir(), "url.har")
	tb := &fakeTB{}
	srv := tapproxytest.NewServerURL(tb, up.URL+"/base", tapproxytest.WithCassette(path))
	call(t, srv.Client(), "GET", srv.URL+"/x", "", nil)
	tb.finish()
	require.Empty(t, tb.allErrors())
	h, _ := readCassette(t, path)
	assert.Equal(t, up.URL+"/base/x", h.Log.Entries[0].Request.URL)
}

func TestCassetteModes(t *testing.T) {
	echo := func(calls *int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			*calls++
			io.WriteString(w, "live "+r.URL.Path)
		})
	}
	seed := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "modes.har")
		var calls int
		require.Empty(t, recordWith(t, echo(&calls), path, func(srv *tapproxytest.Server) {
			call(t, srv.Client(), "GET", srv.URL+"/a", "", nil)
		}))
		return path
	}
	run := func(t *testing.T, path string, opts ...tapproxytest.CassetteOption) (calls int, errs []string) {
		tb := &fakeTB{}
		srv := tapproxytest.NewServer(tb, echo(&calls), tapproxytest.WithCassette(path, opts...))
		require.NotNil(t, srv, "%v", tb.fatals)
		call(t, srv.Client(), "GET", srv.URL+"/a", "", nil)
		call(t, srv.Client(), "GET", srv.URL+"/b", "", nil)
		tb.finish()
		return calls, tb.allErrors()
	}
	entries := func(t *testing.T, path string) int {
		h, _ := readCassette(t, path)
		return len(h.Log.Entries)
	}

	t.Run("default replays an existing file", func(t *testing.T) {
		path := seed(t)
		calls, errs := run(t, path)
		assert.Zero(t, calls)
		assert.Len(t, errs, 1, "the miss for /b")
	})
	t.Run("default records a missing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "new.har")
		calls, errs := run(t, path)
		assert.Equal(t, 2, calls)
		assert.Empty(t, errs)
		assert.Equal(t, 2, entries(t, path))
	})
	t.Run("Record rewrites", func(t *testing.T) {
		path := seed(t)
		calls, errs := run(t, path, tapproxytest.WithMode(tapproxytest.Record))
		assert.Equal(t, 2, calls)
		assert.Empty(t, errs)
		assert.Equal(t, 2, entries(t, path))
	})
	t.Run("RecordMissing appends", func(t *testing.T) {
		path := seed(t)
		calls, errs := run(t, path, tapproxytest.WithMode(tapproxytest.RecordMissing))
		assert.Equal(t, 1, calls, "only /b went upstream")
		assert.Empty(t, errs)
		h, _ := readCassette(t, path)
		require.Len(t, h.Log.Entries, 2)
		assert.Equal(t, "http://upstream.test/b", h.Log.Entries[1].Request.URL)
	})
	t.Run("Passthrough touches no file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "none.har")
		calls, errs := run(t, path, tapproxytest.WithMode(tapproxytest.Passthrough))
		assert.Equal(t, 2, calls)
		assert.Empty(t, errs)
		assert.NoFileExists(t, path)
	})
	t.Run("ModeFromEnv", func(t *testing.T) {
		for _, tt := range []struct {
			value string
			calls int
		}{{"1", 2}, {"missing", 1}, {"", 0}, {"replay", 0}} {
			path := seed(t)
			t.Setenv("TAPPROXY_TEST_RECORD", tt.value)
			calls, _ := run(t, path, tapproxytest.ModeFromEnv("TAPPROXY_TEST_RECORD"))
			assert.Equal(t, tt.calls, calls, "TAPPROXY_TEST_RECORD=%q", tt.value)
		}
	})
	t.Run("the last mode wins", func(t *testing.T) {
		path := seed(t)
		t.Setenv("TAPPROXY_TEST_RECORD", "1")
		calls, _ := run(t, path, tapproxytest.ModeFromEnv("TAPPROXY_TEST_RECORD"), tapproxytest.WithMode(tapproxytest.Replay))
		assert.Zero(t, calls)
	})
}

func TestCassetteBadInput(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.har")
	require.NoError(t, os.WriteFile(bad, []byte("{not json"), 0o644))
	tests := []struct {
		name string
		opt  tapproxytest.Option
		env  string
		want string
	}{
		{"empty path", tapproxytest.WithCassette(""), "", "tapproxytest: WithCassette: empty path"},
		{"replay of no file", tapproxytest.WithCassette(filepath.Join(t.TempDir(), "no.har"), tapproxytest.WithMode(tapproxytest.Replay)), "", "does not exist, so it cannot be replayed"},
		{"unparsable file", tapproxytest.WithCassette(bad), "", "tapproxytest: cassette " + bad},
		{"unknown mode", tapproxytest.WithCassette(bad, tapproxytest.WithMode(9)), "", "tapproxytest: WithMode(9): unknown mode"},
		{"unknown env value", tapproxytest.WithCassette(bad, tapproxytest.ModeFromEnv("TAPPROXY_TEST_MODE")), "sometimes", `tapproxytest: ModeFromEnv("TAPPROXY_TEST_MODE"): unknown value "sometimes"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TAPPROXY_TEST_MODE", tt.env)
			tb := &fakeTB{}
			srv := tapproxytest.NewServer(tb, text("ok"), tt.opt)
			tb.finish()
			assert.Nil(t, srv)
			require.Len(t, tb.fatals, 1)
			assert.Contains(t, tb.fatals[0], tt.want)
		})
	}
}

func TestCassetteHooks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hooks.har")
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "live-id")
		io.WriteString(w, "secret-in-body")
	})
	var got seen
	require.Empty(t, recordWith(t, api, path, func(srv *tapproxytest.Server) {
		got = call(t, srv.Client(), "GET", srv.URL+"/h?ts=1&k=v", `{"nonce":1,"v":2}`, nil)
	},
		tapproxytest.IgnoreQuery("ts"),
		tapproxytest.BeforeSave(func(e *har.Entry) error {
			e.Response.Content.Text = strings.ReplaceAll(e.Response.Content.Text, "secret", "XXXXXX")
			return nil
		}),
		nil,
	))
	assert.Equal(t, "secret-in-body", string(got.Body), "BeforeSave changes only the file")
	_, file := readCassette(t, path)
	assert.NotContains(t, file, "secret-in-body")

	dropNonce := tapproxytest.Normalize(func(r *http.Request) {
		var v map[string]any
		if json.NewDecoder(r.Body).Decode(&v) == nil {
			delete(v, "nonce")
			b, _ := json.Marshal(v)
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
	})
	srv, tb := replayWith(t, path, tapproxytest.IgnoreQuery("ts"), dropNonce)
	got = call(t, srv.Client(), "GET", srv.URL+"/h?k=v&ts=99", `{"v":2,"nonce":7}`, nil)
	assert.Equal(t, http.StatusOK, got.Status)
	assert.Equal(t, "XXXXXX-in-body", string(got.Body))
	tb.finish()
	assert.Empty(t, tb.allErrors())

	t.Run("a failing BeforeSave leaves the file", func(t *testing.T) {
		before, err := os.ReadFile(path)
		require.NoError(t, err)
		errs := recordWith(t, api, path, func(srv *tapproxytest.Server) {
			call(t, srv.Client(), "GET", srv.URL+"/other", "", nil)
		}, tapproxytest.BeforeSave(func(*har.Entry) error { return errors.New("no") }))
		require.Len(t, errs, 1)
		assert.Contains(t, errs[0], "BeforeSave: no")
		after, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.Equal(t, before, after)
	})
}

func TestModeString(t *testing.T) {
	assert.Equal(t, "Replay", tapproxytest.Replay.String())
	assert.Equal(t, "RecordMissing", tapproxytest.RecordMissing.String())
	assert.Equal(t, "Mode(7)", tapproxytest.Mode(7).String())
}

func TestCassetteClientThatLeft(t *testing.T) {
	path := filepath.Join(t.TempDir(), "left.har")
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part")
		http.NewResponseController(w).Flush()
		<-r.Context().Done() // the rest never comes
	})
	// leave reads the first bytes, then gives up.
	leave := func(srv *tapproxytest.Server) string {
		ctx, cancel := context.WithCancel(waitCtx(t))
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+"/stream", nil)
		require.NoError(t, err)
		res, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		buf := make([]byte, 4)
		_, err = io.ReadFull(res.Body, buf)
		require.NoError(t, err)
		cancel()
		return string(buf)
	}
	require.Empty(t, recordWith(t, slow, path, func(srv *tapproxytest.Server) {
		assert.Equal(t, "part", leave(srv))
		assert.ErrorIs(t, exchange(t, srv, 1).Err, tapproxy.ErrClientGone)
	}))
	h, _ := readCassette(t, path)
	require.Len(t, h.Log.Entries, 1)
	e := h.Log.Entries[0]
	require.NotNil(t, e.Error)
	assert.Equal(t, har.KindClientGone, e.Error.Kind)
	assert.EqualValues(t, 4, e.Error.BytesDelivered)
	assert.Equal(t, "part", e.Response.Content.Text)

	// Replayed, the bytes come, then nothing until the client leaves.
	srv, tb := replayWith(t, path)
	assert.Equal(t, "part", leave(srv))
	assert.ErrorIs(t, exchange(t, srv, 1).Err, tapproxy.ErrClientGone)
	tb.finish()
	assert.Empty(t, tb.allErrors())
}
