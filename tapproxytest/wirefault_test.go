package tapproxytest_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy/tapproxytest"
)

// rawExchange sends a raw HTTP/1.1 request to the server's front over a new
// connection and returns every byte the server sent until it closed the
// connection, and the error that ended the reading.
func rawExchange(tb testing.TB, srv *tapproxytest.Server, request string) ([]byte, error) {
	tb.Helper()
	u, err := url.Parse(srv.URL)
	require.NoError(tb, err)
	conn, err := net.DialTimeout("tcp", u.Host, waitTimeout)
	require.NoError(tb, err)
	defer conn.Close()
	require.NoError(tb, conn.SetDeadline(time.Now().Add(waitTimeout)))
	_, err = io.WriteString(conn, request)
	require.NoError(tb, err)
	var got bytes.Buffer
	_, err = got.ReadFrom(conn)
	if err == nil {
		err = io.EOF // ReadFrom reports a clean end as no error
	}
	return got.Bytes(), err
}

const rawGet = "GET /x HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n"

// freshClient returns a client that opens a new connection for every
// request, so that Go's re-sending of idempotent requests on reused
// connections does not hide a connection fault.
func freshClient(srv *tapproxytest.Server) *http.Client {
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	return &http.Client{Transport: tr}
}

func TestConnectionFaultsOnTheWire(t *testing.T) {
	tests := []struct {
		name  string
		fault tapproxytest.Fault
		check func(t *testing.T, got []byte, err error)
	}{
		{"close sends nothing, then a FIN", tapproxytest.CloseConnection(), func(t *testing.T, got []byte, err error) {
			assert.Empty(t, got)
			assert.ErrorIs(t, err, io.EOF, "a FIN reads as EOF; a RST would be ECONNRESET")
		}},
		{"reset sends nothing, then a RST", tapproxytest.ResetConnection(), func(t *testing.T, got []byte, err error) {
			assert.Empty(t, got)
			assert.ErrorIs(t, err, syscall.ECONNRESET)
		}},
		{"malformed chunk", tapproxytest.MalformedChunk(), func(t *testing.T, got []byte, err error) {
			assert.Equal(t, "HTTP/1.1 200 OK\r\n"+
				"Content-Type: text/plain; charset=utf-8\r\n"+
				"Transfer-Encoding: chunked\r\n\r\n"+
				"zz\r\nnot a chunk\r\n", string(got))
			assert.ErrorIs(t, err, io.EOF)
		}},
		{"garbage", tapproxytest.Garbage(), func(t *testing.T, got []byte, err error) {
			require.Len(t, got, 66)
			assert.True(t, bytes.HasSuffix(got, []byte("\r\n")))
			line := got[:64]
			assert.False(t, bytes.HasPrefix(line, []byte("HTTP/")))
			assert.NotContains(t, string(line), " ")
			assert.NotContains(t, string(line), "\n")
			assert.ErrorIs(t, err, io.EOF)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int64
			srv := tapproxytest.NewServer(t, bodyUpstream(10, false, &calls), tapproxytest.WithFaults(tt.fault))
			got, err := rawExchange(t, srv, rawGet)
			tt.check(t, got, err)

			ex := exchange(t, srv, 1)
			assert.Equal(t, []string{tt.fault.String()}, ex.Faults)
			assert.Equal(t, 0, ex.Response.StatusCode, "the client got no status from the proxy")
			require.Error(t, ex.Err)
			assert.Contains(t, ex.Err.Error(), tt.fault.String())
			assert.Zero(t, calls.Load(), "the upstream is not contacted")
		})
	}
}

func TestGarbageSameSeedSameBytes(t *testing.T) {
	run := func(seed int64) []byte {
		srv := tapproxytest.NewServer(t, text("ok"),
			tapproxytest.WithFaults(tapproxytest.Garbage()), tapproxytest.WithSeed(seed))
		got, _ := rawExchange(t, srv, rawGet)
		return got
	}
	a, b, c := run(7), run(7), run(8)
	assert.Equal(t, a, b)
	assert.NotEqual(t, a, c)
}

func TestConnectionFaultsInGoClient(t *testing.T) {
	tests := []struct {
		name  string
		fault tapproxytest.Fault
		check func(t *testing.T, res *http.Response, err error)
	}{
		{"close is EOF", tapproxytest.CloseConnection(), func(t *testing.T, res *http.Response, err error) {
			assert.ErrorIs(t, err, io.EOF)
		}},
		{"reset is connection reset by peer", tapproxytest.ResetConnection(), func(t *testing.T, res *http.Response, err error) {
			assert.ErrorIs(t, err, syscall.ECONNRESET)
		}},
		{"garbage is a malformed response", tapproxytest.Garbage(), func(t *testing.T, res *http.Response, err error) {
			require.Error(t, err)
			assert.Contains(t, err.Error(), "malformed HTTP response")
		}},
		{"malformed chunk fails the body read", tapproxytest.MalformedChunk(), func(t *testing.T, res *http.Response, err error) {
			require.NoError(t, err, "the headers arrive")
			defer res.Body.Close()
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, []string{"chunked"}, res.TransferEncoding)
			_, err = io.ReadAll(res.Body)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "chunk")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithFaults(tt.fault))
			req, err := http.NewRequestWithContext(waitCtx(t), http.MethodGet, srv.URL+"/", nil)
			require.NoError(t, err)
			res, err := freshClient(srv).Do(req)
			tt.check(t, res, err)
			exchange(t, srv, 1)
		})
	}
}

func TestConnectionFaultReadsRequestBody(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithFaults(tapproxytest.CloseConnection()))
	body := strings.Repeat("b", 100<<10)
	_, err := freshClient(srv).Post(srv.URL+"/upload", "text/plain", strings.NewReader(body))
	assert.ErrorIs(t, err, io.EOF, "the whole body was read, so the close is a FIN")

	ex := exchange(t, srv, 1)
	assert.Equal(t, http.MethodPost, ex.Request.Method)
	assert.EqualValues(t, len(body), ex.Request.BodyBytes)
	assert.Equal(t, body, string(ex.Request.Body))
}

// TestCloseConnectionHiddenByGoRetry shows what the documentation of
// CloseConnection warns about: Go's client re-sends an idempotent request
// when a reused connection closes before the first response byte, so a
// one-shot fault on a GET goes unseen, while a POST sees it.
func TestCloseConnectionHiddenByGoRetry(t *testing.T) {
	tests := []struct {
		name      string
		method    string
		wantErr   bool
		exchanges int
	}{
		{"GET is re-sent on a new connection", http.MethodGet, false, 3},
		{"POST is not", http.MethodPost, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tapproxytest.NewServer(t, text("ok"),
				tapproxytest.WithFaults(tapproxytest.CloseConnection().On(tapproxytest.Nth(2))))
			c := srv.Client() // keeps connections alive
			send := func() error {
				req, err := http.NewRequestWithContext(waitCtx(t), tt.method, srv.URL+"/", nil)
				require.NoError(t, err)
				res, err := c.Do(req)
				if err != nil {
					return err
				}
				defer res.Body.Close()
				_, err = io.ReadAll(res.Body)
				return err
			}
			require.NoError(t, send(), "the first request opens the connection")
			err := send() // over the reused connection, which the fault closes
			if tt.wantErr {
				assert.ErrorIs(t, err, io.EOF)
			} else {
				assert.NoError(t, err, "the client re-sent the request and hid the fault")
			}

			assert.True(t, exchange(t, srv, 2).HasFault("close-connection"))
			if tt.exchanges == 3 {
				assert.Empty(t, exchange(t, srv, 3).Faults, "the re-sent request")
			}
			assert.Equal(t, tt.exchanges, srv.Recorder.Len())
		})
	}
}

func TestConnectionFaultsOnHTTP2(t *testing.T) {
	tests := []struct {
		name     string
		fault    tapproxytest.Fault
		headers  bool // the response headers arrive before the reset
		readFail bool
	}{
		{"close resets the stream", tapproxytest.CloseConnection(), false, false},
		{"reset resets the stream", tapproxytest.ResetConnection(), false, false},
		{"garbage resets the stream", tapproxytest.Garbage(), false, false},
		{"malformed chunk sends headers, then resets the stream", tapproxytest.MalformedChunk(), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithHTTP2(),
				tapproxytest.WithFaults(tt.fault.On(tapproxytest.Path("/broken"))))
			c := srv.Client()
			req, err := http.NewRequestWithContext(waitCtx(t), http.MethodGet, srv.URL+"/broken", nil)
			require.NoError(t, err)
			res, err := c.Do(req)
			if tt.headers {
				require.NoError(t, err)
				assert.Equal(t, 2, res.ProtoMajor)
				assert.Equal(t, http.StatusOK, res.StatusCode)
				_, err = io.ReadAll(res.Body)
				res.Body.Close()
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), "stream error")
			assert.Contains(t, err.Error(), "INTERNAL_ERROR")

			// Only the stream broke: the connection serves on.
			res2, body, err := get(t, c, srv.URL+"/fine")
			require.NoError(t, err)
			assert.Equal(t, 2, res2.ProtoMajor)
			assert.Equal(t, "ok", string(body))

			ex := exchange(t, srv, 1)
			assert.Equal(t, []string{tt.fault.String()}, ex.Faults)
			assert.Error(t, ex.Err)
		})
	}
}

func TestDribble(t *testing.T) {
	const total = 90 * time.Millisecond
	srv := tapproxytest.NewServer(t, bodyUpstream(12, true, nil),
		tapproxytest.WithFaults(tapproxytest.Dribble(3, total)))

	t.Run("on the wire, one chunk per piece", func(t *testing.T) {
		got, err := rawExchange(t, srv, rawGet)
		assert.ErrorIs(t, err, io.EOF)
		head, body, ok := bytes.Cut(got, []byte("\r\n\r\n"))
		require.True(t, ok, "%q", got)
		assert.Contains(t, string(head), "Transfer-Encoding: chunked")
		assert.Equal(t, "4\r\nabcd\r\n4\r\nefgh\r\n4\r\nij"+"ab\r\n0\r\n\r\n", string(body))
	})

	t.Run("a Go client gets the body, at the pace", func(t *testing.T) {
		req, err := http.NewRequestWithContext(waitCtx(t), http.MethodGet, srv.URL+"/", nil)
		require.NoError(t, err)
		start := time.Now()
		res, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		var pieces []string
		rd := bufio.NewReader(res.Body)
		for {
			buf := make([]byte, 64)
			n, err := rd.Read(buf)
			if n > 0 {
				pieces = append(pieces, string(buf[:n]))
			}
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
		}
		assert.Equal(t, "abcdefghijab", strings.Join(pieces, ""))
		assert.Len(t, pieces, 3, "each piece arrives on its own")
		// A lower bound only: the pace is a floor.
		assert.GreaterOrEqual(t, time.Since(start), total)
	})
}

func TestDribbleDeclaredLength(t *testing.T) {
	srv := tapproxytest.NewServer(t, bodyUpstream(10, false, nil),
		tapproxytest.WithFaults(tapproxytest.Dribble(4, 40*time.Millisecond)))
	got, err := rawExchange(t, srv, rawGet)
	assert.ErrorIs(t, err, io.EOF)
	head, body, ok := bytes.Cut(got, []byte("\r\n\r\n"))
	require.True(t, ok)
	assert.Contains(t, string(head), "Content-Length: 10")
	assert.Equal(t, "abcdefghij", string(body))
	assert.Equal(t, []string{"dribble(4,40ms)"}, exchange(t, srv, 1).Faults)
}
