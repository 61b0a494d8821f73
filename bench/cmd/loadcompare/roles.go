package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

// The driver starts the upstream and each proxy variant as a copy of this
// program, telling it its role and parameters through the environment.
const (
	envRole     = "LOADCOMPARE_ROLE"     // "upstream" or "proxy"
	envVariant  = "LOADCOMPARE_VARIANT"  // proxy: which variant
	envTarget   = "LOADCOMPARE_TARGET"   // proxy: the upstream's URL
	envLifetime = "LOADCOMPARE_LIFETIME" // the longest a child may live
)

// runRole runs this process as a child in the role its environment names.
// It prints "LISTEN addr [statsaddr]" once it serves, and exits when its
// stdin closes (the driver went away) or its lifetime ends.
func runRole() {
	log.SetFlags(0)
	log.SetPrefix("loadcompare " + os.Getenv(envRole) + ": ")
	lifetime, err := time.ParseDuration(os.Getenv(envLifetime))
	if err != nil {
		lifetime = 15 * time.Minute
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	time.AfterFunc(lifetime, func() { log.Print("lifetime over"); os.Exit(2) })

	switch role := os.Getenv(envRole); role {
	case "upstream":
		// One process, several addresses: the balanced variant's pool
		// needs distinct upstreams, and one process keeps the upstream's
		// share of the machine the same for every variant.
		h := upstreamHandler()
		lns := make([]net.Listener, poolSize)
		addrs := make([]string, poolSize)
		for i := range lns {
			lns[i] = listen()
			addrs[i] = lns[i].Addr().String()
		}
		fmt.Printf("LISTEN %s\n", strings.Join(addrs, " "))
		for _, ln := range lns[1:] {
			go func() { log.Fatal(quietServer(h).Serve(ln)) }()
		}
		log.Fatal(quietServer(h).Serve(lns[0]))
	case "proxy":
		var targets []*url.URL
		for _, t := range strings.Split(os.Getenv(envTarget), ",") {
			u, err := url.Parse(t)
			if err != nil {
				log.Fatal(err)
			}
			targets = append(targets, u)
		}
		h, err := newVariant(os.Getenv(envVariant), targets)
		if err != nil {
			log.Fatal(err)
		}
		ln, sln := listen(), listen()
		fmt.Printf("LISTEN %s %s\n", ln.Addr(), sln.Addr())
		s := newSampler()
		go func() { log.Fatal(quietServer(s).Serve(sln)) }()
		log.Fatal(quietServer(h).Serve(ln))
	default:
		log.Fatalf("unknown role %q", role)
	}
}

func listen() net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	return ln
}

// quietServer serves HTTP/1.1 and, for the memory scenario's multiplexing
// client, h2c with prior knowledge.
func quietServer(h http.Handler) *http.Server {
	s := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 10 * time.Second}
	s.Protocols = new(http.Protocols)
	s.Protocols.SetHTTP1(true)
	s.Protocols.SetUnencryptedHTTP2(true)
	return s
}

// upstreamHandler serves /bytes/N: N bytes with a Content-Length; and
// /slow/N?pause=D: N bytes without a length (so proxies flush as they go),
// the first KiB at once, the rest after a pause.
func upstreamHandler() http.Handler {
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 2<<10) // 32 KiB
	var (
		mu     sync.Mutex
		bodies = map[int][]byte{}
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.PathValue("n"))
		if err != nil || n < 0 || n > 64<<20 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		mu.Lock()
		body, ok := bodies[n]
		if !ok {
			body = bytes.Repeat([]byte{'x'}, n)
			bodies[n] = body
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(body)
	})
	mux.HandleFunc("GET /slow/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		pause, perr := time.ParseDuration(r.URL.Query().Get("pause"))
		if err != nil || perr != nil || n < 1<<10 {
			http.Error(w, "bad size or pause", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(chunk[:1<<10])
		http.NewResponseController(w).Flush()
		select {
		case <-time.After(pause):
		case <-r.Context().Done():
			return
		}
		for left := n - 1<<10; left > 0; {
			k := min(left, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			left -= k
		}
	})
	heldRoute(mux)
	return mux
}

// poolSize is how many addresses the upstream serves on, and the balanced
// variant balances over.
const poolSize = 3

// newVariant builds the proxy a variant names. Every variant but the
// balanced one proxies to the first target.
func newVariant(name string, targets []*url.URL) (http.Handler, error) {
	target := targets[0]
	switch name {
	case "bare":
		return bareProxy(target), nil
	case "stdlib":
		rp := httputil.NewSingleHostReverseProxy(target)
		rp.ErrorLog = log.New(io.Discard, "", 0) // the driver cancels requests at the end of a round
		return rp, nil
	case "naive":
		return naiveProxy(target), nil
	case "tapproxy":
		return tapproxy.New(target, tapproxy.WithLogger(discardLogger))
	case "observer":
		return tapproxy.New(target, tapproxy.WithLogger(discardLogger), tapproxy.WithObserver(readCapture))
	case balanced:
		return tapproxy.NewBalanced(targets, tapproxy.WithLogger(discardLogger))
	case full:
		// Collected by nobody, as between two scrapes: recording is the
		// cost a request pays.
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		return tapproxy.New(target, tapproxy.WithLogger(discardLogger), tapproxy.WithObserver(readCapture),
			tapproxy.WithMeterProvider(mp))
	case harVariant:
		// The HAR budget: the same proxy as "tapproxy", plus a recorder
		// of every exchange, off the request path.
		return tapproxy.New(target, tapproxy.WithLogger(discardLogger),
			tapproxy.WithAsyncObservers(2, 4096), tapproxy.WithObserver(har.NewRecorder()))
	}
	if h, ok, err := memoryVariant(name, target); ok {
		return h, err
	}
	return nil, fmt.Errorf("unknown variant %q", name)
}

var discardLogger = slog.New(slog.DiscardHandler)

// readCapture is an observer that reads the whole capture, as one that
// parses or logs bodies would.
var readCapture = tapproxy.ObserverFunc(func(_ context.Context, ex *tapproxy.Exchange) {
	io.Copy(io.Discard, ex.Body())
})

// bareProxy is what tapproxy is built on, with the same tuned transport
// and an equal pool of 32 KiB copy buffers, and nothing else.
func bareProxy(target *url.URL) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:  tapproxy.NewTransport(),
		BufferPool: copyBuffers{},
		ErrorLog:   log.New(io.Discard, "", 0),
	}
}

type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }

// naiveProxy observes bodies the simple way: it reads the whole response
// in ModifyResponse, hands the client a copy and keeps another for the
// observer, which reads its first 64 KiB.
func naiveProxy(target *url.URL) *httputil.ReverseProxy {
	rp := bareProxy(target)
	rp.ModifyResponse = func(res *http.Response) error {
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			return err
		}
		kept := bytes.Clone(body)
		res.Body = io.NopCloser(bytes.NewReader(body))
		res.ContentLength = int64(len(body))
		res.Header.Set("Content-Length", strconv.Itoa(len(body)))
		io.Copy(io.Discard, bytes.NewReader(kept[:min(len(kept), tapproxy.DefaultCaptureLimit)]))
		return nil
	}
	return rp
}

// sampler serves the proxy process's own figures to the driver: GET /reset
// collects garbage and starts a new heap peak; GET /stats returns them.
type sampler struct {
	mu         sync.Mutex
	base, peak uint64
}

// heapBytes is the memory held by heap objects, live or not yet swept;
// reading it does not stop the world.
const heapBytes = "/memory/classes/heap/objects:bytes"

func newSampler() *sampler {
	s := &sampler{}
	s.reset()
	go func() {
		sample := []metrics.Sample{{Name: heapBytes}}
		for range time.Tick(2 * time.Millisecond) {
			metrics.Read(sample)
			s.mu.Lock()
			s.peak = max(s.peak, sample[0].Value.Uint64())
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *sampler) reset() {
	runtime.GC()
	sample := []metrics.Sample{{Name: heapBytes}}
	metrics.Read(sample)
	s.mu.Lock()
	s.base, s.peak = sample[0].Value.Uint64(), sample[0].Value.Uint64()
	s.mu.Unlock()
}

// procStats is what a proxy process reports.
type procStats struct {
	Allocs     uint64 // heap objects allocated since the process started
	HeapGrowth uint64 // peak heap bytes since the last reset, above the base
}

func (s *sampler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/reset":
		s.reset()
	case "/stats":
		sample := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
		metrics.Read(sample)
		s.mu.Lock()
		st := procStats{Allocs: sample[0].Value.Uint64(), HeapGrowth: s.peak - s.base}
		s.mu.Unlock()
		json.NewEncoder(w).Encode(st)
	default:
		http.NotFound(w, r)
	}
}

// readListen reads the child's LISTEN line.
func readListen(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("child did not start: %w", err)
	}
	var addrs []string
	for i, f := range bytes.Fields([]byte(line)) {
		if i == 0 {
			if string(f) != "LISTEN" {
				return nil, fmt.Errorf("child said %q", line)
			}
			continue
		}
		addrs = append(addrs, string(f))
	}
	return addrs, nil
}
