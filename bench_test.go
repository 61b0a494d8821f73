package tapproxy_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

// The benchmarks compare, in one run, the same requests sent directly to
// the upstream and through each kind of proxy, so that their ratios mean
// something even on a busy machine. Names follow benchstat's key=value
// form:
//
//	go test -run '^$' -bench . -benchmem . | tee new.txt
//	benchstat -col /variant new.txt

// benchSizes are the response body sizes compared.
var benchSizes = []struct {
	name string
	n    int
}{
	{"1KiB", 1 << 10},
	{"64KiB", 64 << 10},
	{"1MiB", 1 << 20},
}

// benchVariant builds a handler that proxies to target; nil means the
// client talks to the upstream directly.
type benchVariant struct {
	name string
	new  func(tb testing.TB, target *url.URL) http.Handler
}

func benchVariants() []benchVariant {
	return []benchVariant{
		{"direct", nil},
		{"bare", func(tb testing.TB, target *url.URL) http.Handler { return bareProxy(target, nil) }},
		{"stdlib", func(tb testing.TB, target *url.URL) http.Handler {
			return httputil.NewSingleHostReverseProxy(target)
		}},
		{"naive", func(tb testing.TB, target *url.URL) http.Handler { return naiveProxy(target) }},
		{"tapproxy", func(tb testing.TB, target *url.URL) http.Handler { return benchTapproxy(tb, target) }},
		{"observer", func(tb testing.TB, target *url.URL) http.Handler {
			return benchTapproxy(tb, target, tapproxy.WithObserver(readCapture))
		}},
		{"metrics", func(tb testing.TB, target *url.URL) http.Handler {
			mp, _ := newReader(tb)
			return benchTapproxy(tb, target, tapproxy.WithObserver(readCapture), tapproxy.WithMeterProvider(mp))
		}},
	}
}

// readCapture is an observer that reads the whole capture, as one that
// parses or logs bodies would.
var readCapture = tapproxy.ObserverFunc(func(_ context.Context, ex *tapproxy.Exchange) {
	io.Copy(io.Discard, ex.Body())
})

func benchTapproxy(tb testing.TB, target *url.URL, opts ...tapproxy.Option) http.Handler {
	tb.Helper()
	p, err := tapproxy.New(target, opts...)
	require.NoError(tb, err)
	return p
}

// bareProxy is what tapproxy is built on, with the same tuned transport
// and an equal pool of copy buffers, and nothing else.
func bareProxy(target *url.URL, rt http.RoundTripper) *httputil.ReverseProxy {
	if rt == nil {
		rt = tapproxy.NewTransport()
	}
	return &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:  rt,
		BufferPool: benchBuffers{},
	}
}

// benchBuffers pools 32 KiB copy buffers, as tapproxy does.
type benchBuffers struct{}

var benchBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (benchBuffers) Get() []byte  { return *benchBufferPool.Get().(*[]byte) }
func (benchBuffers) Put(b []byte) { benchBufferPool.Put(&b) }

// naiveProxy observes bodies the simple way: it reads the whole response
// in ModifyResponse, hands the client a copy and keeps another for the
// observer. The client's first byte waits for the last upstream byte.
func naiveProxy(target *url.URL) *httputil.ReverseProxy {
	rp := bareProxy(target, nil)
	rp.ModifyResponse = func(res *http.Response) error {
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			return err
		}
		kept := bytes.Clone(body)
		res.Body = io.NopCloser(bytes.NewReader(body))
		io.Copy(io.Discard, bytes.NewReader(kept[:min(len(kept), tapproxy.DefaultCaptureLimit)]))
		return nil
	}
	return rp
}

// benchUpstream serves bodies of the size its path names: /1024.
func benchUpstream(tb testing.TB) *httptest.Server {
	tb.Helper()
	bodies := map[string][]byte{}
	for _, s := range benchSizes {
		bodies["/"+strconv.Itoa(s.n)] = bytes.Repeat([]byte{'x'}, s.n)
	}
	return newUpstream(tb, func(w http.ResponseWriter, r *http.Request) {
		body, ok := bodies[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
}

// benchClient keeps enough idle connections that RunParallel reuses them.
func benchClient(tb testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, DisableCompression: true}
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func fetch(c *http.Client, u string, n int) error {
	res, err := c.Get(u)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	got, err := io.Copy(io.Discard, res.Body)
	if err == nil && (res.StatusCode != http.StatusOK || got != int64(n)) {
		err = &url.Error{Op: "GET", URL: u, Err: io.ErrUnexpectedEOF}
	}
	return err
}

func BenchmarkProxy(b *testing.B) {
	up := benchUpstream(b)
	target := mustParse(b, up.URL)
	for _, mode := range []string{"serial", "parallel"} {
		for _, size := range benchSizes {
			for _, v := range benchVariants() {
				b.Run("mode="+mode+"/size="+size.name+"/variant="+v.name, func(b *testing.B) {
					u := up.URL
					if v.new != nil {
						front := httptest.NewServer(v.new(b, target))
						defer front.Close()
						u = front.URL
					}
					u += "/" + strconv.Itoa(size.n)
					c := benchClient(b)
					require.NoError(b, fetch(c, u, size.n)) // warm connections and pools
					b.SetBytes(int64(size.n))
					b.ReportAllocs()
					b.ResetTimer()
					if mode == "serial" {
						for b.Loop() {
							if err := fetch(c, u, size.n); err != nil {
								b.Fatal(err)
							}
						}
						return
					}
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := fetch(c, u, size.n); err != nil {
								b.Error(err)
								return
							}
						}
					})
				})
			}
		}
	}
}

// TestAllocsWithinBudgetOfBareProxy holds the published allocation budget:
// observing a response, with its 64 KiB capture read and metrics recorded,
// costs at most 12 allocations per request more than the bare ReverseProxy
// it is built on.
// The upstream answers in memory so that only the proxies are counted.
func TestAllocsWithinBudgetOfBareProxy(t *testing.T) {
	if tapproxy.RaceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	const budget = 12
	body := string(bytes.Repeat([]byte{'x'}, 64<<10))
	target := mustParse(t, "http://upstream.test")
	count := func(h http.Handler) float64 {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		serve := func() { h.ServeHTTP(httptest.NewRecorder(), req) }
		serve() // warm the pools
		return testing.AllocsPerRun(200, serve)
	}
	bare := count(bareProxy(target, cannedTransport{body}))
	mp, _ := newReader(t)
	tests := []struct {
		name string
		opts []tapproxy.Option
	}{
		{"no observer", nil},
		{"observer reading the capture", []tapproxy.Option{tapproxy.WithObserver(readCapture)}},
		{"observer under a capture budget", []tapproxy.Option{tapproxy.WithObserver(readCapture),
			tapproxy.WithCaptureBudget(1 << 20)}},
		{"observer and metrics", []tapproxy.Option{tapproxy.WithObserver(readCapture),
			tapproxy.WithMeterProvider(mp)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := benchTapproxy(t, target, append(tt.opts, tapproxy.WithTransport(cannedTransport{body}))...)
			got := count(p)
			t.Logf("allocs/request: bare %.1f, tapproxy %.1f (+%.1f)", bare, got, got-bare)
			assert.LessOrEqual(t, got, bare+budget)
		})
	}
}
