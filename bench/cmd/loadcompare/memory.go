package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tapproxy/tapproxy"
)

// The memory scenario (-memory) measures what an in-flight exchange costs
// and how the proxies fare at higher concurrency, each figure as a ratio
// to the bare tuned ReverseProxy in the same run:
//
//   - many concurrent streaming responses, each sending some bytes and
//     then holding, so that all are in flight at once: the peak RSS of
//     each proxy process, started fresh for it;
//   - req/s at a low and a high number of connections;
//   - req/s of an HTTP/2 (h2c) client multiplexing many streams on one
//     connection.

// The memory budget, as published.
const (
	maxBodylessRSSRatio = 1.15
	maxDefaultRSSRatio  = 2.0
	minHighConnsRatio   = 0.95
)

var memDescriptions = map[string]string{
	"bodyless":  "tapproxy, one observer that reads no body (tapproxy.HeadersOnly)",
	"unbounded": "tapproxy, one observer reading the 64 KiB capture, no capture budget (WithCaptureBudget(0))",
}

func init() {
	for v, d := range memDescriptions {
		descriptions[v] = d
	}
}

func memVariants() []string { return []string{bare, "bodyless", "observer", "unbounded"} }

// memoryVariant builds the variants only the memory scenario uses; ok is
// false for other names.
func memoryVariant(name string, target *url.URL) (h http.Handler, ok bool, err error) {
	switch name {
	case "bodyless":
		h, err = tapproxy.New(target, tapproxy.WithLogger(discardLogger),
			tapproxy.WithObserver(tapproxy.HeadersOnly(tapproxy.ObserverFunc(func(context.Context, *tapproxy.Exchange) {}))))
	case "unbounded":
		h, err = tapproxy.New(target, tapproxy.WithLogger(discardLogger), tapproxy.WithObserver(readCapture),
			tapproxy.WithCaptureBudget(0))
	default:
		return nil, false, nil
	}
	return h, true, err
}

// heldRoute serves /held/N?hold=D: N bytes without a length, flushed, then
// nothing until D has passed, when the response ends.
func heldRoute(mux *http.ServeMux) {
	chunk := make([]byte, 32<<10)
	for i := range chunk {
		chunk[i] = "0123456789abcdef"[i%16]
	}
	mux.HandleFunc("GET /held/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.PathValue("n"))
		hold, herr := time.ParseDuration(r.URL.Query().Get("hold"))
		if err != nil || herr != nil || n < 0 || n > 64<<20 {
			http.Error(w, "bad size or hold", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		for left := n; left > 0; {
			k := min(left, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			left -= k
		}
		http.NewResponseController(w).Flush()
		select {
		case <-time.After(hold):
		case <-r.Context().Done():
		}
	})
}

// memConfig is what the memory scenario's flags set.
type memConfig struct {
	on        bool
	held      int
	heldBytes int
	hold      time.Duration
	rounds    int
	duration  time.Duration
	lowConns  int
	highConns int
	streams   int
}

func defaultMemConfig() memConfig {
	return memConfig{
		held:      2000,
		heldBytes: 70000,
		hold:      4 * time.Second,
		rounds:    3,
		duration:  2 * time.Second,
		lowConns:  32,
		highConns: 512,
		streams:   100,
	}
}

func (c *memConfig) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.on, "memory", c.on, "also run the memory scenario: held streams, req/s at two concurrencies, HTTP/2 multiplexing")
	fs.IntVar(&c.held, "held", c.held, "memory: concurrent held streaming responses")
	fs.IntVar(&c.heldBytes, "held-bytes", c.heldBytes, "memory: bytes each held response sends before it holds")
	fs.DurationVar(&c.hold, "hold", c.hold, "memory: how long each held response holds")
	fs.IntVar(&c.rounds, "mem-rounds", c.rounds, "memory: alternating load rounds per variant and concurrency")
	fs.DurationVar(&c.duration, "mem-duration", c.duration, "memory: length of one variant's round")
	fs.IntVar(&c.lowConns, "low-conns", c.lowConns, "memory: the lower number of connections")
	fs.IntVar(&c.highConns, "high-conns", c.highConns, "memory: the higher number of connections")
	fs.IntVar(&c.streams, "streams", c.streams, "memory: HTTP/2 streams multiplexed on one connection")
}

func (c memConfig) validate() error {
	if c.held < 1 || c.heldBytes < 1 || c.hold <= 0 || c.rounds < 1 || c.duration <= 0 ||
		c.lowConns < 1 || c.highConns < 1 || c.streams < 1 {
		return errors.New("memory: held, held-bytes, hold, mem-rounds, mem-duration, low-conns, high-conns and streams must be positive")
	}
	return nil
}

// heldResult is what one variant showed with the held streams.
type heldResult struct {
	peakRSS  int64 // VmHWM of the fresh process
	heldRSS  int64 // VmRSS once every stream had its bytes
	inFlight int   // streams in flight at once, at most held
	errs     int
}

// memReport is what the memory scenario measured.
type memReport struct {
	cfg      memConfig
	size     int
	variants []string
	took     time.Duration
	held     map[string]*heldResult
	low      map[string]*loadResult
	high     map[string]*loadResult
	h2       map[string]*loadResult
}

// runMemory runs the memory scenario against the upstream.
func runMemory(ctx context.Context, cfg config, up *child) (*memReport, error) {
	mc := cfg.mem
	if err := mc.validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &memReport{cfg: mc, size: cfg.size, variants: memVariants(),
		held: map[string]*heldResult{}, low: map[string]*loadResult{},
		high: map[string]*loadResult{}, h2: map[string]*loadResult{}}
	for _, v := range rep.variants {
		res, err := heldStreams(ctx, cfg, up, v)
		if err != nil {
			return nil, fmt.Errorf("variant %s, held streams: %w", v, err)
		}
		rep.held[v] = res
	}
	if err := memLoad(ctx, cfg, up, rep); err != nil {
		return nil, err
	}
	rep.took = time.Since(start)
	return rep, nil
}

// heldStreams has a fresh proxy process relay mc.held held responses at
// once and reads its peak RSS.
func heldStreams(ctx context.Context, cfg config, up *child, v string) (*heldResult, error) {
	mc := cfg.mem
	c, err := startChild(ctx, cfg.timeout+time.Minute, envRole+"=proxy", envVariant+"="+v, envTarget+"="+up.url())
	if err != nil {
		return nil, err
	}
	defer c.stop()
	u := fmt.Sprintf("%s/held/%d?hold=%s", c.url(), mc.heldBytes, mc.hold)
	tr := &http.Transport{
		DialContext:        (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		DisableKeepAlives:  true,
		DisableCompression: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: mc.hold + 2*time.Minute}

	res := &heldResult{}
	var (
		wg       sync.WaitGroup
		got      sync.WaitGroup // every stream has its bytes, or failed
		finished atomic.Int64
		errs     atomic.Int64
	)
	got.Add(mc.held)
	for range mc.held {
		wg.Go(func() {
			defer finished.Add(1)
			var once sync.Once
			gotIt := func() { once.Do(got.Done) }
			defer gotIt()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				errs.Add(1)
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				errs.Add(1)
				return
			}
			defer resp.Body.Close()
			if _, err := io.ReadFull(resp.Body, make([]byte, mc.heldBytes)); err != nil {
				errs.Add(1)
				return
			}
			gotIt()
			if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != 0 {
				errs.Add(1)
			}
		})
	}
	got.Wait()
	res.inFlight = mc.held - int(finished.Load())
	if res.heldRSS, err = c.rss("VmRSS:"); err != nil {
		return nil, err
	}
	wg.Wait()
	res.errs = int(errs.Load())
	if res.peakRSS, err = c.rss("VmHWM:"); err != nil {
		return nil, err
	}
	return res, ctx.Err()
}

// rss reads one of the child's memory figures from /proc: "VmRSS:" or
// "VmHWM:".
func (c *child) rss(field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s", field)
}

// newH2CClient speaks HTTP/2 with prior knowledge over one connection: the
// streams are multiplexed on it.
func newH2CClient() *http.Client {
	tr := &http.Transport{
		DialContext:        (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		DisableCompression: true,
		Protocols:          new(http.Protocols),
	}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// memLoad drives every memory variant at both concurrencies and over
// HTTP/2, in alternating rounds, each round in a different order.
func memLoad(ctx context.Context, cfg config, up *child, rep *memReport) error {
	mc := cfg.mem
	type target struct {
		url                string
		low, high, h2      *http.Client
		lowRes, highRes, h *loadResult
	}
	targets := map[string]*target{}
	defer func() {
		for _, t := range targets {
			t.low.CloseIdleConnections()
			t.high.CloseIdleConnections()
			t.h2.CloseIdleConnections()
		}
	}()
	for _, v := range rep.variants {
		c, err := startChild(ctx, cfg.timeout+time.Minute, envRole+"=proxy", envVariant+"="+v, envTarget+"="+up.url())
		if err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		defer c.stop()
		t := &target{url: c.url() + "/bytes/" + strconv.Itoa(cfg.size),
			low: newLoadClient(mc.lowConns), high: newLoadClient(mc.highConns), h2: newH2CClient(),
			lowRes: &loadResult{}, highRes: &loadResult{}, h: &loadResult{}}
		targets[v] = t
		rep.low[v], rep.high[v], rep.h2[v] = t.lowRes, t.highRes, t.h
		for _, cl := range []*http.Client{t.low, t.h2} {
			if err := fetch(ctx, cl, t.url, cfg.size); err != nil {
				return fmt.Errorf("variant %s: %w", v, err)
			}
		}
		if err := checkHTTP2(ctx, t.h2, t.url); err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		// Warm up at the highest concurrency: its connections and pools.
		warm := min(mc.duration/4, 500*time.Millisecond)
		load(ctx, t.high, t.url, mc.highConns, cfg.size, warm, &loadResult{})
		load(ctx, t.h2, t.url, mc.streams, cfg.size, warm, &loadResult{})
	}
	for round := range mc.rounds {
		for i := range rep.variants {
			t := targets[rep.variants[(i+round)%len(rep.variants)]]
			load(ctx, t.low, t.url, mc.lowConns, cfg.size, mc.duration, t.lowRes)
			load(ctx, t.high, t.url, mc.highConns, cfg.size, mc.duration, t.highRes)
			load(ctx, t.h2, t.url, mc.streams, cfg.size, mc.duration, t.h)
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// print writes the memory report and reports whether a budget line failed.
func (r *memReport) print(w io.Writer, md bool) (failed bool) {
	mc := r.cfg
	fmt.Fprintln(w)
	if md {
		fmt.Fprint(w, "### Memory and concurrency\n\n")
	}
	fmt.Fprintf(w, "Held streams: %d concurrent GETs of a response without a length that sends %d bytes, then holds for %s; each proxy in a fresh process. Peak RSS is the process's VmHWM; RSS held is its VmRSS once every stream had its bytes. The scenario took %s.\n\n",
		mc.held, mc.heldBytes, mc.hold, r.took.Round(time.Second))
	ht := table{head: []string{"variant", "peak RSS", "x bare", "RSS held", "per stream over bare", "in flight at once", "errors"}}
	b := r.held[bare]
	for _, v := range r.variants {
		res := r.held[v]
		over := "-"
		if b != nil && v != bare {
			over = fmtBytes((res.peakRSS - b.peakRSS) / int64(mc.held))
		}
		ht.add(v, fmtBytes(res.peakRSS), ratio(float64(res.peakRSS), float64(b.peakRSS)), fmtBytes(res.heldRSS),
			over, fmt.Sprint(res.inFlight), fmt.Sprint(res.errs))
	}
	ht.print(w, md)

	fmt.Fprintf(w, "\nConcurrency: %d-byte responses; %d alternating rounds of %s per variant and load; HTTP/2 is one h2c connection carrying %d concurrent streams.\n\n",
		r.size, mc.rounds, mc.duration, mc.streams)
	lowH, highH, h2H := fmt.Sprintf("req/s, %d conns", mc.lowConns), fmt.Sprintf("req/s, %d conns", mc.highConns), fmt.Sprintf("req/s, h2 x %d", mc.streams)
	lt := table{head: []string{"variant", lowH, "x bare", "p99", highH, "x bare", "p99", h2H, "x bare", "errors"}}
	for _, v := range r.variants {
		lo, hi, h2 := r.low[v], r.high[v], r.h2[v]
		lt.add(v,
			fmt.Sprintf("%.0f", lo.rps()), ratio(lo.rps(), r.low[bare].rps()), fmtDur(lo.quantile(0.99)),
			fmt.Sprintf("%.0f", hi.rps()), ratio(hi.rps(), r.high[bare].rps()), fmtDur(hi.quantile(0.99)),
			fmt.Sprintf("%.0f", h2.rps()), ratio(h2.rps(), r.h2[bare].rps()),
			fmt.Sprint(lo.errs+hi.errs+h2.errs))
	}
	lt.print(w, md)

	fmt.Fprintln(w)
	dt := table{head: []string{"variant", "what it is"}}
	for _, v := range r.variants {
		dt.add(v, descriptions[v])
	}
	dt.print(w, md)

	fmt.Fprint(w, "\nMemory budget:\n\n")
	var lines []string
	check := func(ok bool, format string, args ...any) {
		verdict := "PASS"
		if !ok {
			verdict, failed = "FAIL", true
		}
		line := verdict + "  " + fmt.Sprintf(format, args...)
		if md {
			line = "- **" + verdict + "** " + fmt.Sprintf(format, args...)
		}
		lines = append(lines, line)
	}
	for _, l := range []struct {
		v     string
		limit float64
	}{{"bodyless", maxBodylessRSSRatio}, {"observer", maxDefaultRSSRatio}} {
		res := r.held[l.v]
		check(float64(res.peakRSS) <= l.limit*float64(b.peakRSS) && res.errs == 0 && res.inFlight == mc.held,
			"peak RSS at %d held streams, %s, <= %.2f x bare: %s vs %s, %s; %d in flight at once, %d errors",
			mc.held, l.v, l.limit, fmtBytes(res.peakRSS), fmtBytes(b.peakRSS),
			budgetRatio(float64(res.peakRSS), float64(b.peakRSS)), res.inFlight, res.errs)
	}
	for _, v := range []string{"observer", "bodyless"} {
		hi := r.high[v]
		check(hi.rps() >= minHighConnsRatio*r.high[bare].rps(), "req/s at %d connections, %s, >= %.2f x bare: %.0f vs %.0f, %s",
			mc.highConns, v, minHighConnsRatio, hi.rps(), r.high[bare].rps(), budgetRatio(hi.rps(), r.high[bare].rps()))
	}
	fmt.Fprintln(w, strings.Join(lines, "\n"))
	return failed
}

// checkHTTP2 proves that c reaches u over HTTP/2.
func checkHTTP2(ctx context.Context, c *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	io.Copy(io.Discard, res.Body)
	if res.ProtoMajor != 2 {
		return fmt.Errorf("the multiplexing client got %s, not HTTP/2", res.Proto)
	}
	return nil
}
