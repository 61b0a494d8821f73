package e2e

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tapproxy/tapproxy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait in these tests. It is generous: tests
// assert order and outcome, never speed.
const waitTimeout = 10 * time.Second

// testLogger routes logs to tb.Log.
func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, nil))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(p))
	return len(p), nil
}

// observed is what a recorder keeps of one exchange: copies, since the
// Exchange is valid only during the call.
type observed struct {
	Path        string
	OutHeader   http.Header
	HasResponse bool
	Status      int
	ProtoMajor  int
	Header      http.Header
	Trailer     http.Header
	Body        []byte
	BodyBytes   int64
	Err         error
}

// recorder is an observer that keeps copies of what it saw.
type recorder struct {
	mu sync.Mutex
	n  int
	ch chan observed
}

func newRecorder() *recorder { return &recorder{ch: make(chan observed, 64)} }

func (r *recorder) ObserveResponse(_ context.Context, ex *tapproxy.Exchange) {
	o := observed{
		Path:      ex.Request.URL.Path,
		OutHeader: ex.Request.Header.Clone(),
		BodyBytes: ex.BodyBytes,
		Err:       ex.Err,
	}
	o.Body, _ = io.ReadAll(ex.Body())
	if ex.Response != nil {
		o.HasResponse = true
		o.Status = ex.Response.StatusCode
		o.ProtoMajor = ex.Response.ProtoMajor
		o.Header = ex.Response.Header.Clone()
		o.Trailer = ex.Response.Trailer.Clone()
	}
	r.mu.Lock()
	r.n++
	r.mu.Unlock()
	r.ch <- o
}

// next waits for the next observed exchange.
func (r *recorder) next(tb testing.TB) observed {
	tb.Helper()
	select {
	case o := <-r.ch:
		return o
	case <-time.After(waitTimeout):
		tb.Fatal("no exchange observed")
		return observed{}
	}
}

// count reports how many exchanges were observed so far.
func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}
