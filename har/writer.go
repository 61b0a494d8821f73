package har

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/tapproxy/tapproxy"
)

// ScopeName is the instrumentation scope of this package's metrics.
const ScopeName = "github.com/tapproxy/tapproxy/har"

// DefaultQueueSize is how many entries a [Writer] holds for writing when
// [WithQueueSize] is not given.
const DefaultQueueSize = 1024

// A WriterOption configures a [Writer].
type WriterOption interface {
	applyWriter(*writerConfig)
}

type writerOptionFunc func(*writerConfig)

func (f writerOptionFunc) applyWriter(c *writerConfig) { f(c) }

type writerConfig struct {
	mp    metric.MeterProvider
	queue int
}

// WithMeterProvider sets the OpenTelemetry MeterProvider that the Writer
// counts its dropped entries with, as tapproxy.har.dropped. The default is
// [otel.GetMeterProvider] at the time [NewWriter] runs. Nil keeps the
// default. The last call wins.
func WithMeterProvider(mp metric.MeterProvider) WriterOption {
	return writerOptionFunc(func(c *writerConfig) {
		if mp != nil {
			c.mp = mp
		}
	})
}

// WithQueueSize sets how many entries may wait to be written. When the
// queue is full, for example because w is slow, an entry is dropped and
// counted rather than delay the exchange. The default is [DefaultQueueSize].
// A value below 1 keeps the default. The last call wins.
func WithQueueSize(n int) WriterOption {
	return writerOptionFunc(func(c *writerConfig) {
		if n >= 1 {
			c.queue = n
		}
	})
}

// A Writer is a [tapproxy.ResponseObserver] that streams one HAR document to
// an [io.Writer]: the head of the document when it is created, one entry per
// exchange as it ends, and the end of the document on [Writer.Close]. What it
// has written is a valid document only once Close returns.
//
// It never delays an exchange by more than the conversion: entries are
// written on a goroutine of the Writer's own, through a queue (see
// [WithQueueSize]). An entry that finds the queue full is dropped. The first
// write error stops the Writer: later entries are dropped, and Close reports
// the error. Dropped entries are counted by the tapproxy.har.dropped metric
// (see [WithMeterProvider]). It is safe for concurrent use. Close it to stop
// its goroutine.
type Writer struct {
	w       io.Writer
	dropped metric.Int64Counter

	mu     sync.Mutex // guards queue sends against Close
	closed bool
	queue  chan []byte
	done   chan struct{}

	failed    atomic.Bool
	err       error // the first write error; read after done
	closeOnce sync.Once
}

var _ tapproxy.ResponseObserver = (*Writer)(nil)

// head opens a document: an empty pages list, since a proxy has no pages,
// and the entries list.
var head, tail = func() ([]byte, []byte) {
	b, _ := json.Marshal(Creator{Name: DefaultCreator.Name, Version: DefaultCreator.Version})
	return []byte(`{"log":{"version":"` + Version + `","creator":` + string(b) + `,"pages":[],"entries":[`), []byte("\n]}}\n")
}()

// NewWriter returns a Writer that writes to w and starts writing the head
// of the document.
func NewWriter(w io.Writer, opts ...WriterOption) *Writer {
	c := writerConfig{queue: DefaultQueueSize}
	for _, o := range opts {
		if o != nil {
			o.applyWriter(&c)
		}
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	hw := &Writer{w: w, queue: make(chan []byte, c.queue), done: make(chan struct{})}
	meter := c.mp.Meter(ScopeName, metric.WithInstrumentationVersion(tapproxy.Version))
	var err error
	hw.dropped, err = meter.Int64Counter("tapproxy.har.dropped",
		metric.WithUnit("{entry}"),
		metric.WithDescription("HAR entries not written: the queue was full or a write had failed."))
	if err != nil {
		// A provider that rejects the instrument records nothing; the
		// Writer still works.
		hw.dropped, _ = noop.NewMeterProvider().Meter(ScopeName).Int64Counter("tapproxy.har.dropped")
	}
	go hw.run()
	return hw
}

// ObserveResponse converts ex with [FromExchange] and queues it for writing.
func (w *Writer) ObserveResponse(ctx context.Context, ex *tapproxy.Exchange) {
	if w.failed.Load() {
		w.dropped.Add(ctx, 1)
		return
	}
	e := FromExchange(ex)
	w.write(ctx, &e)
}

// WriteEntry queues e for writing, as ObserveResponse does an exchange.
func (w *Writer) WriteEntry(e Entry) {
	ctx := context.Background()
	if w.failed.Load() {
		w.dropped.Add(ctx, 1)
		return
	}
	w.write(ctx, &e)
}

func (w *Writer) write(ctx context.Context, e *Entry) {
	b, err := json.Marshal(e)
	if err != nil {
		w.dropped.Add(ctx, 1) // cannot happen: entries hold only strings and numbers
		return
	}
	w.mu.Lock()
	ok := false
	if !w.closed {
		select {
		case w.queue <- b:
			ok = true
		default:
		}
	}
	w.mu.Unlock()
	if !ok {
		w.dropped.Add(ctx, 1)
	}
}

func (w *Writer) run() {
	defer close(w.done)
	_, err := w.w.Write(head)
	sep := []byte("\n")
	for b := range w.queue {
		if err == nil {
			if _, err = w.w.Write(sep); err == nil {
				_, err = w.w.Write(b)
			}
			sep = []byte(",\n")
			if err == nil {
				continue
			}
			w.failed.Store(true)
		}
		w.dropped.Add(context.Background(), 1)
	}
	if err == nil {
		_, err = w.w.Write(tail)
	}
	if err != nil {
		w.err = fmt.Errorf("tapproxy: har: writing the document: %w", err)
	}
}

// Close writes the entries still queued and the end of the document, and
// returns the first write error, if any. Entries that arrive after Close are
// dropped. It does not close the underlying io.Writer. Calling it again
// returns the same error.
func (w *Writer) Close() error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		close(w.queue)
		w.mu.Unlock()
	})
	<-w.done
	return w.err
}
