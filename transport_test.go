package tapproxy_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

func TestNewTransportDefaults(t *testing.T) {
	tr := tapproxy.NewTransport()
	assert.True(t, tr.DisableCompression, "neither asks for nor undoes compression")
	assert.True(t, tr.ForceAttemptHTTP2, "HTTP/2 to TLS upstreams")
	assert.Nil(t, tr.Proxy, "the upstream is addressed directly")
	assert.GreaterOrEqual(t, tr.MaxIdleConnsPerHost, 100)
	assert.NotSame(t, tr, tapproxy.NewTransport(), "each call returns a transport of its own")
}

func TestDefaultTransportReusesConnectionsUnderLoad(t *testing.T) {
	const concurrency, rounds = 50, 4
	var dials atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dials.Add(1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	front := newFrontend(t, up.URL)
	client := front.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = concurrency

	for range rounds {
		var wg sync.WaitGroup
		for range concurrency {
			wg.Go(func() {
				res, err := client.Get(front.URL)
				if assert.NoError(t, err) {
					res.Body.Close()
				}
			})
		}
		wg.Wait()
	}
	// http.DefaultTransport keeps 2 idle connections per host: it would
	// dial about concurrency + (rounds-1)*(concurrency-2) times.
	require.Positive(t, dials.Load())
	assert.Less(t, dials.Load(), int64(2*concurrency), "connections are reused across rounds")
	t.Logf("%d upstream connections for %d requests", dials.Load(), concurrency*rounds)
}
