package tapproxy

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
)

// WithCapturePolicy sets the function that chooses, for each response, how
// many bytes of its body are kept for observers, so that memory goes to
// the bodies someone reads. It is called once per relayed response, after
// the [WithModifyResponse] hook and before the first body byte is kept,
// with the response as the client gets it; it should decide from the
// status and headers and must not read the body. Its result is that
// response's capture limit in place of [WithCaptureLimit]'s: 0, or a
// negative result, keeps nothing and takes no buffer, while observers
// still run with the exchange's counts. It must be quick and safe for
// concurrent use. If it panics, the panic is logged and that response is
// not captured.
//
// It is not called for a 101 Switching Protocols response, nor when there
// is nothing to capture for: no observer, or only observers that say they
// read no body (see [BodylessObserver]). Request bodies keep the limit of
// [WithRequestCaptureLimit].
//
// The default policy gives every response the capture limit. A nil
// function keeps the default. The last call wins.
func WithCapturePolicy(f func(res *http.Response) int64) Option {
	return optionFunc(func(c *config) {
		if f != nil {
			c.capturePolicy = f
		}
	})
}

// A BodylessObserver is a [ResponseObserver] that can say it never reads
// bodies: an access log, or one that records status and latency. When
// every observer of a proxy is bodyless, the proxy captures nothing, for
// responses and requests alike, and an in-flight exchange costs no more
// than with no observer; [Exchange.Body] and [Exchange.RequestBody] are
// then empty. One observer that reads bodies, or does not implement this
// interface, turns capturing back on for all.
type BodylessObserver interface {
	ResponseObserver

	// Bodyless reports whether the observer never reads Exchange.Body,
	// Exchange.DecodedBody or Exchange.RequestBody. [New] asks once.
	Bodyless() bool
}

// HeadersOnly returns an observer that calls o and says it reads no body
// (see [BodylessObserver]): o must not rely on [Exchange.Body],
// [Exchange.DecodedBody] or [Exchange.RequestBody]. A nil o gives nil,
// which [WithObserver] skips.
func HeadersOnly(o ResponseObserver) ResponseObserver {
	if o == nil {
		return nil
	}
	return headersOnly{o}
}

type headersOnly struct{ ResponseObserver }

func (headersOnly) Bodyless() bool { return true }

var _ BodylessObserver = headersOnly{}

// readsBodies reports whether any of the observers may read a body.
func readsBodies(observers []ResponseObserver) bool {
	for _, o := range observers {
		if b, ok := o.(BodylessObserver); !ok || !b.Bodyless() {
			return true
		}
	}
	return false
}

// limitFor applies the capture policy to res: the limit of its response
// capture. A panic in the policy is logged to logger and captures nothing.
func (s *captureSettings) limitFor(ctx context.Context, res *http.Response, logger *slog.Logger) (limit int) {
	defer func() {
		if v := recover(); v != nil {
			limit = 0
			logger.LogAttrs(ctx, slog.LevelError, "tapproxy: capture policy panicked",
				slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
		}
	}()
	return int(min(max(s.policy(res), 0), math.MaxInt32))
}
