package tapproxytest_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/tapproxytest"
)

func TestNewServer(t *testing.T) {
	srv := tapproxytest.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "upstream saw "+r.URL.Path)
	}))

	assert.True(t, strings.HasPrefix(srv.URL, "http://127.0.0.1:"), srv.URL)
	assert.True(t, strings.HasPrefix(srv.UpstreamURL, "http://127.0.0.1:"), srv.UpstreamURL)
	assert.NotEqual(t, srv.URL, srv.UpstreamURL)

	res, body, err := get(t, srv.Client(), srv.URL+"/hello")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "upstream saw /hello", string(body))
	assert.Equal(t, 1, exchange(t, srv, 1).Seq)
}

func TestNewServerURL(t *testing.T) {
	// A "real" upstream: one the test did not build through the package.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "real "+r.URL.Path)
	}))
	defer up.Close()
	srv := tapproxytest.NewServerURL(t, up.URL+"/base")

	_, body, err := get(t, srv.Client(), srv.URL+"/x")
	require.NoError(t, err)
	assert.Equal(t, "real /base/x", string(body), "the target's path is joined")
	assert.Equal(t, up.URL+"/base", srv.UpstreamURL)
}

func TestNewServerURLWithTransport(t *testing.T) {
	up := httptest.NewTLSServer(text("secure"))
	defer up.Close()
	transport := tapproxy.NewTransport()
	transport.TLSClientConfig = &tls.Config{RootCAs: up.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	srv := tapproxytest.NewServerURL(t, up.URL,
		tapproxytest.WithTransport(transport),
		tapproxytest.WithFaults(tapproxytest.Truncate(3)))

	_, body, err := get(t, srv.Client(), srv.URL+"/")
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF, "faults wrap the given transport")
	assert.Equal(t, "sec", string(body))
}

func TestServerClosesOnCleanup(t *testing.T) {
	tb := &fakeTB{}
	srv := tapproxytest.NewServer(tb, text("ok"))
	_, _, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)

	tb.finish()
	_, err = http.Get(srv.URL + "/")
	assert.Error(t, err, "the proxy is closed")
	_, err = http.Get(srv.UpstreamURL + "/")
	assert.Error(t, err, "the fake upstream is closed")
	srv.Close() // again: no effect
	assert.Empty(t, tb.fatals)
}

func TestServerLogsToTB(t *testing.T) {
	up := httptest.NewServer(text("x"))
	target := up.URL
	up.Close()
	tb := &fakeTB{}
	srv := tapproxytest.NewServerURL(tb, target)
	defer tb.finish()

	res, _, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)
	exchange(t, srv, 1)
	logs := strings.Join(tb.allLogs(), "\n")
	assert.Contains(t, logs, "tapproxy: upstream error")
}

func TestServerProxyOptions(t *testing.T) {
	srv := tapproxytest.NewServer(t,
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.Header.Get("X-Added"))
		}),
		tapproxytest.WithProxyOptions(
			tapproxy.WithDirector(func(pr *httputil.ProxyRequest) { pr.Out.Header.Set("X-Added", "by director") }),
			nil,
		),
		nil)

	_, body, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, "by director", string(body))
	assert.Equal(t, "by director", exchange(t, srv, 1).Request.Header.Get("X-Added"))
}

func TestServerBadInput(t *testing.T) {
	tests := []struct {
		name  string
		start func(tb tapproxytest.TB) *tapproxytest.Server
		want  string
	}{
		{
			name:  "nil handler",
			start: func(tb tapproxytest.TB) *tapproxytest.Server { return tapproxytest.NewServer(tb, nil) },
			want:  "tapproxytest: NewServer: nil upstream handler",
		},
		{
			name: "max exchanges",
			start: func(tb tapproxytest.TB) *tapproxytest.Server {
				return tapproxytest.NewServer(tb, text("ok"), tapproxytest.WithMaxExchanges(0))
			},
			want: "tapproxytest: WithMaxExchanges(0)",
		},
		{
			name: "body limit",
			start: func(tb tapproxytest.TB) *tapproxytest.Server {
				return tapproxytest.NewServer(tb, text("ok"), tapproxytest.WithBodyLimit(-1))
			},
			want: "tapproxy: capture limit -1 is negative",
		},
		{
			name: "bad URL",
			start: func(tb tapproxytest.TB) *tapproxytest.Server {
				return tapproxytest.NewServerURL(tb, "://nope")
			},
			want: "tapproxytest: upstream URL",
		},
		{
			name: "URL without host",
			start: func(tb tapproxytest.TB) *tapproxytest.Server {
				return tapproxytest.NewServerURL(tb, "http:///path")
			},
			want: "has no host",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := &fakeTB{}
			srv := tt.start(tb)
			tb.finish()
			assert.Nil(t, srv)
			require.Len(t, tb.fatals, 1)
			assert.Contains(t, tb.fatals[0], tt.want)
		})
	}
}
