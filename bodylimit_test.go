package tapproxy_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

// bodyRead is what an upstream got of a request body.
type bodyRead struct {
	n   int
	err error
}

// bodyUpstream starts an upstream that reads the whole request body and
// reports how much it got and how the body ended. With early set it sends
// and flushes its response headers before it reads.
func bodyUpstream(tb testing.TB, h2, early bool) (string, func(opts ...tapproxy.Option) []tapproxy.Option, <-chan bodyRead) {
	tb.Helper()
	reads := make(chan bodyRead, 4)
	h := func(w http.ResponseWriter, r *http.Request) {
		if early {
			// Without full duplex an HTTP/1 server reads the request
			// body before it sends the response headers.
			_ = http.NewResponseController(w).EnableFullDuplex()
			_, _ = io.WriteString(w, "started")
			_ = http.NewResponseController(w).Flush()
		}
		b, err := io.ReadAll(r.Body)
		reads <- bodyRead{len(b), err}
	}
	if !h2 {
		return newUpstream(tb, h).URL, func(opts ...tapproxy.Option) []tapproxy.Option { return opts }, reads
	}
	up := newH2Upstream(tb, h)
	return up.URL, func(opts ...tapproxy.Option) []tapproxy.Option {
		return append([]tapproxy.Option{tapproxy.WithTransport(trustingTransport(tb, up))}, opts...)
	}, reads
}

func nextRead(tb testing.TB, reads <-chan bodyRead) bodyRead {
	tb.Helper()
	select {
	case r := <-reads:
		return r
	case <-time.After(waitTimeout):
		tb.Fatal("the upstream did not finish reading")
		return bodyRead{}
	}
}

// unsized hides a body's length, so that the client sends it chunked (or,
// over HTTP/2, without content-length).
func unsized(s string) io.Reader { return io.MultiReader(strings.NewReader(s)) }

const bodyLimit = 1000

// TestRequestBodyLimit checks bodies within and over the limit, declared
// and chunked, over HTTP/1.1 and HTTP/2: within it they arrive whole; a
// declared length over it is answered 413 without contacting the
// upstream; a chunked body that grows past it is cut, the client gets
// 413, and the upstream sees its body end in an error.
func TestRequestBodyLimit(t *testing.T) {
	tests := []struct {
		name     string
		body     func() io.Reader
		size     int
		status   int
		upstream bool // the upstream is contacted
	}{
		{"declared within", func() io.Reader { return strings.NewReader(strings.Repeat("x", bodyLimit)) }, bodyLimit, http.StatusOK, true},
		{"declared over", func() io.Reader { return strings.NewReader(strings.Repeat("x", bodyLimit+1)) }, bodyLimit + 1, http.StatusRequestEntityTooLarge, false},
		{"chunked within", func() io.Reader { return unsized(strings.Repeat("x", bodyLimit)) }, bodyLimit, http.StatusOK, true},
		{"chunked over", func() io.Reader { return unsized(strings.Repeat("x", 5*bodyLimit)) }, 5 * bodyLimit, http.StatusRequestEntityTooLarge, true},
	}
	for _, leg := range legs {
		t.Run(leg.name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					upURL, with, reads := bodyUpstream(t, leg.h2, false)
					rec := newRecorder()
					proxy := newProxy(t, upURL, with(tapproxy.WithObserver(rec), tapproxy.WithRequestBodyLimit(bodyLimit))...)
					front := serve(t, proxy, leg.h2)

					res, err := front.Client().Post(front.URL+"/upload", "text/plain", tt.body())
					require.NoError(t, err)
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					assert.Equal(t, tt.status, res.StatusCode)

					o := rec.next(t)
					assert.Equal(t, tt.status, o.Status)
					if !tt.upstream {
						select {
						case r := <-reads:
							t.Fatalf("the upstream was contacted and read %d bytes", r.n)
						default:
						}
					} else {
						r := nextRead(t, reads)
						if tt.status == http.StatusOK {
							assert.NoError(t, r.err)
							assert.Equal(t, tt.size, r.n)
						} else {
							assert.Error(t, r.err, "the upstream took a cut body for a whole one")
							assert.LessOrEqual(t, r.n, bodyLimit)
						}
					}
					if tt.status == http.StatusOK {
						assert.NoError(t, o.Err)
						assert.EqualValues(t, tt.size, o.ReqBodyBytes)
					} else {
						assert.ErrorIs(t, o.Err, tapproxy.ErrBadRequest)
						var mbe *http.MaxBytesError
						require.ErrorAs(t, o.Err, &mbe)
						assert.EqualValues(t, bodyLimit, mbe.Limit)
						assert.LessOrEqual(t, o.ReqBodyBytes, int64(bodyLimit))
					}
					assert.Equal(t, 1, closeAndCount(t, front, rec))
				})
			}
		})
	}
}

// TestRequestBodyLimitAfterResponseStarted checks that a body that grows
// past the limit once the upstream's response has started aborts the
// exchange: the client's response breaks off, and the upstream sees its
// request body end in an error. The client speaks HTTP/2, where a
// response can start while the request body still streams (an HTTP/1
// server reads the body before it answers); the upstream speaks either.
func TestRequestBodyLimitAfterResponseStarted(t *testing.T) {
	for _, leg := range legs {
		t.Run("upstream "+leg.name, func(t *testing.T) {
			upURL, with, reads := bodyUpstream(t, leg.h2, true)
			rec := newRecorder()
			proxy := newProxy(t, upURL, with(tapproxy.WithObserver(rec), tapproxy.WithRequestBodyLimit(bodyLimit))...)
			front := serve(t, proxy, true)

			// Half the limit goes first; the rest only once the response
			// has started.
			pr, pw := io.Pipe()
			started, wrote := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(wrote)
				_, _ = io.WriteString(pw, strings.Repeat("x", bodyLimit/2))
				<-started
				_, _ = io.WriteString(pw, strings.Repeat("x", 5*bodyLimit))
				pw.Close()
			}()
			defer func() {
				pr.Close() // unblocks the writer once nobody reads
				<-wrote
			}()
			res, err := front.Client().Post(front.URL+"/upload", "text/plain", pr)
			close(started)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, res.StatusCode)
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			assert.Error(t, err, "the response ended cleanly after the request body was cut")

			r := nextRead(t, reads)
			assert.Error(t, r.err, "the upstream took a cut body for a whole one")
			assert.LessOrEqual(t, r.n, bodyLimit)

			o := rec.next(t)
			assert.ErrorIs(t, o.Err, tapproxy.ErrBadRequest)
			var mbe *http.MaxBytesError
			assert.True(t, errors.As(o.Err, &mbe))
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

// TestRequestBodyLimitOffByDefault checks that without the option a large
// chunked body goes through whole.
func TestRequestBodyLimitOffByDefault(t *testing.T) {
	upURL, _, reads := bodyUpstream(t, false, false)
	front := newFrontend(t, upURL)
	body := bytes.Repeat([]byte("y"), 1<<20)
	res, err := front.Client().Post(front.URL, "text/plain", io.MultiReader(bytes.NewReader(body)))
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	r := nextRead(t, reads)
	assert.NoError(t, r.err)
	assert.Equal(t, len(body), r.n)
}
