package tapproxy_test

import (
	"net/http"
	"net/http/httputil"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

// seen is what the upstream received.
type seen struct {
	Path, RawPath, Query, Host string
	Header                     http.Header
}

// newEcho starts an upstream that reports each request it receives.
func newEcho(tb testing.TB) (url string, got <-chan seen) {
	tb.Helper()
	ch := make(chan seen, 16)
	up := newUpstream(tb, func(w http.ResponseWriter, r *http.Request) {
		ch <- seen{r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.Host, r.Header.Clone()}
	})
	return up.URL, ch
}

func TestDirectors(t *testing.T) {
	tests := []struct {
		name      string
		base      string // appended to the upstream URL to form the target
		directors []tapproxy.Director
		path      string
		header    http.Header
		check     func(t *testing.T, s seen, upstreamHost, frontHost string)
	}{
		{
			name: "target path joins request path",
			base: "/v1/",
			path: "/users?id=7",
			check: func(t *testing.T, s seen, up, _ string) {
				assert.Equal(t, "/v1/users", s.Path)
				assert.Equal(t, "id=7", s.Query)
				assert.Equal(t, up, s.Host, "Host is the target's by default")
			},
		},
		{
			name:      "StripPrefix removes prefix before the join",
			base:      "/v1",
			directors: []tapproxy.Director{tapproxy.StripPrefix("/api")},
			path:      "/api/users",
			check: func(t *testing.T, s seen, _, _ string) {
				assert.Equal(t, "/v1/users", s.Path)
			},
		},
		{
			name:      "StripPrefix with trailing slash and exact match",
			directors: []tapproxy.Director{tapproxy.StripPrefix("/api/")},
			path:      "/api",
			check: func(t *testing.T, s seen, _, _ string) {
				assert.Equal(t, "/", s.Path)
			},
		},
		{
			name:      "StripPrefix leaves other paths unchanged",
			base:      "/v1",
			directors: []tapproxy.Director{tapproxy.StripPrefix("/api")},
			path:      "/apix/users",
			check: func(t *testing.T, s seen, _, _ string) {
				assert.Equal(t, "/v1/apix/users", s.Path)
			},
		},
		{
			name:      "StripPrefix keeps escaped segments",
			directors: []tapproxy.Director{tapproxy.StripPrefix("/api")},
			path:      "/api/a%2Fb",
			check: func(t *testing.T, s seen, _, _ string) {
				assert.Equal(t, "/a/b", s.Path)
				assert.Equal(t, "/a%2Fb", s.RawPath)
			},
		},
		{
			name:      "SetHeader replaces and DeleteHeader removes",
			directors: []tapproxy.Director{tapproxy.SetHeader("X-Env", "prod"), tapproxy.DeleteHeader("X-Secret")},
			path:      "/",
			header:    http.Header{"X-Env": {"dev", "qa"}, "X-Secret": {"s"}},
			check: func(t *testing.T, s seen, _, _ string) {
				assert.Equal(t, []string{"prod"}, s.Header["X-Env"])
				assert.NotContains(t, s.Header, "X-Secret")
			},
		},
		{
			name: "client cannot drop a director's header through Connection",
			directors: []tapproxy.Director{
				tapproxy.SetHeader("X-Tenant", "acme"),
			},
			path:   "/",
			header: http.Header{"Connection": {"X-Tenant"}},
			check: func(t *testing.T, s seen, _, _ string) {
				assert.Equal(t, "acme", s.Header.Get("X-Tenant"))
			},
		},
		{
			name:      "PreserveHost sends the inbound Host",
			directors: []tapproxy.Director{tapproxy.PreserveHost()},
			path:      "/",
			check: func(t *testing.T, s seen, _, front string) {
				assert.Equal(t, front, s.Host)
			},
		},
		{
			name:   "X-Forwarded-* and Forwarded from clients are dropped by default",
			path:   "/",
			header: http.Header{"X-Forwarded-For": {"6.6.6.6"}, "X-Forwarded-Host": {"evil"}, "Forwarded": {"for=6.6.6.6"}},
			check: func(t *testing.T, s seen, _, _ string) {
				assert.NotContains(t, s.Header, "X-Forwarded-For")
				assert.NotContains(t, s.Header, "X-Forwarded-Host")
				assert.NotContains(t, s.Header, "X-Forwarded-Proto")
				assert.NotContains(t, s.Header, "Forwarded")
			},
		},
		{
			name:      "ForwardedHeaders sets them from the connection, not the client",
			directors: []tapproxy.Director{tapproxy.ForwardedHeaders()},
			path:      "/",
			header:    http.Header{"X-Forwarded-For": {"6.6.6.6"}},
			check: func(t *testing.T, s seen, _, front string) {
				assert.Equal(t, "127.0.0.1", s.Header.Get("X-Forwarded-For"))
				assert.Equal(t, front, s.Header.Get("X-Forwarded-Host"))
				assert.Equal(t, "http", s.Header.Get("X-Forwarded-Proto"))
			},
		},
		{
			name: "Mutate adapts a plain request mutator, in order",
			directors: []tapproxy.Director{
				tapproxy.SetHeader("X-Step", "one"),
				tapproxy.Mutate(func(out *http.Request) { out.Header.Add("X-Step", "two") }),
				nil, // skipped
			},
			path: "/",
			check: func(t *testing.T, s seen, _, _ string) {
				assert.Equal(t, []string{"one", "two"}, s.Header["X-Step"])
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, got := newEcho(t)
			front := newFrontend(t, up+tt.base, tapproxy.WithDirector(tt.directors...))
			req, err := http.NewRequest(http.MethodGet, front.URL+tt.path, nil)
			require.NoError(t, err)
			for k, v := range tt.header {
				req.Header[k] = v
			}
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			res.Body.Close()
			require.Equal(t, http.StatusOK, res.StatusCode)
			tt.check(t, <-got, hostOf(up), hostOf(front.URL))
		})
	}
}

func TestTrustedForwardedHeaders(t *testing.T) {
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	elsewhere := netip.MustParsePrefix("10.0.0.0/8")
	inbound := http.Header{
		"X-Forwarded-For":   {"203.0.113.9", "198.51.100.2"},
		"X-Forwarded-Host":  {"shop.example"},
		"X-Forwarded-Proto": {"https"},
		"Forwarded":         {"for=203.0.113.9;proto=https"},
	}
	tests := []struct {
		name    string
		trusted []netip.Prefix
		check   func(t *testing.T, s seen, front string)
	}{
		{
			name:    "from a trusted peer: kept, and this hop appended",
			trusted: []netip.Prefix{elsewhere, loopback},
			check: func(t *testing.T, s seen, _ string) {
				assert.Equal(t, "203.0.113.9, 198.51.100.2, 127.0.0.1", s.Header.Get("X-Forwarded-For"))
				assert.Equal(t, "shop.example", s.Header.Get("X-Forwarded-Host"))
				assert.Equal(t, "https", s.Header.Get("X-Forwarded-Proto"))
				assert.Equal(t, "for=203.0.113.9;proto=https, for=127.0.0.1", s.Header.Get("Forwarded"))
			},
		},
		{
			name:    "from an untrusted peer: replaced",
			trusted: []netip.Prefix{elsewhere},
			check: func(t *testing.T, s seen, front string) {
				assert.Equal(t, "127.0.0.1", s.Header.Get("X-Forwarded-For"))
				assert.Equal(t, front, s.Header.Get("X-Forwarded-Host"))
				assert.Equal(t, "http", s.Header.Get("X-Forwarded-Proto"))
				assert.Empty(t, s.Header.Get("Forwarded"))
			},
		},
		{
			name: "with no prefixes nobody is trusted",
			check: func(t *testing.T, s seen, _ string) {
				assert.Equal(t, "127.0.0.1", s.Header.Get("X-Forwarded-For"))
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, got := newEcho(t)
			front := newFrontend(t, up, tapproxy.WithDirector(tapproxy.TrustedForwardedHeaders(tt.trusted...)))
			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			for k, v := range inbound {
				req.Header[k] = v
			}
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			res.Body.Close()
			tt.check(t, <-got, hostOf(front.URL))
		})
	}
}

func TestDirectorsAccumulateAcrossOptions(t *testing.T) {
	up, got := newEcho(t)
	var order []string
	mark := func(s string) tapproxy.Director {
		return func(*httputil.ProxyRequest) { order = append(order, s) }
	}
	front := newFrontend(t, up,
		tapproxy.WithDirector(mark("a")),
		tapproxy.WithDirector(mark("b"), mark("c")))
	res, _ := get(t, front.Client(), front.URL)
	require.Equal(t, http.StatusOK, res.StatusCode)
	<-got
	assert.Equal(t, []string{"a", "b", "c"}, order)
}

func TestStripPrefixOutsideProxy(t *testing.T) {
	// Used with a bare ReverseProxy, StripPrefix has no target to join to
	// and routes the stripped path as is.
	up, got := newEcho(t)
	strip := tapproxy.StripPrefix("/api")
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(mustParse(t, up))
		strip(pr)
	}}
	front := newUpstream(t, rp.ServeHTTP)
	res, _ := get(t, front.Client(), front.URL+"/api/x")
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "/x", (<-got).Path)
}
