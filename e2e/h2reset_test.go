package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/tapproxy/tapproxy"
)

// TestHTTP2ResetAtDeclaredLength reproduces a race in the HTTP/2 server: a
// client that stops in the instant it has the declared length, before
// END_STREAM (curl does, by resetting the stream or closing the
// connection), can make the proxy's last Write fail although its frame was
// already on the wire. The exchange must still be clean and count every
// byte, and the upstream connection must stay reusable.
//
// To make the race happen on purpose, the front's connection holds the
// write that carries the last DATA bytes, once they are on the wire, until
// the server has seen the client stop: the write's result then reaches
// the handler after the reset, as it does by chance on a loaded machine.
func TestHTTP2ResetAtDeclaredLength(t *testing.T) {
	// Reads of the upstream's body come in these sizes, the last one
	// larger than the HTTP/2 server's write buffers, so that its frame goes
	// straight to the connection.
	const chunk, last = 32 << 10, 5241
	const n = 3*chunk + last
	tests := []struct {
		name      string
		closeConn bool // close the connection rather than reset the stream
		eofApart  bool // the upstream's EOF comes in a read of its own
	}{
		{"reset stream", false, false},
		{"reset stream, EOF apart", false, true},
		{"close connection", true, false},
		{"close connection, EOF apart", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runs := 300
			if testing.Short() {
				runs = 30
			}
			if s := os.Getenv("TAPPROXY_RESET_RUNS"); s != "" {
				runs, _ = strconv.Atoi(s)
			}
			payload := bytes.Repeat([]byte("r"), n)
			var upConns atomic.Int64
			up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(n))
				w.Write(payload)
			}))
			up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					upConns.Add(1)
				}
			}
			up.Start()
			t.Cleanup(up.Close)

			rec := newRecorder()
			target, err := url.Parse(up.URL)
			require.NoError(t, err)
			tr := tapproxy.NewTransport()
			t.Cleanup(tr.CloseIdleConnections)
			sized := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				res, err := tr.RoundTrip(r)
				if err == nil {
					res.Body = &sizedBody{rc: res.Body, sizes: []int{chunk, chunk, chunk, last}, eofApart: tt.eofApart}
				}
				return res, err
			})
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			t.Cleanup(func() { mp.Shutdown(context.Background()) })
			p, err := tapproxy.New(target, tapproxy.WithObserver(rec), tapproxy.WithTransport(sized),
				tapproxy.WithLogger(testLogger(t)), tapproxy.WithMeterProvider(mp))
			require.NoError(t, err)

			type run struct{ done chan struct{} }
			var current atomic.Pointer[run]
			front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				cur := &run{done: make(chan struct{})}
				current.Store(cur)
				defer close(cur.done)
				p.ServeHTTP(w, r)
			}))
			// The server logs each abortive close; that is the test.
			front.Config.ErrorLog = log.New(io.Discard, "", 0)
			front.Config.Protocols = new(http.Protocols)
			front.Config.Protocols.SetUnencryptedHTTP2(true)
			// Until the handler is done: if it is waiting for this write,
			// that is once the server has handled the client's reset or
			// close.
			front.Listener = &holdingListener{Listener: front.Listener, tb: t, n: n, until: func() <-chan struct{} {
				return current.Load().done
			}}
			front.Start()
			t.Cleanup(front.Close)
			addr := front.Listener.Addr().String()

			var failed, raced int
			var h2 *rawH2Client
			for i := range runs {
				if h2 == nil || tt.closeConn {
					conn, err := net.DialTimeout("tcp", addr, waitTimeout)
					require.NoError(t, err)
					t.Cleanup(func() { conn.Close() })
					h2 = newRawH2Client(t, conn, addr)
				}
				if !h2.getAndStopAt(t, n, tt.closeConn) {
					raced++
				}
				o := rec.next(t)
				if o.Err != nil || o.BodyBytes != n {
					failed++
					if failed <= 3 {
						t.Logf("run %d: BodyBytes %d, Err %v", i, o.BodyBytes, o.Err)
					}
				}
			}
			t.Logf("%d of %d runs miscounted; %d of them stopped before END_STREAM", failed, runs, raced)
			assert.Zero(t, failed, "runs whose exchange was not clean and whole")
			assert.EqualValues(t, 1, upConns.Load(), "the upstream connection is reused")
			front.Close()
			assert.Equal(t, runs, rec.count())

			// The metrics agree: every exchange, every byte, no error.
			var rm metricdata.ResourceMetrics
			require.NoError(t, reader.Collect(context.Background(), &rm))
			var size *metricdata.Histogram[int64]
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					if h, ok := m.Data.(metricdata.Histogram[int64]); ok && m.Name == "http.server.response.body.size" {
						size = &h
					}
				}
			}
			require.NotNil(t, size)
			require.Len(t, size.DataPoints, 1, "one series: every exchange had the same outcome")
			dp := size.DataPoints[0]
			assert.EqualValues(t, runs, dp.Count)
			assert.EqualValues(t, int64(runs)*n, dp.Sum)
			_, hasErr := dp.Attributes.Value("error.type")
			assert.False(t, hasErr, "error.type")
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// sizedBody reads its body in reads of the given sizes. The last one ends
// with io.EOF, as the HTTP/1.1 transport's does for a declared length,
// unless eofApart, when EOF comes in the next read.
type sizedBody struct {
	rc       io.ReadCloser
	sizes    []int
	eofApart bool
}

func (b *sizedBody) Read(p []byte) (int, error) {
	if len(b.sizes) == 0 {
		return b.rc.Read(p)
	}
	n, err := io.ReadFull(b.rc, p[:min(len(p), b.sizes[0])])
	b.sizes = b.sizes[1:]
	if err == nil && len(b.sizes) == 0 && !b.eofApart {
		err = io.EOF
	}
	return n, err
}

func (b *sizedBody) Close() error { return b.rc.Close() }

// holdingListener's connections hold the write that completes any HTTP/2
// stream's n DATA bytes, after it went to the wire, until the channel that
// until returned before the write is closed. They follow the server's
// frames as they are written: plaintext HTTP/2 only.
type holdingListener struct {
	net.Listener
	tb    testing.TB
	n     int
	until func() <-chan struct{}
}

func (l *holdingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &holdingConn{Conn: c, l: l, data: map[uint32]int{}}, nil
}

type holdingConn struct {
	net.Conn
	l *holdingListener
	// The frame being written: its header so far, then its payload.
	hdr  [9]byte
	nhdr int
	left int
	typ  http2.FrameType
	id   uint32
	data map[uint32]int // DATA bytes written, by stream
}

func (c *holdingConn) Write(p []byte) (int, error) {
	if !c.scan(p) {
		return c.Conn.Write(p)
	}
	// Ask before writing: once the bytes are out, the next exchange may
	// begin.
	until := c.l.until()
	n, err := c.Conn.Write(p)
	select {
	case <-until:
	case <-time.After(waitTimeout):
		c.l.tb.Error("the held write waited too long")
	}
	return n, err
}

// scan follows the frames in p and reports whether a stream's DATA reached
// the listener's n bytes in it.
func (c *holdingConn) scan(p []byte) (complete bool) {
	for len(p) > 0 {
		if c.nhdr < len(c.hdr) {
			k := copy(c.hdr[c.nhdr:], p)
			c.nhdr += k
			p = p[k:]
			if c.nhdr == len(c.hdr) {
				c.left = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
				c.typ = http2.FrameType(c.hdr[3])
				c.id = binary.BigEndian.Uint32(c.hdr[5:]) & (1<<31 - 1)
			}
		}
		k := min(c.left, len(p))
		if c.typ == http2.FrameData && k > 0 {
			before := c.data[c.id]
			c.data[c.id] += k
			complete = complete || before < c.l.n && c.data[c.id] >= c.l.n
		}
		c.left -= k
		p = p[k:]
		if c.nhdr == len(c.hdr) && c.left == 0 {
			c.nhdr = 0
		}
	}
	return complete
}

// rawH2Client sends GETs on one HTTP/2 connection and reads the responses
// frame by frame, so that it can reset a stream the moment it has enough.
type rawH2Client struct {
	conn      net.Conn
	fr        *http2.Framer
	enc       *hpack.Encoder
	hbuf      bytes.Buffer
	authority string
	stream    uint32
}

func newRawH2Client(tb testing.TB, conn net.Conn, authority string) *rawH2Client {
	tb.Helper()
	c := &rawH2Client{conn: conn, authority: authority, stream: 1}
	c.enc = hpack.NewEncoder(&c.hbuf)
	_, err := io.WriteString(conn, http2.ClientPreface)
	require.NoError(tb, err)
	c.fr = http2.NewFramer(conn, conn)
	// Windows so large that flow control never holds the server back.
	require.NoError(tb, c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1}))
	require.NoError(tb, c.fr.WriteWindowUpdate(0, 1<<31-1-65535))
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	return c
}

// getAndStopAt sends a GET and reads its DATA until it has n bytes; then it
// resets the stream at once, unless the stream had ended. It reports whether
// the stream ended before the reset.
func (c *rawH2Client) getAndStopAt(tb testing.TB, n int, closeConn bool) (ended bool) {
	tb.Helper()
	id := c.stream
	c.stream += 2
	c.hbuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", c.authority}, {":path", "/"}} {
		require.NoError(tb, c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	require.NoError(tb, c.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: true, EndHeaders: true,
	}))
	got := 0
	for {
		f, err := c.fr.ReadFrame()
		require.NoError(tb, err)
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				require.NoError(tb, c.fr.WriteSettingsAck())
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				require.NoError(tb, c.fr.WritePing(true, f.Data))
			}
		case *http2.GoAwayFrame:
			tb.Fatalf("server sent GOAWAY: %v", f.ErrCode)
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				tb.Fatalf("server reset stream %d: %v", id, f.ErrCode)
			}
		case *http2.HeadersFrame:
			if f.StreamID == id && f.StreamEnded() {
				tb.Fatal("response without a body")
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue // the tail of an earlier stream
			}
			got += len(f.Data())
			if got > n {
				tb.Fatalf("got %d bytes, more than the %d declared", got, n)
			}
			if f.StreamEnded() {
				require.Equal(tb, n, got, fmt.Sprintf("stream %d ended early", id))
				return true
			}
			if got == n {
				if closeConn {
					// Abortively, as a client process that exits does.
					if tc, ok := c.conn.(*net.TCPConn); ok {
						tc.SetLinger(0)
					}
					c.conn.Close()
					return false
				}
				require.NoError(tb, c.fr.WriteRSTStream(id, http2.ErrCodeCancel))
				return false
			}
		}
	}
}
