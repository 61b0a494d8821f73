package har_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

// benchBody is a small JSON response, the common case.
var benchBody = `{"items":[` + strings.Repeat(`{"id":1,"name":"widget"},`, 20) + `{"id":2}]}`

// inObserver makes one exchange through a proxy and calls f with it, inside
// the observer call, while the exchange is valid.
func inObserver(tb testing.TB, f func(ex *tapproxy.Exchange)) {
	tb.Helper()
	up := newUpstream(tb, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Add("Set-Cookie", "a=1; Path=/")
		w.Header().Add("Set-Cookie", "b=2; HttpOnly")
		io.WriteString(w, benchBody)
	})
	done := make(chan struct{})
	front := newFront(tb, up.URL, tapproxy.WithObserver(tapproxy.ObserverFunc(func(_ context.Context, ex *tapproxy.Exchange) {
		defer close(done)
		f(ex)
	})))
	req, err := http.NewRequest(http.MethodGet, front.URL+"/items?page=2&sort=name", nil)
	require.NoError(tb, err)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Cookie", "sid=abc; theme=dark")
	res, err := front.Client().Do(req)
	require.NoError(tb, err)
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	<-done
}

// BenchmarkFromExchange converts one typical exchange: a GET with a query,
// cookies both ways and a small JSON body.
func BenchmarkFromExchange(b *testing.B) {
	inObserver(b, func(ex *tapproxy.Exchange) {
		b.ReportAllocs()
		b.ResetTimer()
		var e har.Entry
		for range b.N {
			e = har.FromExchange(ex)
		}
		b.StopTimer()
		if e.Response.Content.Text != benchBody {
			b.Errorf("text %q", e.Response.Content.Text)
		}
	})
}

// TestFromExchangeAllocs holds the conversion to the allocations the entry
// holds: the time, the URL, the header, cookie and query lists, the body
// text and, from the proxy's redaction, nothing more.
func TestFromExchangeAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under -race")
	}
	inObserver(t, func(ex *tapproxy.Exchange) {
		allocs := testing.AllocsPerRun(100, func() { _ = har.FromExchange(ex) })
		// What the entry holds: startedDateTime, url, the request's
		// headers, cookies and query, the response's headers and
		// cookies, the body text: eight. Besides: the capture's reader
		// from Exchange.Body, and the URL's builder growing once or
		// twice.
		assert.LessOrEqual(t, allocs, 11.0)
		t.Logf("%.0f allocations per conversion", allocs)
	})
}
