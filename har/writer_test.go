package har_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestWriterConcurrent sends 500 concurrent exchanges through a proxy that
// streams them to a Writer, and checks that the result is one valid document
// holding all of them.
func TestWriterConcurrent(t *testing.T) {
	const n = 500
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, r.URL.Path)
	})
	var out bytes.Buffer
	hw := har.NewWriter(&out)
	front := newFront(t, up.URL, tapproxy.WithObserver(hw))

	client := front.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := client.Get(fmt.Sprintf("%s/%d", front.URL, i))
			if !assert.NoError(t, err) {
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		})
	}
	wg.Wait()
	front.Close() // waits for the handlers, and so for the observers
	require.NoError(t, hw.Close())

	h := validate(t, out.Bytes())
	require.Len(t, h.Log.Entries, n)
	seen := make(map[string]bool, n)
	for _, e := range h.Log.Entries {
		u, err := url.Parse(e.Request.URL)
		require.NoError(t, err)
		assert.Equal(t, u.Path, e.Response.Content.Text)
		seen[u.Path] = true
	}
	assert.Len(t, seen, n, "every exchange once")
}

// TestWriterEmpty: a Writer closed before any exchange wrote a valid, empty
// document.
func TestWriterEmpty(t *testing.T) {
	var out bytes.Buffer
	hw := har.NewWriter(&out)
	require.NoError(t, hw.Close())
	h := validate(t, out.Bytes())
	assert.Empty(t, h.Log.Entries)
	assert.NotNil(t, h.Log.Pages)
	assert.Equal(t, har.DefaultCreator, h.Log.Creator)
	assert.Equal(t, "1.2", h.Log.Version)

	require.NoError(t, hw.Close(), "Close again")
}

// failAfter fails every write after the first n bytes.
type failAfter struct {
	mu sync.Mutex
	n  int
	b  bytes.Buffer
}

var errDiskFull = errors.New("disk full")

func (f *failAfter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.b.Len()+len(p) > f.n {
		return 0, errDiskFull
	}
	return f.b.Write(p)
}

func droppedCount(tb testing.TB, r *sdkmetric.ManualReader) int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, r.Collect(context.Background(), &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == "tapproxy.har.dropped" {
				var n int64
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					n += dp.Value
				}
				return n
			}
		}
	}
	return 0
}

// TestWriterError: the first write error stops the Writer, Close reports
// it, every entry not written is counted, and the exchanges are unharmed.
func TestWriterError(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	w := &failAfter{n: 200} // the head fits; the first entry does not
	hw := har.NewWriter(w, har.WithMeterProvider(mp))
	front := newFront(t, up.URL, tapproxy.WithObserver(hw))
	const n = 5
	for range n {
		res, body := get(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, "ok", string(body), "a failing Writer does not fail the exchange")
	}
	front.Close()
	err := hw.Close()
	require.ErrorIs(t, err, errDiskFull)
	assert.ErrorContains(t, err, "tapproxy: ")
	assert.Equal(t, err, hw.Close(), "Close again reports the same error")
	assert.EqualValues(t, n, droppedCount(t, reader))

	hw.WriteEntry(har.Entry{})
	assert.EqualValues(t, n+1, droppedCount(t, reader), "after Close, entries are dropped and counted")
}

// blockingWriter blocks every write until release is closed.
type blockingWriter struct {
	release chan struct{}
	started chan struct{}
	once    sync.Once
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	b.once.Do(func() { close(b.started) })
	<-b.release
	return len(p), nil
}

// TestWriterNeverBlocks: with the underlying writer stuck, exchanges still
// complete, and what does not fit the queue is dropped and counted.
func TestWriterNeverBlocks(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	bw := &blockingWriter{release: make(chan struct{}), started: make(chan struct{})}
	hw := har.NewWriter(bw, har.WithMeterProvider(mp), har.WithQueueSize(2))
	<-bw.started // the head's write is stuck
	front := newFront(t, up.URL, tapproxy.WithObserver(hw))
	const n = 10
	for range n {
		_, body := get(t, front.Client(), front.URL)
		assert.Equal(t, "ok", string(body))
	}
	front.Close()
	assert.EqualValues(t, n-2, droppedCount(t, reader), "all but the queue's two")
	close(bw.release)
	require.NoError(t, hw.Close())
}

// TestGolden writes entries with fixed times (a fixed clock) through a
// Writer, and compares the document with a golden file. Run with -update to
// rewrite it.
func TestGolden(t *testing.T) {
	clock := time.Date(2026, 5, 4, 12, 30, 45, 123456789, time.UTC)
	get, err := http.NewRequest(http.MethodGet, "http://10.0.0.7:8080/api/items?page=2&sort=name", nil)
	require.NoError(t, err)
	get.Header.Set("Accept", "application/json")
	get.Header.Set("Authorization", "Bearer secret")
	get.Header.Set("Cookie", "sid=abc; theme=dark")
	post, err := http.NewRequest(http.MethodPost, "http://api.example.test/api/items", nil)
	require.NoError(t, err)
	post.Header.Set("Content-Type", "application/json")

	parts := []har.Parts{{
		Request: get,
		Response: &http.Response{StatusCode: 200, Proto: "HTTP/1.1", Header: http.Header{
			"Content-Type": {"application/json"},
			"Set-Cookie":   {"sid=new; Path=/; HttpOnly", "seen=1; Secure"},
		}, Trailer: http.Header{"X-Checksum": {"c0ffee"}}},
		Body: []byte(`[{"name":"a"},{"name":"b"}]`), BodyBytes: 27,
		Start: clock, TimeToHeaders: 12345 * time.Microsecond, Duration: 20 * time.Millisecond,
	}, {
		Request: post, RequestBody: []byte(`{"name":"c"}`), RequestBodyBytes: 12,
		Response: &http.Response{StatusCode: 200, Proto: "HTTP/1.1", Header: http.Header{
			"Content-Type": {"application/octet-stream"}, "Content-Length": {"1000"},
		}},
		Body: []byte{0xde, 0xad, 0xbe, 0xef}, BodyBytes: 1000, Truncated: true,
		Start: clock.Add(time.Second), TimeToHeaders: 3 * time.Millisecond, Duration: 4500 * time.Microsecond,
	}, {
		Request: post, Start: clock.Add(2 * time.Second), Duration: 30 * time.Second,
		Err: fmt.Errorf("%w: context deadline exceeded", tapproxy.ErrUpstreamTimeout),
	}}

	var out bytes.Buffer
	hw := har.NewWriter(&out)
	for i := range parts {
		e := har.FromParts(&parts[i])
		har.Redact(&e)
		hw.WriteEntry(e)
	}
	require.NoError(t, hw.Close())
	validate(t, out.Bytes())

	golden := filepath.Join("testdata", "golden.har")
	if *update {
		require.NoError(t, os.WriteFile(golden, out.Bytes(), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	assert.Equal(t, string(want), out.String())
}

func TestWriterNil(t *testing.T) {
	hw := har.NewWriter(nil)
	hw.WriteEntry(har.Entry{})
	err := hw.Close()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "tapproxy: ")
}
