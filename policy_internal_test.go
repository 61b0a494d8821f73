package tapproxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCapturePolicyZeroPoolAllocs checks the pool itself: every buffer a
// capture takes goes back on release, so a pool that is still empty after
// an exchange was never drawn from. (Named for the CI step that runs
// allocation tests without -race.)
func TestCapturePolicyZeroPoolAllocs(t *testing.T) {
	if RaceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	tests := []struct {
		name   string
		policy func(*http.Response) int64
		taken  bool
	}{
		{"policy returning 0", func(*http.Response) int64 { return 0 }, false},
		{"policy returning 1 KiB", func(*http.Response) int64 { return 1 << 10 }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nop := ObserverFunc(func(context.Context, *Exchange) {})
			p, err := New(&url.URL{Scheme: "http", Host: "upstream.test"}, WithObserver(nop),
				WithCapturePolicy(tt.policy), WithTransport(rtFunc(func(r *http.Request) (*http.Response, error) {
					return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, ContentLength: -1,
						Body: io.NopCloser(strings.NewReader("some body")), Request: r}, nil
				})))
			require.NoError(t, err)
			p.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
			_, pooled := p.capture.resp.pool.Get().(*[]byte)
			assert.Equal(t, tt.taken, pooled)
			assert.Zero(t, p.capture.budget.used.Load(), "nothing held after the exchange")
		})
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
