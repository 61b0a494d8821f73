package main

import (
	"context"
	"time"

	"github.com/tapproxy/tapproxy"
)

// faultHeader is the request header with which, under -faults, a request
// sets off one of the proxy's own failure paths: "observer-panic" makes an
// observer panic, and "slow-observer" holds the observer for a second, so
// that the requests right after it fill the queue and are dropped. A healthy
// demo never reaches those paths, yet the dashboard charts them and the
// alerts watch them; -faults lets both be tried.
const faultHeader = "X-Demo-Fault"

// slowObserverDelay is how long a "slow-observer" request holds the only
// observer worker.
const slowObserverDelay = time.Second

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
