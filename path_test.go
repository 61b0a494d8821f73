package tapproxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/tapproxy/tapproxy"
)

// pathUpstream starts an upstream (over HTTP/2 with TLS when h2 is set)
// that reports the request-target it received, exactly as it came on the
// wire, on the returned channel.
func pathUpstream(tb testing.TB, h2 bool) (*httptest.Server, <-chan string) {
	tb.Helper()
	got := make(chan string, 16)
	h := func(w http.ResponseWriter, r *http.Request) {
		got <- r.RequestURI
		_, _ = io.WriteString(w, r.RequestURI)
	}
	if h2 {
		return newH2Upstream(tb, h), got
	}
	return newUpstream(tb, h), got
}

// pathFrontend starts a proxy to up plus basePath, over HTTP/2 with TLS
// when h2 is set.
func pathFrontend(tb testing.TB, up *httptest.Server, h2 bool, basePath string, opts ...tapproxy.Option) *httptest.Server {
	tb.Helper()
	if h2 {
		opts = append([]tapproxy.Option{tapproxy.WithTransport(trustingTransport(tb, up))}, opts...)
	}
	return serve(tb, newProxy(tb, up.URL+basePath, opts...), h2)
}

// rawRequest sends method and target to srv exactly as written: over a
// raw HTTP/1.1 connection, or over HTTP/2 with the target as the :path,
// with nothing cleaned on the way. It returns the status and headers.
func rawRequest(tb testing.TB, srv *httptest.Server, h2 bool, method, target string) (int, http.Header) {
	tb.Helper()
	if h2 {
		u := mustParse(tb, srv.URL)
		u.Opaque = target // sent as the :path, byte for byte
		if strings.HasPrefix(target, "//") {
			// An Opaque of "//..." is taken for an authority.
			u.Opaque, u.Path = "", target
		}
		req, err := http.NewRequest(method, srv.URL, nil)
		require.NoError(tb, err)
		req.URL = u
		req.Host = u.Host
		res, err := srv.Client().Do(req)
		require.NoError(tb, err)
		defer res.Body.Close()
		_, _ = io.Copy(io.Discard, res.Body)
		require.Equal(tb, 2, res.ProtoMajor)
		return res.StatusCode, res.Header
	}
	conn, err := net.DialTimeout("tcp", srv.Listener.Addr().String(), waitTimeout)
	require.NoError(tb, err)
	defer conn.Close()
	require.NoError(tb, conn.SetDeadline(time.Now().Add(waitTimeout)))
	_, err = fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", method, target, srv.Listener.Addr())
	require.NoError(tb, err)
	res, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	require.NoError(tb, err)
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode, res.Header
}

// received returns what the upstream received for the request just
// answered, or "" if nothing reached it: the proxy answers only after the
// upstream did, so there is nothing to wait for.
func received(got <-chan string) string {
	select {
	case s := <-got:
		return s
	default:
		return ""
	}
}

// TestPathNormalization sends request targets that a client would clean,
// on raw connections, through proxies with and without a base path and
// with and without StripPrefix, over HTTP/1.1 and HTTP/2, and checks the
// exact target the upstream receives, or a 400 that the upstream never
// sees, observed once with ErrBadRequest.
func TestPathNormalization(t *testing.T) {
	type setup struct {
		base  string
		strip string
	}
	var (
		v1      = setup{base: "/v1"}
		root    = setup{}
		v1API   = setup{base: "/v1", strip: "/api"}
		rootAPI = setup{strip: "/api"}
	)
	const rejected = "" // the client gets 400; the upstream nothing
	tests := []struct {
		name   string
		target string
		setup  setup
		want   string
	}{
		{"dot slash", "/./", v1, "/v1/"},
		{"dot dot slash", "/../", v1, rejected},
		{"dot dot", "/..", v1, rejected},
		{"trailing dot dot", "/a/b/..", v1, "/v1/a/"},
		{"trailing dot dot to root", "/a/..", v1, "/v1/"},
		{"trailing dot", "/a/b/.", v1, "/v1/a/b/"},
		{"dot in the middle", "/a/./b", v1, "/v1/a/b"},
		{"climb past the root", "/a/b/../../..", v1, rejected},
		{"escaped dots", "/a/%2e%2e/b", v1, "/v1/b"},
		{"escaped dots mixed case", "/a/%2E%2e/b", v1, "/v1/b"},
		{"half-escaped dots", "/a/.%2e/b", v1, "/v1/b"},
		{"escaped single dot", "/a/%2e", v1, "/v1/a/"},
		{"escaped dots climbing", "/%2e%2e/etc", v1, rejected},
		{"escaped dots climbing twice", "/a/%2e%2e/%2e%2e/etc", v1, rejected},
		{"dots before an escaped slash", "/a/..%2fsecret", v1, "/v1/secret"},
		{"dots before an escaped slash climbing", "/..%2fsecret", v1, rejected},
		{"dots before an escaped backslash", "/a/..%5csecret", v1, "/v1/secret"},
		{"dots between escaped backslashes climbing", "/a/..%5c..%5cwindows", v1, rejected},
		{"escaped slash kept", "/a/b%2fc", v1, "/v1/a/b%2fc"},
		{"escaped backslash kept", "/a/b%5Cc", v1, "/v1/a/b%5Cc"},
		{"double slash", "//", v1, "/v1//"},
		{"empty segment kept", "/a//b/../c", v1, "/v1/a//c"},
		{"three dots are a name", "/a/.../b", v1, "/v1/a/.../b"},
		{"other escaping kept", "/%7Euser/%41", v1, "/v1/%7Euser/%41"},
		{"other escaping kept past a dot-segment", "/%7Euser/x/../%41", v1, "/v1/%7Euser/%41"},
		{"query untouched", "/a/../b?x=/../y", v1, "/v1/b?x=/../y"},
		{"no base path", "/a/../b", root, "/b"},
		{"no base path climbing", "/..", root, rejected},
		{"no base path escaped dots", "/x/%2e%2e/%2e%2e", root, rejected},
		{"strip: dots out of the prefix", "/api/../secret", v1API, "/v1/secret"},
		{"strip: escaped dots out of the prefix", "/api/%2e%2e/secret", v1API, "/v1/secret"},
		{"strip: escaped slash out of the prefix", "/api/..%2fsecret", v1API, "/v1/secret"},
		{"strip: escaped slashes around dots", "/api%2F..%2Fsecret", v1API, "/v1/secret"},
		{"strip: escaped slash is no separator", "/api%2Fx", v1API, "/v1/api%2Fx"},
		{"strip: climbing out of the base", "/a/%2e%2e/%2e%2e/etc", v1API, rejected},
		{"strip: empty segment then dots", "/api//../x", v1API, "/v1/x"},
		{"strip: prefix boundary with dots", "/api..", v1API, "/v1/api.."},
		{"strip: longer segment then dots", "/apix/..", v1API, "/v1/"},
		{"strip: prefix then dots", "/api/x/..", v1API, "/v1/"},
		{"strip: dot inside", "/api/./x", v1API, "/v1/x"},
		{"strip: climbing from inside", "/api/x/../../..", v1API, rejected},
		{"strip: no base path", "/api/../api/x", rootAPI, "/x"},
		{"strip: no base path, escaped dots", "/api/%2e%2e/x", rootAPI, "/x"},
	}
	require.GreaterOrEqual(t, len(tests), 30)
	for _, proto := range legs {
		t.Run(proto.name, func(t *testing.T) {
			up, got := pathUpstream(t, proto.h2)
			fronts := map[setup]*httptest.Server{}
			recs := map[setup]*recorder{}
			for _, s := range []setup{v1, root, v1API, rootAPI} {
				recs[s] = newRecorder()
				opts := []tapproxy.Option{tapproxy.WithObserver(recs[s])}
				if s.strip != "" {
					opts = append(opts, tapproxy.WithDirector(tapproxy.StripPrefix(s.strip)))
				}
				fronts[s] = pathFrontend(t, up, proto.h2, s.base, opts...)
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					status, _ := rawRequest(t, fronts[tt.setup], proto.h2, http.MethodGet, tt.target)
					o := recs[tt.setup].next(t)
					if tt.want == rejected {
						assert.Equal(t, http.StatusBadRequest, status)
						assert.Empty(t, received(got), "the upstream saw the request")
						assert.ErrorIs(t, o.Err, tapproxy.ErrBadRequest)
						assert.Equal(t, http.StatusBadRequest, o.Status)
						return
					}
					assert.Equal(t, http.StatusOK, status)
					assert.Equal(t, tt.want, received(got))
					assert.NoError(t, o.Err)
				})
			}
			for s, front := range fronts {
				front.Close()
				assert.Len(t, recs[s].all, recs[s].count(), "one observation per request")
			}
		})
	}
}

// TestPathSeenByEveryStep checks that directors, the route function and
// the observers all see the resolved path, and that the client's escaping
// of what was kept survives in RawPath.
func TestPathSeenByEveryStep(t *testing.T) {
	up, got := pathUpstream(t, false)
	routes := make(chan string, 1)
	rec := newRecorder()
	var director string
	mp, _ := newReader(t) // the route function is called when metrics record
	front := pathFrontend(t, up, false, "/v1",
		tapproxy.WithMeterProvider(mp),
		tapproxy.WithDirector(func(pr *httputil.ProxyRequest) { director = pr.In.URL.EscapedPath() }),
		tapproxy.WithRoute(func(r *http.Request) string { routes <- r.URL.EscapedPath(); return "" }),
		tapproxy.WithObserver(rec))

	status, _ := rawRequest(t, front, false, http.MethodGet, "/a/b/%2e%2e/%7Ec")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "/v1/a/%7Ec", received(got))
	assert.Equal(t, "/a/%7Ec", director)
	select {
	case r := <-routes:
		assert.Equal(t, "/a/%7Ec", r)
	case <-time.After(waitTimeout):
		t.Fatal("route function not called")
	}
	assert.Equal(t, "/v1/a/~c", rec.next(t).Path)
}

// TestConnectRefused checks that CONNECT is answered 405 with an Allow
// header, never reaches the upstream, and is observed once.
func TestConnectRefused(t *testing.T) {
	up, got := pathUpstream(t, false)
	rec := newRecorder()
	front := pathFrontend(t, up, false, "/v1", tapproxy.WithObserver(rec))

	status, header := rawRequest(t, front, false, http.MethodConnect, "example.com:443")
	assert.Equal(t, http.StatusMethodNotAllowed, status)
	assert.Contains(t, header.Get("Allow"), http.MethodGet)
	assert.NotContains(t, header.Get("Allow"), http.MethodConnect)
	assert.Empty(t, received(got), "CONNECT reached the upstream")

	o := rec.next(t)
	assert.ErrorIs(t, o.Err, tapproxy.ErrBadRequest)
	assert.Equal(t, http.MethodConnect, o.Method)
	assert.Equal(t, http.StatusMethodNotAllowed, o.Status)
	assert.Equal(t, header.Get("Allow"), o.Header.Get("Allow"))
	assert.Equal(t, 1, closeAndCount(t, front, rec))
}

// TestOptionsAsteriskAnswered checks that OPTIONS * is answered by the
// proxy, 200 with Allow, rather than relayed as OPTIONS on the base path.
func TestOptionsAsteriskAnswered(t *testing.T) {
	up, got := pathUpstream(t, false)
	rec := newRecorder()
	srv := httptest.NewUnstartedServer(newProxy(t, up.URL+"/v1", tapproxy.WithObserver(rec)))
	srv.Config.DisableGeneralOptionsHandler = true // let the proxy see it
	srv.Start()
	t.Cleanup(srv.Close)

	status, header := rawRequest(t, srv, false, http.MethodOptions, "*")
	assert.Equal(t, http.StatusOK, status)
	assert.Contains(t, header.Get("Allow"), http.MethodOptions)
	assert.Empty(t, received(got), "OPTIONS * reached the upstream")
	o := rec.next(t)
	assert.NoError(t, o.Err)
	assert.Equal(t, http.StatusOK, o.Status)
	assert.Equal(t, 1, closeAndCount(t, srv, rec))
}

// TestEscapedSlashActions checks each WithEscapedSlashes action.
func TestEscapedSlashActions(t *testing.T) {
	tests := []struct {
		name     string
		action   tapproxy.EscapedSlashAction
		target   string
		status   int
		upstream string // what the upstream received, if anything
		location string
	}{
		{"keep: slash", tapproxy.KeepEscaped, "/a%2Fb", http.StatusOK, "/v1/a%2Fb", ""},
		{"keep: backslash", tapproxy.KeepEscaped, "/a%5cb", http.StatusOK, "/v1/a%5cb", ""},
		{"reject: slash", tapproxy.RejectEscaped, "/a%2Fb", http.StatusBadRequest, "", ""},
		{"reject: lower-case slash", tapproxy.RejectEscaped, "/a%2fb", http.StatusBadRequest, "", ""},
		{"reject: backslash", tapproxy.RejectEscaped, "/a%5Cb", http.StatusBadRequest, "", ""},
		{"reject: bare backslash", tapproxy.RejectEscaped, `/a\b`, http.StatusBadRequest, "", ""},
		{"reject: none", tapproxy.RejectEscaped, "/a/b%41", http.StatusOK, "/v1/a/b%41", ""},
		{"redirect: slash", tapproxy.UnescapeAndRedirect, "/a%2Fb?q=1", http.StatusTemporaryRedirect, "", "/a/b?q=1"},
		{"redirect: dots resolved", tapproxy.UnescapeAndRedirect, "/x/a%5C..%5Cb%41", http.StatusTemporaryRedirect, "", "/x/b%41"},
		{"redirect: never to another host", tapproxy.UnescapeAndRedirect, "/%2Fevil.example", http.StatusBadRequest, "", ""},
		{"redirect: none", tapproxy.UnescapeAndRedirect, "/a/b", http.StatusOK, "/v1/a/b", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, got := pathUpstream(t, false)
			rec := newRecorder()
			front := pathFrontend(t, up, false, "/v1", tapproxy.WithObserver(rec), tapproxy.WithEscapedSlashes(tt.action))
			status, header := rawRequest(t, front, false, http.MethodGet, tt.target)
			assert.Equal(t, tt.status, status)
			assert.Equal(t, tt.location, header.Get("Location"))
			assert.Equal(t, tt.upstream, received(got))
			o := rec.next(t)
			assert.Equal(t, tt.status, o.Status)
			if tt.status == http.StatusBadRequest {
				assert.ErrorIs(t, o.Err, tapproxy.ErrBadRequest)
			} else {
				assert.NoError(t, o.Err)
			}
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

// TestUnescapeAndRedirectIsFollowed checks that a client that follows the
// redirect reaches the upstream with the unescaped path.
func TestUnescapeAndRedirectIsFollowed(t *testing.T) {
	up, got := pathUpstream(t, false)
	front := pathFrontend(t, up, false, "/v1", tapproxy.WithEscapedSlashes(tapproxy.UnescapeAndRedirect))
	res, body := get(t, front.Client(), front.URL+"/a%2Fb")
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "/v1/a/b", string(body))
	assert.Equal(t, "/v1/a/b", received(got))
}

// TestPathNormalizationOff checks that WithPathNormalization(false) relays
// dot-segments as the client sent them.
func TestPathNormalizationOff(t *testing.T) {
	up, got := pathUpstream(t, false)
	front := pathFrontend(t, up, false, "/v1", tapproxy.WithPathNormalization(false))
	for _, target := range []string{"/a/../b", "/%2e%2e/etc", "/.."} {
		status, _ := rawRequest(t, front, false, http.MethodGet, target)
		assert.Equal(t, http.StatusOK, status, target)
		assert.Equal(t, "/v1"+target, received(got))
	}
}

// TestBadRequestMetrics checks that a request the proxy refuses is counted
// on the client-facing leg with its status and error.type bad_request, and
// that no upstream leg is recorded for it.
func TestBadRequestMetrics(t *testing.T) {
	up, _ := pathUpstream(t, false)
	mp, reader := newReader(t)
	front := pathFrontend(t, up, false, "/v1", tapproxy.WithMeterProvider(mp))
	status, _ := rawRequest(t, front, false, http.MethodGet, "/%2e%2e/etc")
	require.Equal(t, http.StatusBadRequest, status)

	got := waitRecorded(t, reader, 1)
	sets := attrSets(got[httpconv.ServerRequestDuration{}.Name()])
	require.Len(t, sets, 1)
	errType, _ := sets[0].Value(semconv.ErrorTypeKey)
	assert.Equal(t, "bad_request", errType.AsString())
	code, _ := sets[0].Value(semconv.HTTPResponseStatusCodeKey)
	assert.EqualValues(t, http.StatusBadRequest, code.AsInt64())
	assert.Zero(t, histogramCount(got[httpconv.ClientRequestDuration{}.Name()]), "an upstream leg was recorded")
}
