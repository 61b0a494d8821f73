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
	"strings"
	"sync"
	"time"

	"github.com/tapproxy/tapproxy"
)

// DefaultMaxExchanges is how many exchanges a [Server]'s recorder keeps when
// [WithMaxExchanges] is not given.
const DefaultMaxExchanges = 1000

// An Exchange is a recorded copy of one proxied request and its response.
// Unlike a [tapproxy.Exchange] it stays valid after the exchange ended. It
// shares its slices and maps with the [Recorder] and other callers, so treat
// it as read-only.
type Exchange struct {
	// Seq numbers the exchange in the recording: 1 for the first request
	// to reach the proxy after the server started or the recorder was
	// reset, 2 for the next, and so on.
	Seq int

	// Request is the request as the proxy sent it upstream, or would
	// have, had a fault not answered instead. It is zero in the rare case
	// that the proxy failed before building it.
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
	// were given (see [Fault.Named]). The entry of a random delay
	// ([DelayUniform], [DelayLogNormal]) adds "=" and the delay drawn, as
	// in "delay-uniform(10ms,50ms)=23.4ms"; [Exchange.HasFault] matches it
	// by name.
	Faults []string
}

// HasFault reports whether the fault called name was applied to ex. A
// random delay's entry, such as "delay-uniform(10ms,50ms)=23.4ms", matches
// its name without the delay drawn.
func (ex Exchange) HasFault(name string) bool {
	return slices.ContainsFunc(ex.Faults, func(f string) bool {
		rest, ok := strings.CutPrefix(f, name)
		return ok && (rest == "" || rest[0] == '=')
	})
}

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
	// Credentials are recorded as sent, not redacted.
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

// A Recorder keeps copies of the most recent exchanges a [Server] relayed,
// up to the bound set by [WithMaxExchanges]. It is safe for concurrent use.
//
// Exchanges are numbered in the order their requests reached the proxy (see
// [Exchange.Seq]), and appear in the recorder once they have ended: once
// the client has the whole response, or the exchange failed. A client may
// see its response shortly before the recorder does, so tests wait for
// exchanges with [Recorder.Wait] or [Recorder.WaitFor] rather than read
// [Recorder.Exchanges] straight after a call.
type Recorder struct {
	mu      sync.Mutex
	max     int
	kept    []Exchange // ended exchanges, by Seq
	arrived int        // requests numbered since the last Reset
	ended   int        // exchanges recorded since the last Reset
	dropped int        // the highest Seq dropped to keep the bound
	held    int        // requests a Hang fault holds
	gen     int        // bumped by Reset
	changed chan struct{}

	harCredentials bool // WriteHAR keeps credentials
}

func newRecorder(max int) *Recorder {
	return &Recorder{max: max, changed: make(chan struct{})}
}

// arrive numbers a request that reached the proxy.
func (r *Recorder) arrive() *tag {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.arrived++
	return &tag{seq: r.arrived, gen: r.gen}
}

// observe records a copy of ex, which ended.
func (r *Recorder) observe(ctx context.Context, ex *tapproxy.Exchange) {
	t := tagFrom(ctx)
	if t == nil {
		return
	}
	rec := Exchange{
		Seq:           t.seq,
		Start:         ex.Start,
		TimeToHeaders: ex.TimeToHeaders,
		Duration:      ex.Duration,
		Err:           ex.Err,
	}
	if t.plan != nil {
		rec.Faults = slices.Clone(t.plan.names)
	}
	if t.replayErr != nil {
		rec.Err = t.replayErr
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
	if t.gen != r.gen {
		return // it arrived before a Reset
	}
	r.ended++
	if len(r.kept) == r.max && rec.Seq < r.kept[0].Seq {
		// Older than all that is kept: dropped at once.
		r.dropped = max(r.dropped, rec.Seq)
	} else {
		i, _ := slices.BinarySearchFunc(r.kept, rec.Seq, func(e Exchange, seq int) int { return e.Seq - seq })
		r.kept = slices.Insert(r.kept, i, rec)
		if len(r.kept) > r.max {
			// Reslice rather than shift: append reallocates once per
			// about max drops, so dropping is O(1) amortized.
			r.dropped = max(r.dropped, r.kept[0].Seq)
			r.kept[0] = Exchange{}
			r.kept = r.kept[1:]
		}
	}
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

// holding counts requests a Hang fault holds, which end only when their
// clients give up.
func (r *Recorder) holding(t *tag, d int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t.gen != r.gen {
		return // it arrived before a Reset
	}
	r.held += d
	close(r.changed)
	r.changed = make(chan struct{})
}

// Exchanges returns the kept exchanges that have ended, in the order their
// requests arrived.
func (r *Recorder) Exchanges() []Exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.kept)
}

// Len returns how many exchanges have ended since the server started or
// the recorder was last reset, including any no longer kept.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ended
}

// Reset forgets every exchange, including those still in flight, and
// restarts the numbering: the next request to arrive is number 1.
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kept = nil
	r.arrived, r.ended, r.dropped, r.held = 0, 0, 0, 0
	r.gen++
	close(r.changed)
	r.changed = make(chan struct{})
}

// Wait returns exchange number n (see [Exchange.Seq]), waiting for its
// request to arrive and end if it has not yet. It returns an error if ctx
// ends first, if n is below 1, or if the exchange is no longer kept. Bound
// the wait with [context.WithTimeout] or a test's context.
func (r *Recorder) Wait(ctx context.Context, n int) (Exchange, error) {
	if n < 1 {
		return Exchange{}, fmt.Errorf("tapproxytest: Wait(%d): n must be at least 1", n)
	}
	for {
		r.mu.Lock()
		i, found := slices.BinarySearchFunc(r.kept, n, func(e Exchange, seq int) int { return e.Seq - seq })
		if found {
			ex := r.kept[i]
			r.mu.Unlock()
			return ex, nil
		}
		if n <= r.dropped {
			r.mu.Unlock()
			return Exchange{}, fmt.Errorf("tapproxytest: exchange %d is no longer kept: the recorder keeps the last %d", n, r.max)
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

// WaitFor returns the earliest-arriving kept exchange for which match
// returns true, waiting for more exchanges to end until one matches. It
// returns an error if ctx ends first. match runs with the recorder locked,
// so it must not call the recorder. Bound the wait with
// [context.WithTimeout] or a test's context.
func (r *Recorder) WaitFor(ctx context.Context, match func(Exchange) bool) (Exchange, error) {
	if match == nil {
		return Exchange{}, errors.New("tapproxytest: WaitFor: nil match function")
	}
	for {
		r.mu.Lock()
		for _, ex := range r.kept {
			if match(ex) {
				r.mu.Unlock()
				return ex, nil
			}
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return Exchange{}, fmt.Errorf("tapproxytest: waiting for a matching exchange: %w", context.Cause(ctx))
		}
	}
}
