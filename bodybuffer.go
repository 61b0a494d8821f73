package tapproxy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// captureSettings is how a proxy captures bodies for its observers: the
// limits, the capture policy, and the storage the captures draw on.
type captureSettings struct {
	limit    int                        // per response; 0 when no observer reads bodies
	reqLimit int                        // per request; 0 likewise
	policy   func(*http.Response) int64 // nil: limit for every response
	resp     capturePool
	req      capturePool
	budget   captureBudget // it counts what captures hold, bounded or not
}

// newCaptureSettings validates c's capture options and returns the
// settings they make.
func newCaptureSettings(c *config) (*captureSettings, error) {
	var errs []error
	if c.captureLimit < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: capture limit %d is negative", c.captureLimit))
	}
	if c.reqCapture < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: request capture limit %d is negative", c.reqCapture))
	}
	if c.captureBudget < 0 {
		errs = append(errs, fmt.Errorf("tapproxy: capture budget %d is negative", c.captureBudget))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s := &captureSettings{budget: captureBudget{limit: budgetLimit(c.captureBudget)}}
	if readsBodies(c.observers) {
		// Without observers that read them nobody reads the captures, so
		// take none; bodies are still counted.
		s.limit = int(min(c.captureLimit, math.MaxInt32))
		s.reqLimit = int(min(c.reqCapture, math.MaxInt32))
		s.policy = c.capturePolicy
	}
	return s, nil
}

// response returns an empty capture of a response body, before the
// policy had its say.
func (s *captureSettings) response() bodyBuffer {
	return bodyBuffer{limit: s.limit, pool: &s.resp, budget: &s.budget}
}

// request returns an empty capture of a request body.
func (s *captureSettings) request() bodyBuffer {
	return bodyBuffer{limit: s.reqLimit, pool: &s.req, budget: &s.budget}
}

// bodyBuffer keeps the first limit bytes written to it and counts the rest.
// Like os/exec's prefixSuffixSaver, it never fails the stream it copies:
// Write always reports len(p), nil. Its storage comes from a capturePool and
// goes back there on release. With a budget, the storage it holds is
// reserved from the budget as it grows; when the budget refuses, the buffer
// keeps what it has and stops growing.
type bodyBuffer struct {
	pool       *capturePool
	budget     *captureBudget // nil: no global bound
	buf        *[]byte        // nil until the first byte arrives
	limit      int
	total      int64
	reserved   int64 // from budget; covers cap(*buf)
	overBudget bool  // the budget refused: the capture is cut or skipped
}

func (b *bodyBuffer) Write(p []byte) (int, error) {
	b.total += int64(len(p))
	room := b.limit - b.len()
	if room <= 0 || len(p) == 0 || b.overBudget {
		return len(p), nil
	}
	if b.buf == nil {
		b.buf = b.pool.get()
		if b.budget != nil && !b.budget.reserve(int64(cap(*b.buf))) {
			// Too big a pooled buffer for what is left: start empty.
			b.pool.put(b.buf)
			b.buf = new([]byte)
		} else if b.budget != nil {
			b.reserved = int64(cap(*b.buf))
		}
	}
	keep := p[:min(room, len(p))]
	buf := *b.buf
	if need := len(buf) + len(keep); need > cap(buf) {
		// Grow by doubling, but never past the limit: what goes back to
		// the pool is at most limit bytes.
		size := min(b.limit, max(need, 2*cap(buf), 512))
		switch {
		case b.reserveFor(size):
		case b.reserveFor(need):
			size = need
		default:
			b.cut()
			keep = keep[:cap(buf)-len(buf)]
			size = cap(buf)
		}
		if size > cap(buf) {
			grown := make([]byte, len(buf), size)
			copy(grown, buf)
			buf = grown
		}
	}
	*b.buf = append(buf, keep...)
	return len(p), nil
}

// reserveFor takes from the budget what a capacity of size needs beyond
// what b holds already, and reports whether it may grow to size.
func (b *bodyBuffer) reserveFor(size int) bool {
	if b.budget == nil {
		return true
	}
	if !b.budget.reserve(int64(size) - b.reserved) {
		return false
	}
	b.reserved = int64(size)
	return true
}

// cut stops the capture at what it holds, because the budget is spent.
func (b *bodyBuffer) cut() { b.overBudget = true }

func (b *bodyBuffer) len() int {
	if b.buf == nil {
		return 0
	}
	return len(*b.buf)
}

// bytes returns the kept prefix. It aliases the pooled storage.
func (b *bodyBuffer) bytes() []byte {
	if b.buf == nil {
		return nil
	}
	return *b.buf
}

// truncated reports whether bytes were written past the limit.
func (b *bodyBuffer) truncated() bool { return b.total > int64(b.len()) }

// release returns the storage to the pool and the reservation to the
// budget, and readies b for reuse.
func (b *bodyBuffer) release() {
	if b.buf != nil {
		b.pool.put(b.buf)
	}
	if b.reserved > 0 {
		b.budget.used.Add(-b.reserved)
	}
	*b = bodyBuffer{}
}

// capturePool recycles capture storage. Each Proxy has its own, so buffers
// are sized for its limit and a proxy with a large limit does not leave large
// buffers to one with a small limit.
type capturePool struct{ pool sync.Pool }

func (p *capturePool) get() *[]byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return b
	}
	return new([]byte)
}

func (p *capturePool) put(b *[]byte) {
	*b = (*b)[:0]
	p.pool.Put(b)
}

// captureBudget counts the bytes that the in-flight captures of one Proxy
// hold together, and bounds them (see WithCaptureBudget). Buffers reserve
// capacity before they grow and give it back when the exchange is
// released; buffers resting in the pool are not counted.
type captureBudget struct {
	limit int64 // math.MaxInt64: no bound, only the count
	used  atomic.Int64
}

// budgetLimit returns the limit of a budget of n bytes; 0 counts without a
// bound.
func budgetLimit(n int64) int64 {
	if n <= 0 {
		return math.MaxInt64
	}
	return n
}

// bounded reports whether the budget has a limit.
func (c *captureBudget) bounded() bool { return c.limit != math.MaxInt64 }

// reserve takes n bytes from the budget if they fit.
func (c *captureBudget) reserve(n int64) bool {
	if n <= 0 {
		return true
	}
	if !c.bounded() {
		// A counter only: one atomic add, no compare-and-swap loop.
		c.used.Add(n)
		return true
	}
	for {
		used := c.used.Load()
		if used+n > c.limit {
			return false
		}
		if c.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// The names of the capture gauges.
const (
	captureHeldName   = "tapproxy.capture.held"
	captureBudgetName = "tapproxy.capture.budget"
)

// register reports, through mp, the bytes the captures hold, and the
// budget's limit if it has one, each time the metrics are collected.
func (c *captureBudget) register(mp metric.MeterProvider) (metric.Registration, error) {
	meter := mp.Meter(ScopeName, metric.WithInstrumentationVersion(Version), metric.WithSchemaURL(semconv.SchemaURL))
	held, err := meter.Int64ObservableGauge(captureHeldName,
		metric.WithDescription("Bytes that the captures of in-flight exchanges hold now."),
		metric.WithUnit("By"))
	if err != nil {
		return nil, err
	}
	insts := []metric.Observable{held}
	var limit metric.Int64ObservableGauge
	if c.bounded() {
		limit, err = meter.Int64ObservableGauge(captureBudgetName,
			metric.WithDescription("The capture budget: the most bytes that captures may hold together."),
			metric.WithUnit("By"))
		if err != nil {
			return nil, err
		}
		insts = append(insts, limit)
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(held, c.used.Load())
		if limit != nil {
			o.ObserveInt64(limit, c.limit)
		}
		return nil
	}, insts...)
}
