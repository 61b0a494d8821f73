package tapproxytest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tapproxy/tapproxy/tapproxytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait in these tests. It is generous: tests
// assert order and outcome, never speed.
const waitTimeout = 10 * time.Second

// waitCtx returns a context that ends after waitTimeout or with the test.
func waitCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(tb.Context(), waitTimeout)
	tb.Cleanup(cancel)
	return ctx
}

// exchange waits for the n-th recorded exchange.
func exchange(tb testing.TB, s *tapproxytest.Server, n int) tapproxytest.Exchange {
	tb.Helper()
	ex, err := s.Recorder.Wait(waitCtx(tb), n)
	require.NoError(tb, err)
	return ex
}

// text is an upstream that answers with body.
func text(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, body)
	}
}

// get sends a GET through c and returns the response and its body, read to
// the end or to the first error, which it also returns.
func get(tb testing.TB, c *http.Client, u string) (*http.Response, []byte, error) {
	tb.Helper()
	req, err := http.NewRequestWithContext(waitCtx(tb), http.MethodGet, u, nil)
	require.NoError(tb, err)
	res, err := c.Do(req)
	require.NoError(tb, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res, body, err
}

// fakeTB is a TB from no test framework: it collects what the server logs
// and reports, and runs cleanups when told.
type fakeTB struct {
	mu       sync.Mutex
	name     string
	failed   bool
	logs     []string
	errors   []string
	fatals   []string
	cleanups []func()
}

func (f *fakeTB) Name() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.name
}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed || len(f.errors) > 0 || len(f.fatals) > 0
}

// fail marks the test failed, as t.Error does.
func (f *fakeTB) fail() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = true
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeTB) Log(args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logs = append(f.logs, fmt.Sprint(args...))
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}

func (f *fakeTB) allErrors() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.errors...)
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
}

// finish runs the cleanups, last first, as testing does.
func (f *fakeTB) finish() {
	f.mu.Lock()
	fns := f.cleanups
	f.cleanups = nil
	f.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

func (f *fakeTB) allLogs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.logs...)
}

var _ tapproxytest.TB = (*fakeTB)(nil)
var _ tapproxytest.TB = testing.TB(nil)
