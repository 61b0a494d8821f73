package main

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/tapproxy/tapproxy"
)

// faultHeader is the request header with which, under -faults, a request
// sets off one of the proxy's own failure paths:
//
//   - "observer-panic" makes an observer panic;
//   - "slow-observer" holds the observer for a second, so that the requests
//     right after it fill the queue and are dropped;
//   - "upstreams-down" makes the demo API's /api/health fail on both
//     replicas for [upstreamsDownFor], so that the active checks mark both
//     down (an "active" ejection each) and the requests meanwhile fail open.
//
// A healthy demo never reaches those paths, yet the dashboard charts them
// and the alerts watch them; -faults lets both be tried. The request that
// carries the header is answered as usual.
const faultHeader = "X-Demo-Fault"

// slowObserverDelay is how long a "slow-observer" request holds the only
// observer worker.
const slowObserverDelay = time.Second

// upstreamsDownFor is how long an "upstreams-down" request makes the demo
// API's /api/health fail: long enough for the checks of demoPoolOptions,
// every 250ms, to mark both replicas down, short enough that a demo
// recovers by itself.
const upstreamsDownFor = 2 * time.Second

// demoReplicas is how many addresses the demo API is served on under
// -faults: the proxy balances over them as over replicas of one service.
const demoReplicas = 2

// faultOptions are what -faults adds to the proxy: observers on one worker
// with a queue of one, so that a held observer makes the proxy drop
// exchanges (tapproxy.observer.dropped); a capture budget of 16 KiB, which
// /api/export exceeds on its own (tapproxy.capture.skipped); and
// faultObserver, ahead of the orders observer (tapproxy.observer.panics with
// tapproxy.observer.index 0).
func faultOptions() []tapproxy.Option {
	return []tapproxy.Option{
		tapproxy.WithAsyncObservers(1, 1),
		tapproxy.WithCaptureBudget(16 << 10),
		tapproxy.WithObserver(tapproxy.ObserverFunc(faultObserver)),
	}
}

// demoPoolOptions are what -faults adds when the proxy balances over the
// demo API's replicas, so that the Upstreams row of the dashboard has data:
//
//   - active checks of /api/health every 250ms, two failures marking a
//     replica down: "upstreams-down" makes both fail, so that each is
//     ejected as "active" (tapproxy.upstream.ejections) and requests fail
//     open (tapproxy.balancer.fail_open) until the checks pass again;
//   - passive health that ejects a replica on its first failed attempt,
//     for 5s at first: the reset of /api/broken ejects one as "passive"
//     (at most one of the two at a time);
//   - two attempts, retried on resets too: /api/broken is retried on the
//     other replica (tapproxy.retries with reason "reset"), which resets
//     as well, so that the client still gets its 502. No status is
//     retried, so that the 503s of /api/flaky still reach the client.
func demoPoolOptions() []tapproxy.Option {
	return []tapproxy.Option{
		tapproxy.WithHealthCheck(tapproxy.HealthCheck{
			Path:     "/api/health",
			Interval: 250 * time.Millisecond,
			Timeout:  200 * time.Millisecond,
			Fails:    2,
		}),
		tapproxy.WithPassiveHealth(tapproxy.PassiveHealth{
			Failures:    1,
			Ejection:    5 * time.Second,
			MaxEjection: 30 * time.Second,
		}),
		tapproxy.WithRetry(tapproxy.Retry{Attempts: 2}),
	}
}

// faultObserver misbehaves as the request's faultHeader asks.
func faultObserver(ctx context.Context, ex *tapproxy.Exchange) {
	switch ex.Request.Header.Get(faultHeader) {
	case "observer-panic":
		panic("demo fault: an observer panicked, as asked by " + faultHeader)
	case "slow-observer":
		t := time.NewTimer(slowObserverDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// upstreamFaults is the demo API's side of -faults: its replicas share it,
// so that "upstreams-down" takes them all down at once.
type upstreamFaults struct {
	downUntil atomic.Int64 // UnixNano; /api/health fails before it
}

// wrap returns api with the faults: a request with "upstreams-down" starts
// (or extends) the window in which /api/health answers 503, and is itself
// answered by api.
func (f *upstreamFaults) wrap(api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		switch {
		case r.Header.Get(faultHeader) == "upstreams-down":
			f.downUntil.Store(now.Add(upstreamsDownFor).UnixNano())
		case r.URL.Path == "/api/health" && now.UnixNano() < f.downUntil.Load():
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"status":"down","fault":"upstreams-down"}`))
			return
		}
		api.ServeHTTP(w, r)
	})
}
