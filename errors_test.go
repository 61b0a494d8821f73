package tapproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	live := context.Background()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Unix(0, 0))
	defer cancel2()

	dialRefused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	other := errors.New("something else")
	tests := []struct {
		name    string
		ctx     context.Context
		err     error
		midBody bool
		kind    error // nil: returned unchanged
	}{
		{"dial refused", live, dialRefused, false, ErrUpstreamUnavailable},
		{"name not found", live, &net.DNSError{Err: "no such host", Name: "x"}, false, ErrUpstreamUnavailable},
		{"dial timeout", live, &net.OpError{Op: "dial", Err: timeoutErr{}}, false, ErrUpstreamTimeout},
		{"header timeout", live, fmt.Errorf("net/http: timeout awaiting response headers: %w", timeoutErr{}), false, ErrUpstreamTimeout},
		{"deadline", live, context.DeadlineExceeded, false, ErrUpstreamTimeout},
		{"request deadline passed", expired, other, false, ErrUpstreamTimeout},
		{"client left", gone, context.Canceled, false, ErrClientGone},
		{"client left wins over upstream error", gone, dialRefused, false, ErrClientGone},
		{"closed before response", live, fmt.Errorf("net/http: HTTP/1.x transport connection broken: %w", io.EOF), false, ErrUpstreamReset},
		{"reset", live, &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, false, ErrUpstreamReset},
		{"short body", live, io.ErrUnexpectedEOF, true, ErrUpstreamReset},
		{"unknown error mid-body", live, other, true, ErrUpstreamReset},
		{"malformed status line", live, errors.New(`net/http: HTTP/1.x transport connection broken: malformed HTTP response "garbage"`), false, ErrUpstreamMalformed},
		{"bad content length", live, errors.New(`bad Content-Length "x"`), false, ErrUpstreamMalformed},
		{"unknown error before response", live, other, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := classify(tt.ctx, tt.err, tt.midBody)
			if tt.kind == nil {
				assert.Same(t, tt.err, got)
				return
			}
			assert.ErrorIs(t, got, tt.kind)
			assert.ErrorIs(t, got, tt.err, "the cause stays reachable")
			assert.Equal(t, tt.kind, kindOf(got))
			for _, k := range []error{ErrUpstreamUnavailable, ErrUpstreamTimeout, ErrUpstreamReset, ErrUpstreamMalformed, ErrClientGone} {
				if k != tt.kind {
					assert.NotErrorIs(t, got, k, "one kind only")
				}
			}
			assert.Contains(t, got.Error(), tt.err.Error())
		})
	}
	assert.Nil(t, classify(live, nil, true))
}
