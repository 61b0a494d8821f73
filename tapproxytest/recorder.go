package tapproxytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/tapproxy/tapproxy"
)

// DefaultMaxExchanges is how many exchanges a [Server]'s recorder keeps when
// [WithMaxExchanges] is not given.
const DefaultMaxExchanges = 1000

// An Exchange is a recorded copy of one proxied request and its response.
// Unlike a [tapproxy.Exchange] it stays valid after the exchange ended; it
// shares its slices and maps with the [Recorder] and other callers, so treat
// it as read-only.
type Exchange struct {
	// Seq numbers the exchange in the recording: 1 for the first to end
	// after the recorder was created or reset, 2 for the next, and so on.
	// Exchanges are numbered in the order they ended, which under
	// concurrency need not be the order their requests arrived.
	Seq int

	// Request is the request as the proxy sent it upstream.
	Request Request

	// Response is the response as the client received it. Its StatusCode
	// is 0 when no response arrived.
	Response Response

	// Start is when the proxy received the request.
	Start time.Time

	// TimeToHeaders is the time from Start until the response headers were
	// ready to go to the client, including any injected delay; zero when
	// none were.
	TimeToHeaders time.Duration

	// Duration is the time from Start until the exchange ended.
	Duration time.Duration

	// Err says why the exchange did not end cleanly, or is nil. It matches
	// the kinds of [tapproxy.Exchange.Err] with [errors.Is].
	Err error

	// Faults names the faults applied to this exchange, in the order they
	// were given (see [Fault.Named]).
	Faults []string
}

// HasFault reports whether the fault called name was applied to ex.
func (ex Exchange) HasFault(name string) bool { return slices.Contains(ex.Faults, name) }

// Request is the recorded request of an [Exchange].
type Request struct {
	// Method is the request method.
	Method string

	// URL is the URL the request was sent to: the upstream's scheme and
	// host, and the path and query the client asked for.
	URL *url.URL

	// Host is the Host header sent upstream.
	Host string

	// Header holds the headers sent upstream, without hop-by-hop headers.
	Header http.Header

	// Body holds the first bytes of the request body, up to the capture
	// limit (see [WithBodyLimit]).
	Body []byte

	// BodyBytes counts the request body bytes sent upstream, or read and
	// discarded by a [Respond] or [Hang] fault.
	BodyBytes int64

	// BodyTruncated reports that Body holds fewer bytes than BodyBytes.
	BodyTruncated bool
}

// Response is the recorded response of an [Exchange].
type Response struct {
	// StatusCode is the response status code, or 0 if no response arrived.
	StatusCode int

	// Header holds the response headers.
	Header http.Header

	// Trailer holds the response trailers.
	Trailer http.Header

	// Body holds the first bytes of the response body as the client got
	// them, up to the capture limit (see [WithBodyLimit]).
	Body []byte

	// BodyBytes counts the response body bytes delivered to the client.
	BodyBytes int64

	// BodyTruncated reports that Body holds fewer bytes than BodyBytes.
	BodyTruncated bool
}

// A Recorder keeps copies of the most recent exchanges a proxy relayed. It
// is a [tapproxy.ResponseObserver], so it can also be given to
// [tapproxy.WithObserver] directly. It is safe for concurrent use.
type Recorder struct {
	mu      sync.Mutex
	max     int
	kept    []Exchange // the last len(kept) exchanges, oldest first
	count   int        // exchanges recorded since the last Reset
	gen     int        // bumped by Reset
	changed chan struct{}
}

var _ tapproxy.ResponseObserver = (*Recorder)(nil)

// NewRecorder returns a Recorder that keeps the last max exchanges; older
// ones are dropped. A max below 1 means [DefaultMaxExchanges].
func NewRecorder(max int) *Recorder {
	if max < 1 {
		max = DefaultMaxExchanges
	}
	return &Recorder{max: max, changed: make(chan struct{})}
}

// ObserveResponse records a copy of ex.
func (r *Recorder) ObserveResponse(_ context.Context, ex *tapproxy.Exchange) {
	rec := Exchange{
		Start:         ex.Start,
		TimeToHeaders: ex.TimeToHeaders,
		Duration:      ex.Duration,
		Err:           ex.Err,
	}
	if req := ex.Request; req != nil {
		u := *req.URL
		if u.User != nil {
			user := *u.User
			u.User = &user
		}
		host := req.Host
		if host == "" {
			host = u.Host // what the transport sends when Host is empty
		}
		rec.Request = Request{
			Method:        req.Method,
			URL:           &u,
			Host:          host,
			Header:        req.Header.Clone(),
			Body:          readAll(ex.RequestBody()),
			BodyBytes:     ex.RequestBodyBytes,
			BodyTruncated: ex.RequestTruncated,
		}
		if p := planFrom(req.Context()); p != nil {
			rec.Faults = slices.Clone(p.names)
		}
	}
	if res := ex.Response; res != nil {
		rec.Response = Response{
			StatusCode:    res.StatusCode,
			Header:        res.Header.Clone(),
			Trailer:       res.Trailer.Clone(),
			Body:          readAll(ex.Body()),
			BodyBytes:     ex.BodyBytes,
			BodyTruncated: ex.Truncated,
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	r.count++
	rec.Seq = r.count
	if len(r.kept) == r.max {
		// Shift rather than ring, so that kept stays in order; the copy
		// is of headers-sized structs, and only once the bound is hit.
		copy(r.kept, r.kept[1:])
		r.kept = r.kept[:len(r.kept)-1]
	}
	r.kept = append(r.kept, rec)
	close(r.changed)
	r.changed = make(chan struct{})
}

func readAll(rd io.Reader) []byte {
	var b bytes.Buffer
	_, _ = b.ReadFrom(rd)
	if b.Len() == 0 {
		return nil
	}
	return b.Bytes()
}

// Exchanges returns the kept exchanges, oldest first.
func (r *Recorder) Exchanges() []Exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.kept)
}

// Len returns how many exchanges were recorded since the recorder was
// created or last reset, including any no longer kept.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count
}

// Reset forgets every exchange and restarts the numbering: the next
// exchange to end is number 1. An exchange in flight during Reset is
// recorded after it.
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kept = nil
	r.count = 0
	r.gen++
	close(r.changed)
	r.changed = make(chan struct{})
}

// Wait returns the n-th exchange (see [Exchange.Seq]), waiting for it to
// end if it has not yet. It returns an error if ctx ends first, if n is
// below 1, or if the exchange is no longer kept. Use [context.WithTimeout]
// to bound the wait.
func (r *Recorder) Wait(ctx context.Context, n int) (Exchange, error) {
	if n < 1 {
		return Exchange{}, fmt.Errorf("tapproxytest: Wait(%d): n must be at least 1", n)
	}
	for {
		r.mu.Lock()
		if n <= r.count {
			defer r.mu.Unlock()
			first := r.count - len(r.kept) + 1
			if n < first {
				return Exchange{}, fmt.Errorf("tapproxytest: exchange %d is no longer kept: the recorder keeps the last %d", n, r.max)
			}
			return r.kept[n-first], nil
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return Exchange{}, fmt.Errorf("tapproxytest: waiting for exchange %d: %w", n, context.Cause(ctx))
		}
	}
}

// WaitFor returns the first kept exchange, oldest first, for which match
// returns true, waiting for more exchanges to end until one matches. It
// returns an error if ctx ends first. match runs with the recorder locked,
// so it must not call the recorder. Use [context.WithTimeout] to bound the
// wait.
func (r *Recorder) WaitFor(ctx context.Context, match func(Exchange) bool) (Exchange, error) {
	if match == nil {
		return Exchange{}, errors.New("tapproxytest: WaitFor: nil match function")
	}
	checked, gen := 0, -1 // the Seq checked up to, in generation gen
	for {
		r.mu.Lock()
		if gen != r.gen {
			checked, gen = 0, r.gen
		}
		first := r.count - len(r.kept) + 1
		for i := max(checked+1, first); i <= r.count; i++ {
			if ex := r.kept[i-first]; match(ex) {
				r.mu.Unlock()
				return ex, nil
			}
		}
		checked = r.count
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return Exchange{}, fmt.Errorf("tapproxytest: waiting for a matching exchange: %w", context.Cause(ctx))
		}
	}
}
