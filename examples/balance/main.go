// Command balance puts tapproxy in front of three replicas of a service,
// kills one of them while traffic flows, and later revives it: clients see
// no failure, and the proxy says which replica failed and when it came
// back.
//
// The replicas are embedded HTTP servers on loopback. The proxy balances
// over them with [tapproxy.NewBalanced] (least requests), checks their
// /healthz actively, ejects a failing one passively, and retries failed
// dials and 502/503 answers on another replica.
//
//	go run ./examples/balance -demo 300
//
// sends 300 requests, kills the third replica after a third of them and
// revives it after two thirds, then prints the requests each replica
// served, the failures clients saw, and the ejections and re-admissions.
// Without -demo it serves the proxy on -port (default 8080) until
// interrupted, killing and reviving the third replica every 10 seconds.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tapproxy/tapproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "balance:", err)
		os.Exit(2)
	}
}

// replicas is how many upstreams the demo starts.
const replicas = 3

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("balance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	demo := fs.Int("demo", 0, "send `N` requests, print what happened, and exit")
	port := fs.Int("port", 8080, "the proxy's `port` when not in -demo mode")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *demo < 0 {
		return fmt.Errorf("-demo %d: must not be negative", *demo)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	ups := make([]*replica, replicas)
	targets := make([]*url.URL, replicas)
	for i := range ups {
		r, err := startReplica(i)
		if err != nil {
			return err
		}
		defer r.kill()
		ups[i], targets[i] = r, &url.URL{Scheme: "http", Host: r.addr}
	}

	proxy, err := tapproxy.NewBalanced(targets,
		tapproxy.WithHealthCheck(tapproxy.HealthCheck{
			Path:     "/healthz",
			Interval: 200 * time.Millisecond,
			Fails:    2,
			Passes:   2,
		}),
		// A short ejection, so that the demo sees the replica come back.
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{Failures: 3, Ejection: time.Second}),
		tapproxy.WithRetry(tapproxy.Retry{Statuses: []int{http.StatusBadGateway, http.StatusServiceUnavailable}}),
		tapproxy.WithLogger(logger))
	if err != nil {
		return err
	}
	defer proxy.Close()
	ev := watch(proxy)
	defer ev.stop()

	addr := net.JoinHostPort("", strconv.Itoa(*port))
	if *demo > 0 {
		addr = "127.0.0.1:0" // the demo talks to itself
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError)}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())
	front := "http://" + l.Addr().String()

	if *demo == 0 {
		fmt.Fprintf(stdout, "Balancing %s over %d replicas. Try:\n  curl %s/\n", front, replicas, front)
		return chaos(ctx, ups[replicas-1], ev, stdout)
	}
	return runDemo(ctx, front, *demo, ups, ev, stdout)
}

// runDemo sends n requests from 4 clients, kills the last replica after a
// third of them and revives it after two thirds, and prints the outcome.
func runDemo(ctx context.Context, front string, n int, ups []*replica, ev *events, stdout io.Writer) error {
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	victim := ups[len(ups)-1]
	var sent, failed atomic.Int64
	var failures sync.Map // what the clients saw, by message
	next := make(chan int)
	go func() {
		defer close(next)
		for i := range n {
			switch i {
			case n / 3:
				victim.kill()
				ev.note("%s killed", victim.addr)
			case 2 * n / 3:
				if err := victim.revive(); err != nil {
					ev.note("%s could not be revived: %v", victim.addr, err)
				} else {
					ev.note("%s revived", victim.addr)
				}
			}
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
			// Pace the requests over about three seconds, so that
			// health checks run while they flow.
			time.Sleep(3 * time.Second / time.Duration(n))
		}
	}()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range next {
				sent.Add(1)
				res, err := client.Get(front + "/")
				if err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						err = errors.New(res.Status)
					}
				}
				if err != nil {
					failed.Add(1)
					failures.Store(err.Error(), true)
				}
			}
		})
	}
	wg.Wait()
	// Give the revived replica a moment to pass its checks again.
	deadline := time.Now().Add(5 * time.Second)
	for !ev.readmitted(victim.addr) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}

	fmt.Fprintf(stdout, "Sent %d requests through %s to %d replicas.\n\nRequests per upstream:\n", sent.Load(), front, len(ups))
	for _, u := range ups {
		fmt.Fprintf(stdout, "  %-22s %d\n", u.addr, u.served.Load())
	}
	fmt.Fprintf(stdout, "\nFailures seen by clients: %d\n", failed.Load())
	failures.Range(func(k, _ any) bool {
		fmt.Fprintf(stdout, "  %s\n", k)
		return true
	})
	fmt.Fprintln(stdout, "\nEjections and re-admissions:")
	ev.print(stdout)
	return ctx.Err()
}

// chaos kills the replica every 10 seconds and revives it 10 seconds later,
// until ctx is done, reporting what the proxy saw.
func chaos(ctx context.Context, victim *replica, ev *events, stdout io.Writer) error {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	ev.live(stdout)
	for alive := true; ; alive = !alive {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if alive {
			victim.kill()
			ev.note("%s killed", victim.addr)
		} else if err := victim.revive(); err != nil {
			ev.note("%s could not be revived: %v", victim.addr, err)
		} else {
			ev.note("%s revived", victim.addr)
		}
	}
}

// replica is one embedded upstream, which can be killed and revived on
// the same address.
type replica struct {
	id     int
	addr   string
	served atomic.Int64
	mu     sync.Mutex
	srv    *http.Server
}

func startReplica(id int) (*replica, error) {
	r := &replica{id: id}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.addr = l.Addr().String()
	r.serve(l)
	return r, nil
}

func (r *replica) serve(l net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		r.served.Add(1)
		fmt.Fprintf(w, "replica %d answered %s\n", r.id, req.URL.Path)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go srv.Serve(l)
}

// kill closes the replica's listener and connections at once, as a crash
// would.
func (r *replica) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		r.srv.Close()
		r.srv = nil
	}
}

// revive serves the replica again on its address.
func (r *replica) revive() error {
	l, err := net.Listen("tcp", r.addr)
	if err != nil {
		return err
	}
	r.serve(l)
	return nil
}

// events polls the proxy's view of its upstreams and notes each change of
// health, with the time since the start.
type events struct {
	proxy   *tapproxy.Proxy
	start   time.Time
	mu      sync.Mutex
	lines   []string
	healthy map[string]bool
	back    map[string]bool // re-admitted after an ejection
	out     io.Writer       // where to print lines as they come, if live
	done    chan struct{}
	stopped chan struct{}
}

func watch(p *tapproxy.Proxy) *events {
	e := &events{proxy: p, start: time.Now(), healthy: map[string]bool{}, back: map[string]bool{},
		done: make(chan struct{}), stopped: make(chan struct{})}
	for _, u := range p.Upstreams() {
		e.healthy[u.URL.Host] = u.Healthy
	}
	go e.poll()
	return e
}

func (e *events) poll() {
	defer close(e.stopped)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-e.done:
			return
		case <-t.C:
		}
		for _, u := range e.proxy.Upstreams() {
			e.mu.Lock()
			was := e.healthy[u.URL.Host]
			e.healthy[u.URL.Host] = u.Healthy
			e.mu.Unlock()
			switch {
			case was && !u.Healthy:
				why := "ejected by passive health"
				if u.Down {
					why = "marked down by health checks"
				}
				e.note("%s %s (last error: %v)", u.URL.Host, why, u.LastError)
			case !was && u.Healthy:
				e.mu.Lock()
				e.back[u.URL.Host] = true
				e.mu.Unlock()
				e.note("%s re-admitted", u.URL.Host)
			}
		}
	}
}

func (e *events) note(format string, args ...any) {
	line := fmt.Sprintf("  +%5.2fs  ", time.Since(e.start).Seconds()) + fmt.Sprintf(format, args...)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lines = append(e.lines, line)
	if e.out != nil {
		fmt.Fprintln(e.out, line)
	}
}

func (e *events) readmitted(host string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.back[host]
}

func (e *events) live(w io.Writer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.out = w
}

func (e *events) print(w io.Writer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, l := range e.lines {
		fmt.Fprintln(w, l)
	}
}

func (e *events) stop() {
	close(e.done)
	<-e.stopped
}
