package tapproxy_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tapproxy/tapproxy"
)

func TestProxyRelaysAndObserves(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("hello " + r.URL.Path))
	})
	rec := newRecorder()
	front := newFrontend(t, up.URL, tapproxy.WithObserver(rec))

	res, body := get(t, front.Client(), front.URL+"/x")
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "hello /x", string(body))

	o := rec.next(t)
	assert.Equal(t, "GET", o.Method)
	assert.Equal(t, "/x", o.Path)
	assert.Equal(t, http.StatusOK, o.Status)
	assert.Equal(t, "hello /x", string(o.Body))
	assert.EqualValues(t, len("hello /x"), o.BodyBytes)
	assert.False(t, o.Truncated)
	assert.NoError(t, o.Err)
	assert.Positive(t, o.TimeToHeaders)
	assert.GreaterOrEqual(t, o.Duration, o.TimeToHeaders)
	require.Equal(t, 1, closeAndCount(t, front, rec))
}

// wsURL turns an http:// test server URL into a ws:// one.
func wsURL(u string) string { return "ws" + strings.TrimPrefix(u, "http") }

func TestWebSocketUpgrade(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return // the client closed, as the test does at its end
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	})
	rec := newRecorder()
	front := newFrontend(t, up.URL, tapproxy.WithObserver(rec))

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, res, err := websocket.Dial(ctx, wsURL(front.URL), &websocket.DialOptions{HTTPClient: front.Client()})
	require.NoError(t, err)
	defer c.CloseNow()
	assert.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)

	for _, msg := range []string{"hello", "again"} {
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(msg)))
		typ, got, err := c.Read(ctx)
		require.NoError(t, err)
		assert.Equal(t, websocket.MessageText, typ)
		assert.Equal(t, msg, string(got))
	}
	// The upgraded connection is still open: no observer call yet.
	assert.Zero(t, rec.count())

	require.NoError(t, c.Close(websocket.StatusNormalClosure, "done"))
	o := rec.next(t)
	assert.True(t, o.Upgraded)
	assert.Equal(t, http.StatusSwitchingProtocols, o.Status)
	assert.Empty(t, o.Body, "upgraded exchanges have no capture")
	assert.Zero(t, o.BodyBytes)
	assert.False(t, o.Truncated)
	assert.NoError(t, o.Err)
	assert.GreaterOrEqual(t, o.Duration, o.TimeToHeaders)
	assert.Equal(t, 1, closeAndCount(t, front, rec))
}

// TestRawUpgrade pins a 101 upgrade to a protocol that is not WebSocket: the
// client gets the upgraded connection as an io.ReadWriteCloser.
func TestRawUpgrade(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "tap-echo" {
			http.Error(w, "want Upgrade: tap-echo", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tap-echo\r\n\r\n")
		brw.Flush()
		// Echo one line, then close: the proxy sees the upstream end.
		line, err := brw.ReadString('\n')
		if err != nil {
			t.Error(err)
			return
		}
		brw.WriteString("echo: " + line)
		brw.Flush()
	})
	rec := newRecorder()
	front := newFrontend(t, up.URL, tapproxy.WithObserver(rec))

	req, err := http.NewRequest(http.MethodGet, front.URL, nil)
	require.NoError(t, err)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "tap-echo")
	res, err := front.Client().Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	conn, ok := res.Body.(io.ReadWriteCloser)
	require.True(t, ok, "the upgraded body is a %T", res.Body)
	_, err = io.WriteString(conn, "ping\n")
	require.NoError(t, err)
	got, err := io.ReadAll(conn)
	require.NoError(t, err)
	assert.Equal(t, "echo: ping\n", string(got))
	require.NoError(t, conn.Close())

	o := rec.next(t)
	assert.True(t, o.Upgraded)
	assert.Equal(t, http.StatusSwitchingProtocols, o.Status)
	assert.Empty(t, o.Body)
	assert.NoError(t, o.Err)
	assert.Equal(t, 1, closeAndCount(t, front, rec))
}

// legs is the protocol matrix most tests run in: HTTP/1.1 on both sides,
// or HTTP/2 over TLS on both.
var legs = []struct {
	name string
	h2   bool
}{
	{"http1", false},
	{"http2", true},
}

// newPair starts an upstream running h and a proxy in front of it that
// speaks HTTP/2 on both legs when h2 is set.
func newPair(t *testing.T, h2 bool, h http.HandlerFunc, opts ...tapproxy.Option) (up, front *httptest.Server) {
	t.Helper()
	if !h2 {
		up = newUpstream(t, h)
		return up, newFrontend(t, up.URL, opts...)
	}
	up = newH2Upstream(t, h)
	opts = append([]tapproxy.Option{tapproxy.WithTransport(trustingTransport(t, up))}, opts...)
	return up, newH2Frontend(t, up.URL, opts...)
}

func TestEarlyHintsForwarded(t *testing.T) {
	const link = "</style.css>; rel=preload; as=style"
	for _, leg := range legs {
		t.Run(leg.name, func(t *testing.T) {
			rec := newRecorder()
			got1xx := make(chan struct{})
			_, front := newPair(t, leg.h2, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Link", link)
				w.WriteHeader(http.StatusEarlyHints)
				// The final headers go out only once the client has the
				// hints: they are forwarded as they arrive.
				select {
				case <-got1xx:
				case <-time.After(waitTimeout):
					t.Error("the early hints did not reach the client before the final response")
				}
				w.Header().Del("Link")
				w.Header().Set("Content-Type", "text/plain")
				w.Write([]byte("done"))
			}, tapproxy.WithObserver(rec))

			var (
				mu     sync.Mutex
				codes  []int
				links  []string
				hintAt time.Time
			)
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				mu.Lock()
				defer mu.Unlock()
				codes = append(codes, code)
				links = append(links, h.Get("Link"))
				if len(codes) == 1 {
					hintAt = time.Now()
					close(got1xx)
				}
				return nil
			}}
			req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			require.NoError(t, err)

			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, "done", string(body))
			mu.Lock()
			assert.Equal(t, []int{http.StatusEarlyHints}, codes)
			assert.Equal(t, []string{link}, links)
			mu.Unlock()

			o := rec.next(t)
			assert.Equal(t, http.StatusOK, o.Status, "observers see the final response")
			mu.Lock()
			assert.True(t, o.Start.Add(o.TimeToHeaders).After(hintAt),
				"TimeToHeaders runs to the final headers, which came after the hints")
			mu.Unlock()
			assert.Equal(t, "done", string(o.Body))
			assert.NoError(t, o.Err)
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

func TestTrailersReachClientAndExchange(t *testing.T) {
	for _, leg := range legs {
		for _, declared := range []bool{false, true} {
			if declared && !leg.h2 {
				continue // HTTP/1.1 sends trailers only after a chunked body
			}
			t.Run(fmt.Sprintf("%s/declared length %v", leg.name, declared), func(t *testing.T) {
				testTrailers(t, leg.h2, declared)
			})
		}
	}
}

// testTrailers: with declared, the upstream declares the body's length and
// sends trailers after it, which the proxy must wait for.
func testTrailers(t *testing.T, h2, declared bool) {
	rec := newRecorder()
	_, front := newPair(t, h2, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Announced")
		if declared {
			w.Header().Set("Content-Length", "4")
		}
		w.Write([]byte("body"))
		http.NewResponseController(w).Flush()
		w.Header().Set("X-Announced", "a")
		w.Header().Set(http.TrailerPrefix+"X-Unannounced", "u")
	}, tapproxy.WithObserver(rec))

	res, body := get(t, front.Client(), front.URL)
	assert.Equal(t, "body", string(body))
	assert.Equal(t, "a", res.Trailer.Get("X-Announced"))
	assert.Equal(t, "u", res.Trailer.Get("X-Unannounced"))

	o := rec.next(t)
	assert.Equal(t, "a", o.Trailer.Get("X-Announced"))
	assert.Equal(t, "u", o.Trailer.Get("X-Unannounced"))
	assert.Equal(t, "body", string(o.Body))
	assert.EqualValues(t, 4, o.BodyBytes)
	assert.NoError(t, o.Err)
	assert.Equal(t, 1, closeAndCount(t, front, rec))
}

// TestStreamsFlushAsTheyArrive has the upstream hold back the rest of its
// body until the client confirms it got the first event. A proxy that
// buffered would make the upstream give up waiting and fail the test.
func TestStreamsFlushAsTheyArrive(t *testing.T) {
	const first, second = "data: first\n\n", "data: second\n\n"
	tests := []struct {
		name        string
		contentType string
		length      bool // declare a Content-Length
		opts        []tapproxy.Option
	}{
		{"event stream", "text/event-stream", false, nil},
		{"event stream of declared length", "text/event-stream", true, nil},
		{"unknown length", "application/octet-stream", false, nil},
		{"negative flush interval", "application/octet-stream", true, []tapproxy.Option{tapproxy.WithFlushInterval(-1)}},
	}
	for _, tt := range tests {
		for _, leg := range legs {
			t.Run(tt.name+"/"+leg.name, func(t *testing.T) {
				confirmed := make(chan struct{})
				rec := newRecorder()
				_, front := newPair(t, leg.h2, func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", tt.contentType)
					if tt.length {
						w.Header().Set("Content-Length", fmt.Sprint(len(first+second)))
					}
					io.WriteString(w, first)
					http.NewResponseController(w).Flush()
					select {
					case <-confirmed:
					case <-time.After(waitTimeout):
						t.Error("the first event did not reach the client before the upstream finished")
					}
					io.WriteString(w, second)
				}, append(tt.opts, tapproxy.WithObserver(rec))...)

				res, err := front.Client().Get(front.URL)
				require.NoError(t, err)
				defer res.Body.Close()
				br := bufio.NewReader(res.Body)
				var got strings.Builder
				for got.Len() < len(first) {
					line, err := br.ReadString('\n')
					require.NoError(t, err)
					got.WriteString(line)
				}
				close(confirmed)
				assert.Equal(t, first, got.String())
				rest, err := io.ReadAll(br)
				require.NoError(t, err)
				assert.Equal(t, second, string(rest))

				o := rec.next(t)
				assert.Equal(t, first+second, string(o.Body))
				assert.NoError(t, o.Err)
				assert.Equal(t, 1, closeAndCount(t, front, rec))
			})
		}
	}
}

// gatedBody is a request body of pseudo-random bytes that it hashes as it
// sends them. Once it has sent gateAt bytes it waits for gate to close
// before it sends more, so that a proxy that buffered the body before
// sending it upstream would stall it.
type gatedBody struct {
	src    io.Reader
	h      hash.Hash
	sent   int64
	gateAt int64
	gate   <-chan struct{}
}

func newGatedBody(size, gateAt int64, gate <-chan struct{}) *gatedBody {
	return &gatedBody{
		src:    io.LimitReader(rand.NewChaCha8([32]byte{1}), size),
		h:      sha256.New(),
		gateAt: gateAt,
		gate:   gate,
	}
}

func (b *gatedBody) Read(p []byte) (int, error) {
	if b.gate != nil {
		if b.sent >= b.gateAt {
			select {
			case <-b.gate:
				b.gate = nil
			case <-time.After(waitTimeout):
				return 0, errors.New("the upstream got no byte before the client sent its first MiB: the body is buffered")
			}
		} else {
			p = p[:min(int64(len(p)), b.gateAt-b.sent)]
		}
	}
	n, err := b.src.Read(p)
	b.h.Write(p[:n])
	b.sent += int64(n)
	return n, err
}

func TestRequestBodyStreams(t *testing.T) {
	const size, gateAt = 32 << 20, 1 << 20
	tests := []struct {
		name     string
		h2       bool
		declared bool
	}{
		{"http1 chunked", false, false},
		{"http1 declared length", false, true},
		{"http2", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			received := make(chan struct{})
			rec := newRecorder()
			_, front := newPair(t, tt.h2, func(w http.ResponseWriter, r *http.Request) {
				h := sha256.New()
				buf := make([]byte, 32<<10)
				n, err := r.Body.Read(buf)
				h.Write(buf[:n])
				close(received)
				if err != nil && err != io.EOF {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				m, err := io.CopyBuffer(h, r.Body, buf)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				fmt.Fprintf(w, "%d %x", int64(n)+m, h.Sum(nil))
			}, tapproxy.WithObserver(rec))

			body := newGatedBody(size, gateAt, received)
			req, err := http.NewRequest(http.MethodPost, front.URL, body)
			require.NoError(t, err)
			if tt.declared {
				req.ContentLength = size
			}
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			got, err := io.ReadAll(res.Body)
			res.Body.Close()
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, res.StatusCode, string(got))
			assert.Equal(t, fmt.Sprintf("%d %x", size, body.h.Sum(nil)), string(got))

			o := rec.next(t)
			assert.EqualValues(t, size, o.ReqBodyBytes)
			assert.NoError(t, o.Err)
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

func TestClientGoneMidBody(t *testing.T) {
	for _, leg := range legs {
		t.Run(leg.name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			canceled := make(chan struct{})
			rec := newRecorder()
			up, front := newPair(t, leg.h2, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/octet-stream")
				w.Write(bytes.Repeat([]byte("x"), 1024))
				http.NewResponseController(w).Flush()
				select {
				case <-r.Context().Done():
					close(canceled)
				case <-time.After(waitTimeout):
					t.Error("the upstream request was not canceled when the client left")
				}
			}, tapproxy.WithObserver(rec))

			ctx, cancel := context.WithCancel(context.Background())
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			client := front.Client()
			res, err := client.Do(req)
			require.NoError(t, err)
			_, err = io.ReadFull(res.Body, make([]byte, 1024))
			require.NoError(t, err)
			cancel()
			res.Body.Close()

			select {
			case <-canceled:
			case <-time.After(waitTimeout):
				t.Fatal("the upstream request was not canceled")
			}
			o := rec.next(t)
			assert.ErrorIs(t, o.Err, tapproxy.ErrClientGone)
			assert.EqualValues(t, 1024, o.BodyBytes)
			assert.Equal(t, http.StatusOK, o.Status)
			assert.Equal(t, 1, closeAndCount(t, front, rec))

			up.Close()
			client.CloseIdleConnections()
			goleak.VerifyNone(t, ignore)
		})
	}
}

func TestHeaders(t *testing.T) {
	tests := []struct {
		name   string
		opts   []tapproxy.Option
		want   map[string]string // "" means absent
		wantFn func(t *testing.T, front *httptest.Server, got http.Header)
	}{{
		name: "hop-by-hop and spoofed forwarding headers are dropped",
		opts: []tapproxy.Option{tapproxy.WithDirector(tapproxy.SetHeader("X-Set", "director"))},
		want: map[string]string{
			"X-Hop":               "",
			"Keep-Alive":          "",
			"Proxy-Connection":    "",
			"Proxy-Authorization": "",
			"Upgrade":             "",
			"Te":                  "trailers",
			"X-Forwarded-For":     "",
			"X-Forwarded-Host":    "",
			"X-Forwarded-Proto":   "",
			"Forwarded":           "",
			"X-Set":               "director", // listed in Connection by the client
			"X-Keep":              "yes",
		},
	}, {
		name: "ForwardedHeaders sets fresh ones",
		opts: []tapproxy.Option{tapproxy.WithDirector(tapproxy.ForwardedHeaders())},
		want: map[string]string{
			"X-Forwarded-For":   "127.0.0.1",
			"X-Forwarded-Proto": "http",
			"Forwarded":         "",
		},
		wantFn: func(t *testing.T, front *httptest.Server, got http.Header) {
			assert.Equal(t, strings.TrimPrefix(front.URL, "http://"), got.Get("X-Forwarded-Host"))
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := make(chan http.Header, 1)
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				seen <- r.Header.Clone()
				w.Header().Set("Connection", "X-Resp-Hop")
				w.Header().Set("X-Resp-Hop", "1")
				w.Header().Set("Keep-Alive", "timeout=5")
				w.Header().Set("X-Resp-Keep", "yes")
			})
			rec := newRecorder()
			front := newFrontend(t, up.URL, append(tt.opts, tapproxy.WithObserver(rec))...)

			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			req.Header.Set("Connection", "X-Hop, X-Set")
			req.Header.Set("X-Hop", "1")
			req.Header.Set("X-Set", "client")
			req.Header.Set("Keep-Alive", "300")
			req.Header.Set("Proxy-Connection", "keep-alive")
			req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
			req.Header.Set("Upgrade", "h2c")
			req.Header.Set("Te", "gzip, trailers")
			req.Header.Set("X-Forwarded-For", "203.0.113.7")
			req.Header.Set("X-Forwarded-Host", "spoofed.example")
			req.Header.Set("X-Forwarded-Proto", "https")
			req.Header.Set("Forwarded", "for=203.0.113.7")
			req.Header.Set("X-Keep", "yes")
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			io.Copy(io.Discard, res.Body)
			res.Body.Close()

			got := <-seen
			for k, v := range tt.want {
				if v == "" {
					assert.NotContains(t, got, k)
				} else {
					assert.Equal(t, []string{v}, got[k], k)
				}
			}
			if tt.wantFn != nil {
				tt.wantFn(t, front, got)
			}
			assert.NotContains(t, res.Header, "X-Resp-Hop")
			assert.NotContains(t, res.Header, "Keep-Alive")
			assert.Equal(t, "yes", res.Header.Get("X-Resp-Keep"))

			o := rec.next(t)
			assert.Equal(t, got.Get("X-Set"), o.OutHeader.Get("X-Set"), "the exchange shows the request as sent")
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

func TestCompressedBytesPassUnchanged(t *testing.T) {
	var zbuf bytes.Buffer
	zw := gzip.NewWriter(&zbuf)
	zw.Write(bytes.Repeat([]byte("tapproxy streams gzip as gzip. "), 200))
	zw.Close()
	gz := zbuf.Bytes()

	tests := []struct {
		name           string
		h2             bool
		declared       bool
		acceptEncoding string // sent by the client
	}{
		{"http1 declared length", false, true, ""},
		{"http1 chunked", false, false, ""},
		{"http1 client asks for gzip", false, true, "gzip"},
		{"http2 declared length", true, true, ""},
		{"http2 client asks for gzip", true, false, "gzip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := make(chan string, 1)
			rec := newRecorder()
			_, front := newPair(t, tt.h2, func(w http.ResponseWriter, r *http.Request) {
				seen <- strings.Join(r.Header.Values("Accept-Encoding"), ",")
				w.Header().Set("Content-Type", "text/plain")
				w.Header().Set("Content-Encoding", "gzip")
				if tt.declared {
					w.Header().Set("Content-Length", fmt.Sprint(len(gz)))
				}
				w.Write(gz[:len(gz)/2])
				http.NewResponseController(w).Flush()
				w.Write(gz[len(gz)/2:])
			}, tapproxy.WithObserver(rec))

			ct := front.Client().Transport.(*http.Transport).Clone()
			ct.DisableCompression = true
			client := &http.Client{Transport: ct}
			t.Cleanup(ct.CloseIdleConnections)
			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			if tt.acceptEncoding != "" {
				req.Header.Set("Accept-Encoding", tt.acceptEncoding)
			}
			res, err := client.Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			require.NoError(t, err)

			assert.Equal(t, tt.acceptEncoding, <-seen, "the proxy must not ask for compression on its own")
			assert.False(t, res.Uncompressed)
			assert.Equal(t, "gzip", res.Header.Get("Content-Encoding"))
			assert.Equal(t, gz, body, "the client gets the upstream's bytes")

			o := rec.next(t)
			assert.Equal(t, gz, o.Body, "the capture holds the bytes as streamed")
			assert.Equal(t, "gzip", o.Header.Get("Content-Encoding"))
			assert.EqualValues(t, len(gz), o.BodyBytes)
			assert.NoError(t, o.Err)
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

// rawUpstream serves every connection by reading the request head, writing
// reply as it is, and closing. It returns the URL to reach it.
func rawUpstream(t *testing.T, reply string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitTimeout))
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, reply)
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return "http://" + l.Addr().String()
}

// resetAfter returns a handler that sends half of a 1000-byte body, with
// or without declaring its length, and then breaks the connection.
func resetAfter(t *testing.T, declared bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if declared {
			w.Header().Set("Content-Length", "1000")
		}
		w.Write(bytes.Repeat([]byte("r"), 500))
		rc := http.NewResponseController(w)
		rc.Flush()
		if r.ProtoMajor == 2 {
			panic(http.ErrAbortHandler) // resets the stream
		}
		conn, _, err := rc.Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		conn.Close()
	}
}

var errorKinds = []error{
	tapproxy.ErrUpstreamUnavailable,
	tapproxy.ErrUpstreamTimeout,
	tapproxy.ErrUpstreamReset,
	tapproxy.ErrUpstreamMalformed,
	tapproxy.ErrClientGone,
}

func TestUpstreamFailures(t *testing.T) {
	malformed := func(reply string) func(t *testing.T) (string, []tapproxy.Option) {
		return func(t *testing.T) (string, []tapproxy.Option) { return rawUpstream(t, reply), nil }
	}
	tests := []struct {
		name      string
		setup     func(t *testing.T) (target string, opts []tapproxy.Option)
		status    int
		kind      error
		response  bool  // an upstream response arrived
		bodyBytes int64 // delivered before the failure
	}{{
		name: "dial refused",
		setup: func(t *testing.T) (string, []tapproxy.Option) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			addr := l.Addr().String()
			l.Close()
			return "http://" + addr, nil
		},
		status: http.StatusBadGateway,
		kind:   tapproxy.ErrUpstreamUnavailable,
	}, {
		name: "response header timeout",
		setup: func(t *testing.T) (string, []tapproxy.Option) {
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-time.After(waitTimeout):
					t.Error("the proxy did not give up on the upstream")
				}
			})
			tr := tapproxy.NewTransport()
			tr.ResponseHeaderTimeout = 50 * time.Millisecond
			t.Cleanup(tr.CloseIdleConnections)
			return up.URL, []tapproxy.Option{tapproxy.WithTransport(tr)}
		},
		status: http.StatusGatewayTimeout,
		kind:   tapproxy.ErrUpstreamTimeout,
	}, {
		name:   "not http",
		setup:  malformed("SSH-2.0-OpenSSH_9.6\r\n\r\n"),
		status: http.StatusBadGateway,
		kind:   tapproxy.ErrUpstreamMalformed,
	}, {
		name:   "bad status code",
		setup:  malformed("HTTP/1.1 abc OK\r\n\r\n"),
		status: http.StatusBadGateway,
		kind:   tapproxy.ErrUpstreamMalformed,
	}, {
		name:   "bad header line",
		setup:  malformed("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"),
		status: http.StatusBadGateway,
		kind:   tapproxy.ErrUpstreamMalformed,
	}, {
		name:   "conflicting lengths",
		setup:  malformed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
		status: http.StatusBadGateway,
		kind:   tapproxy.ErrUpstreamMalformed,
	}, {
		name:   "unknown transfer encoding",
		setup:  malformed("HTTP/1.1 200 OK\r\nTransfer-Encoding: bogus\r\n\r\nabcd"),
		status: http.StatusBadGateway,
		kind:   tapproxy.ErrUpstreamMalformed,
	}, {
		name: "reset in a declared-length body",
		setup: func(t *testing.T) (string, []tapproxy.Option) {
			return newUpstream(t, resetAfter(t, true)).URL, nil
		},
		status:    http.StatusOK,
		kind:      tapproxy.ErrUpstreamReset,
		response:  true,
		bodyBytes: 500,
	}, {
		name: "reset in a chunked body",
		setup: func(t *testing.T) (string, []tapproxy.Option) {
			return newUpstream(t, resetAfter(t, false)).URL, nil
		},
		status:    http.StatusOK,
		kind:      tapproxy.ErrUpstreamReset,
		response:  true,
		bodyBytes: 500,
	}, {
		name: "http2 stream reset",
		setup: func(t *testing.T) (string, []tapproxy.Option) {
			up := newH2Upstream(t, resetAfter(t, true))
			return up.URL, []tapproxy.Option{tapproxy.WithTransport(trustingTransport(t, up))}
		},
		status:    http.StatusOK,
		kind:      tapproxy.ErrUpstreamReset,
		response:  true,
		bodyBytes: 500,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, opts := tt.setup(t)
			rec := newRecorder()
			front := newFrontend(t, target, append(opts, tapproxy.WithObserver(rec))...)

			res, err := front.Client().Get(front.URL)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			assert.Equal(t, tt.status, res.StatusCode)
			if tt.response {
				assert.Error(t, err, "a client must not take a broken body for a whole one")
				assert.Equal(t, strings.Repeat("r", int(tt.bodyBytes)), string(body))
			} else {
				assert.NoError(t, err)
			}

			o := rec.next(t)
			for _, kind := range errorKinds {
				if kind == tt.kind {
					assert.ErrorIs(t, o.Err, kind)
				} else {
					assert.NotErrorIs(t, o.Err, kind)
				}
			}
			assert.Equal(t, tt.response, o.HasResponse)
			assert.Equal(t, tt.bodyBytes, o.BodyBytes)
			assert.Equal(t, strings.Repeat("r", int(tt.bodyBytes)), string(o.Body))
			assert.Equal(t, 1, closeAndCount(t, front, rec), "exactly one observer call")
		})
	}
}

// TestDeliveredDeclaredBodyIsClean: once the client has every byte of a body
// of declared length, its leaving is no failure, even when the upstream has
// not yet ended the response (an HTTP/2 upstream ends the stream only when
// its handler returns).
func TestDeliveredDeclaredBodyIsClean(t *testing.T) {
	const n = 4096
	for _, leg := range legs {
		t.Run("upstream "+leg.name, func(t *testing.T) {
			release := make(chan struct{})
			defer close(release)
			h := func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", fmt.Sprint(n))
				w.Write(bytes.Repeat([]byte("d"), n))
				http.NewResponseController(w).Flush()
				select {
				case <-r.Context().Done():
				case <-release:
				}
			}
			rec := newRecorder()
			opts := []tapproxy.Option{tapproxy.WithObserver(rec)}
			var target string
			if leg.h2 {
				up := newH2Upstream(t, h)
				target = up.URL
				opts = append(opts, tapproxy.WithTransport(trustingTransport(t, up)))
			} else {
				target = newUpstream(t, h).URL
			}
			front := newFrontend(t, target, opts...)

			// Without keep-alives the client closes its connection once it
			// has read the body.
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: waitTimeout}
			res, body := get(t, client, front.URL)
			assert.EqualValues(t, n, res.ContentLength)
			assert.Len(t, body, n)

			o := rec.next(t)
			assert.NoError(t, o.Err)
			assert.EqualValues(t, n, o.BodyBytes)
			assert.Equal(t, 1, closeAndCount(t, front, rec))
		})
	}
}

// TestFramingUnchanged pins that observing never changes how a response is
// framed: what the client can tell of it is what the upstream sent.
func TestFramingUnchanged(t *testing.T) {
	half := strings.Repeat("f", 2500)
	tests := []struct {
		name    string
		h       http.HandlerFunc
		length  int64 // as the client sees it; -1 for unknown
		chunked bool  // over HTTP/1.1
		body    string
	}{{
		name: "declared length",
		h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5000")
			io.WriteString(w, half)
			http.NewResponseController(w).Flush()
			io.WriteString(w, half)
		},
		length: 5000,
		body:   half + half,
	}, {
		name: "unknown length",
		h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, half)
			http.NewResponseController(w).Flush()
			io.WriteString(w, half)
		},
		length:  -1,
		chunked: true,
		body:    half + half,
	}, {
		// Over HTTP/2, a 204 whose headers were flushed ahead of the end
		// of the stream would reach the client with an unknown length.
		name:   "no content",
		h:      func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) },
		length: 0,
	}, {
		name:   "empty",
		h:      func(w http.ResponseWriter, r *http.Request) {},
		length: 0,
	}}
	for _, tt := range tests {
		for _, leg := range legs {
			t.Run(tt.name+"/"+leg.name, func(t *testing.T) {
				rec := newRecorder()
				_, front := newPair(t, leg.h2, tt.h, tapproxy.WithObserver(rec))

				res, body := get(t, front.Client(), front.URL)
				assert.Equal(t, tt.body, string(body))
				assert.Equal(t, tt.length, res.ContentLength)
				if !leg.h2 {
					if tt.chunked {
						assert.Equal(t, []string{"chunked"}, res.TransferEncoding)
					} else {
						assert.Empty(t, res.TransferEncoding)
					}
				}
				o := rec.next(t)
				assert.Equal(t, tt.body, string(o.Body))
				assert.NoError(t, o.Err)
				assert.Equal(t, 1, closeAndCount(t, front, rec))
			})
		}
	}
}

// TestHTTP2BothLegs pins HTTP/2 from the client to the proxy and from the
// proxy (with a transport from NewTransport) to a TLS upstream, for a
// request with a body and a response with one.
func TestHTTP2BothLegs(t *testing.T) {
	upProto := make(chan int, 1)
	rec := newRecorder()
	_, front := newPair(t, true, func(w http.ResponseWriter, r *http.Request) {
		upProto <- r.ProtoMajor
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Write(bytes.ToUpper(body))
	}, tapproxy.WithObserver(rec))

	res, err := front.Client().Post(front.URL+"/h2", "text/plain", strings.NewReader("over http/2"))
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, "OVER HTTP/2", string(body))
	assert.Equal(t, 2, res.ProtoMajor, "client leg")
	assert.Equal(t, 2, <-upProto, "upstream leg")

	o := rec.next(t)
	assert.Equal(t, 2, o.ProtoMajor)
	assert.Equal(t, "OVER HTTP/2", string(o.Body))
	assert.EqualValues(t, len("over http/2"), o.ReqBodyBytes)
	assert.NoError(t, o.Err)
	assert.Equal(t, 1, closeAndCount(t, front, rec))
}
