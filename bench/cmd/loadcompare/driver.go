package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The variants, in the order they are reported. "direct" is the client
// talking to the upstream, with no proxy; "full" is tapproxy with an
// observer reading its 64 KiB capture and metrics recorded, the subject of
// the budget.
const (
	direct   = "direct"
	bare     = "bare"
	stdlib   = "stdlib"
	full     = "full"
	balanced = "balanced"
)

var descriptions = map[string]string{
	direct:     "no proxy: the client talks to the upstream",
	bare:       "httputil.ReverseProxy, tuned transport, pooled copy buffers",
	stdlib:     "httputil.NewSingleHostReverseProxy with the standard library's defaults",
	"naive":    "bare + io.ReadAll in ModifyResponse, body duplicated for the observer",
	"tapproxy": "tapproxy, no observer",
	"observer": "tapproxy, one observer reading the 64 KiB capture",
	full:       "tapproxy, observer reading the 64 KiB capture, metrics on (SDK MeterProvider, ManualReader)",
	harVariant: "tapproxy, WithAsyncObservers(2, 4096), every exchange recorded into a har.Recorder (default bounds)",
	balanced:   "tapproxy.NewBalanced over 3 upstream addresses (least requests, passive health, dial retries), no observer",
}

// harVariant is judged against "tapproxy", the same proxy without the
// recorder.
const harVariant = "har"

func allVariants() []string {
	return []string{direct, bare, stdlib, "naive", "tapproxy", "observer", full, harVariant, balanced}
}

// child is a process started in a role.
type child struct {
	cmd   *exec.Cmd
	stdin io.Closer
	addrs []string
	done  chan struct{}
}

// startChild starts this program again in a role and waits for it to
// listen. It dies with the driver: its stdin closes, and on Linux the kernel
// kills it too.
func startChild(ctx context.Context, lifetime time.Duration, env ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), append(env, envLifetime+"="+lifetime.String())...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	type listened struct {
		addrs []string
		err   error
	}
	ch := make(chan listened, 1)
	go func() {
		addrs, err := readListen(bufio.NewReader(stdout))
		ch <- listened{addrs, err}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-ch:
		if l.err != nil {
			c.stop()
			return nil, l.err
		}
		c.addrs = l.addrs
		return c, nil
	case <-time.After(30 * time.Second):
		err = errors.New("child did not listen within 30s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	c.stop()
	return nil, err
}

func (c *child) url() string { return "http://" + c.addrs[0] }

// urls is every address the child listens on, as URLs joined by commas.
func (c *child) urls() string {
	urls := make([]string, len(c.addrs))
	for i, a := range c.addrs {
		urls[i] = "http://" + a
	}
	return strings.Join(urls, ",")
}

// stop ends the child: it exits when its stdin closes, or is killed.
func (c *child) stop() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// peakRSS reads the child's VmHWM.
func (c *child) peakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM")
}

// stats asks a proxy child for its figures, after resetting its heap peak
// if reset.
func (c *child) stats(ctx context.Context, reset bool) (procStats, error) {
	var st procStats
	base := "http://" + c.addrs[1]
	if reset {
		if err := getJSON(ctx, base+"/reset", nil); err != nil {
			return st, err
		}
	}
	err := getJSON(ctx, base+"/stats", &st)
	return st, err
}

var statsClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

func getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	res, err := statsClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if v == nil {
		_, err = io.Copy(io.Discard, res.Body)
		return err
	}
	return json.NewDecoder(res.Body).Decode(v)
}

// loadResult sums a variant's rounds.
type loadResult struct {
	reqs, errs int
	elapsed    time.Duration
	lat        []time.Duration
	allocs     uint64 // in the proxy process, over the counted requests
}

func (r loadResult) rps() float64 { return float64(r.reqs) / r.elapsed.Seconds() }

func (r loadResult) quantile(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(q*float64(len(r.lat))))]
}

func (r loadResult) allocsPerReq() float64 {
	if r.reqs == 0 {
		return 0
	}
	return float64(r.allocs) / float64(r.reqs)
}

func newLoadClient(conns int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			DisableCompression:  true,
		},
		Timeout: 30 * time.Second,
	}
}

// load drives u with conns workers for d and adds what it saw to res.
func load(ctx context.Context, c *http.Client, u string, conns, size int, d time.Duration, res *loadResult) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	start := time.Now()
	for range conns {
		wg.Go(func() {
			var lat []time.Duration
			errs := 0
			for ctx.Err() == nil {
				t0 := time.Now()
				if err := fetch(ctx, c, u, size); err != nil {
					if ctx.Err() == nil {
						errs++
					}
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			res.reqs += len(lat)
			res.errs += errs
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed += time.Since(start)
}

func fetch(ctx context.Context, c *http.Client, u string, size int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	n, err := io.Copy(io.Discard, res.Body)
	if err == nil && (res.StatusCode != http.StatusOK || n != int64(size)) {
		err = fmt.Errorf("%s: status %d, %d bytes", u, res.StatusCode, n)
	}
	return err
}

// bigResult is what one variant showed with the large response.
type bigResult struct {
	ttfb       []time.Duration // one per probe
	duration   time.Duration   // of the last, whole response
	heapGrowth int64           // -1: not measured
	peakRSS    int64
}

func (r bigResult) medianTTFB() time.Duration {
	s := slices.Clone(r.ttfb)
	slices.Sort(s)
	return s[len(s)/2]
}

// bigProbe fetches the large response, timing its first body byte, and
// reads the rest only if whole.
func bigProbe(ctx context.Context, u string, big int64, whole bool) (ttfb, total time.Duration, err error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	res, err := c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer res.Body.Close()
	var one [1]byte
	if _, err := io.ReadFull(res.Body, one[:]); err != nil {
		return 0, 0, err
	}
	ttfb = time.Since(t0)
	if !whole {
		return ttfb, 0, nil
	}
	n, err := io.Copy(io.Discard, res.Body)
	if err == nil && n+1 != big {
		err = fmt.Errorf("large response: got %d of %d bytes", n+1, big)
	}
	return ttfb, time.Since(t0), err
}

// report is everything one run measured.
type report struct {
	cfg      config
	variants []string
	start    time.Time
	took     time.Duration
	load     map[string]*loadResult
	big      map[string]*bigResult
	mem      *memReport // nil unless -memory
}

// run measures and prints the report; failed says a budget line failed.
func run(ctx context.Context, cfg config, w io.Writer) (failed bool, err error) {
	rep, err := measure(ctx, cfg)
	if err != nil {
		return false, err
	}
	failed = rep.print(w, cfg.markdown)
	if rep.mem != nil {
		failed = rep.mem.print(w, cfg.markdown) || failed
	}
	return failed, nil
}

// measure runs both scenarios.
func measure(ctx context.Context, cfg config) (*report, error) {
	if cfg.rounds < 1 || cfg.conns < 1 || cfg.duration <= 0 || cfg.probes < 1 || cfg.size < 0 || cfg.big < 0 {
		return nil, errors.New("rounds, conns, duration and probes must be positive; size and big not negative")
	}
	if cfg.big > 0 && cfg.big < 1<<10 {
		return nil, errors.New("big must be at least 1024 bytes")
	}
	if cfg.mem.on {
		if err := cfg.mem.validate(); err != nil {
			return nil, err
		}
	}
	variants := strings.Split(cfg.variants, ",")
	for _, v := range variants {
		if _, ok := descriptions[v]; !ok {
			return nil, fmt.Errorf("unknown variant %q (have %s)", v, strings.Join(allVariants(), ", "))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	rep := &report{cfg: cfg, variants: variants, start: time.Now(),
		load: map[string]*loadResult{}, big: map[string]*bigResult{}}

	up, err := startChild(ctx, cfg.timeout+time.Minute, envRole+"=upstream")
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	defer up.stop()

	if err := runLoad(ctx, cfg, up, variants, rep); err != nil {
		return nil, err
	}
	if cfg.big > 0 {
		if err := runBig(ctx, cfg, up, variants, rep); err != nil {
			return nil, err
		}
	}
	if cfg.mem.on {
		if rep.mem, err = runMemory(ctx, cfg, up); err != nil {
			return nil, err
		}
	}
	rep.took = time.Since(rep.start)
	return rep, nil
}

// runLoad starts every proxy variant and drives them in alternating
// rounds, each round in a different order.
func runLoad(ctx context.Context, cfg config, up *child, variants []string, rep *report) error {
	procs := map[string]*child{}
	defer func() {
		for _, c := range procs {
			c.stop()
		}
	}()
	urls := map[string]string{}
	clients := map[string]*http.Client{}
	for _, v := range variants {
		urls[v] = up.url()
		if v != direct {
			c, err := startChild(ctx, cfg.timeout+time.Minute,
				envRole+"=proxy", envVariant+"="+v, envTarget+"="+up.urls())
			if err != nil {
				return fmt.Errorf("variant %s: %w", v, err)
			}
			procs[v] = c
			urls[v] = c.url()
		}
		urls[v] += "/bytes/" + strconv.Itoa(cfg.size)
		clients[v] = newLoadClient(cfg.conns)
		defer clients[v].CloseIdleConnections()
		rep.load[v] = &loadResult{}
		// One request proves the variant works, however busy the machine;
		// then warm connections, pools and code paths, not counted.
		if err := fetch(ctx, clients[v], urls[v], cfg.size); err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		load(ctx, clients[v], urls[v], cfg.conns, cfg.size, min(cfg.duration/4, 500*time.Millisecond), &loadResult{})
	}
	for round := range cfg.rounds {
		for i := range variants {
			v := variants[(i+round)%len(variants)]
			var before procStats
			if c := procs[v]; c != nil {
				var err error
				if before, err = c.stats(ctx, false); err != nil {
					return fmt.Errorf("variant %s: %w", v, err)
				}
			}
			load(ctx, clients[v], urls[v], cfg.conns, cfg.size, cfg.duration, rep.load[v])
			if c := procs[v]; c != nil {
				after, err := c.stats(ctx, false)
				if err != nil {
					return fmt.Errorf("variant %s: %w", v, err)
				}
				rep.load[v].allocs += after.Allocs - before.Allocs
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
	for _, r := range rep.load {
		slices.Sort(r.lat)
	}
	return nil
}

// runBig relays the large response through each variant. The proxies are
// fresh processes, so that their peak RSS is this scenario's. First the
// time to first byte is probed round-robin, each probe cut after its first
// byte, so that all variants share the machine's weather; then each variant
// relays one response whole, in turn. The naive variant only does the
// latter: its first byte waits for the whole body.
func runBig(ctx context.Context, cfg config, up *child, variants []string, rep *report) error {
	path := fmt.Sprintf("/slow/%d?pause=%s", cfg.big, cfg.pause)
	procs := map[string]*child{}
	defer func() {
		for _, c := range procs {
			c.stop()
		}
	}()
	urls := map[string]string{}
	for _, v := range variants {
		urls[v] = up.url() + path
		rep.big[v] = &bigResult{heapGrowth: -1, peakRSS: -1}
		if v == direct {
			continue
		}
		c, err := startChild(ctx, cfg.timeout+time.Minute,
			envRole+"=proxy", envVariant+"="+v, envTarget+"="+up.urls())
		if err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		procs[v] = c
		urls[v] = c.url() + path
		if _, err := c.stats(ctx, true); err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
	}
	for i := range cfg.probes - 1 {
		for j := range variants {
			v := variants[(i+j)%len(variants)]
			if v == "naive" {
				continue
			}
			ttfb, _, err := bigProbe(ctx, urls[v], cfg.big, false)
			if err != nil {
				return fmt.Errorf("variant %s, large response: %w", v, err)
			}
			rep.big[v].ttfb = append(rep.big[v].ttfb, ttfb)
		}
	}
	for _, v := range variants {
		res := rep.big[v]
		ttfb, total, err := bigProbe(ctx, urls[v], cfg.big, true)
		if err != nil {
			return fmt.Errorf("variant %s, large response: %w", v, err)
		}
		res.ttfb, res.duration = append(res.ttfb, ttfb), total
		if c := procs[v]; c != nil {
			st, err := c.stats(ctx, false)
			if err != nil {
				return fmt.Errorf("variant %s: %w", v, err)
			}
			res.heapGrowth = int64(st.HeapGrowth)
			if res.peakRSS, err = c.peakRSS(); err != nil {
				return fmt.Errorf("variant %s: %w", v, err)
			}
			c.stop() // its memory goes back before the next whole response
			delete(procs, v)
		}
	}
	return nil
}
