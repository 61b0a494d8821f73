package tapproxy

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// dispatcher hands settled exchanges to a fixed pool of workers that run
// the observers, so that a slow observer never holds a request's goroutine.
// Its queue is bounded: when it is full, exchanges are dropped, not waited
// for.
type dispatcher struct {
	mu     sync.RWMutex // guards closed against sends on a closed queue
	closed bool
	queue  chan *exchangeState
	done   chan struct{} // closed when every worker has returned
}

// checkAsync validates c's options for asynchronous observers.
func checkAsync(c *config) error {
	if c.async && (c.asyncWorkers < 1 || c.asyncQueue < 0) {
		return fmt.Errorf("tapproxy: asynchronous observers need workers > 0 and a queue size >= 0, got %d and %d", c.asyncWorkers, c.asyncQueue)
	}
	return nil
}

func newDispatcher(p *Proxy, workers, size int) *dispatcher {
	d := &dispatcher{queue: make(chan *exchangeState, size), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for st := range d.queue {
				p.runObservers(st)
			}
		})
	}
	go func() {
		wg.Wait()
		close(d.done)
	}()
	return d
}

// dispatch queues st and reports true, or, once the dispatcher is closed,
// reports false so that the caller observes st itself. A full queue drops
// st: it is released, and dispatch still reports true.
func (d *dispatcher) dispatch(p *Proxy, st *exchangeState) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return false
	}
	select {
	case d.queue <- st:
	default:
		p.metrics.dropped(st.obs.rctx)
		st.release()
	}
	return true
}

// close stops queueing and waits until the workers have drained the queue
// or ctx is done.
func (d *dispatcher) close(ctx context.Context) error {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.queue)
	}
	d.mu.Unlock()
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown releases the proxy's resources. It stops the active health
// checks (see [WithHealthCheck]) and the upstreams' health gauge. It stops queueing exchanges for
// asynchronous observers (see [WithAsyncObservers]) and waits until those
// already queued have been observed, or until ctx is done, when it returns
// ctx's error and the workers finish the queue in the background. Exchanges
// that end after Shutdown began are observed on their request's goroutine,
// so none is lost. It also closes the transport's idle connections, and
// stops reporting the gauges (tapproxy.capture.held,
// tapproxy.capture.budget and tapproxy.upstream.healthy), whose callbacks
// would otherwise keep the proxy reachable from its MeterProvider.
//
// Shut the [http.Server] down first, so that no new requests arrive. Calling
// Shutdown again waits again; it is safe for concurrent use.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.pool.close()
	p.metrics.stopGauges()
	if ci, ok := p.transport.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
	if p.async == nil {
		return nil
	}
	return p.async.close(ctx)
}

// Close is Shutdown without a deadline: it returns once every queued
// exchange has been observed.
func (p *Proxy) Close() error { return p.Shutdown(context.Background()) }

var _ io.Closer = (*Proxy)(nil)
