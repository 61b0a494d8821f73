package tapproxytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Times says how many recorded exchanges [Recorder.Expect] expects; build
// one with [Exactly], [AtLeast] or [Never].
type Times struct {
	min, max int // max < 0: no upper bound
	desc     string
	err      error
}

// Exactly returns a Times that holds for exactly n exchanges. A negative n
// is an error, which Expect reports.
func Exactly(n int) Times {
	t := Times{min: n, max: n, desc: "exactly " + strconv.Itoa(n)}
	if n < 0 {
		t.err = fmt.Errorf("tapproxytest: Exactly(%d): negative count", n)
	}
	return t
}

// AtLeast returns a Times that holds for n exchanges or more. A negative n
// is an error, which Expect reports.
func AtLeast(n int) Times {
	t := Times{min: n, max: -1, desc: "at least " + strconv.Itoa(n)}
	if n < 0 {
		t.err = fmt.Errorf("tapproxytest: AtLeast(%d): negative count", n)
	}
	return t
}

// Never returns a Times that holds for no exchange: Exactly(0).
func Never() Times { return Times{desc: "no"} }

// String describes t, as in "exactly 2".
func (t Times) String() string { return t.desc }

func (t Times) holds(n int) bool { return n >= t.min && (t.max < 0 || n <= t.max) }

// expectSettle bounds how long Expect waits for exchanges in flight to end.
const expectSettle = 5 * time.Second

// Count returns how many kept exchanges all of ms select (every kept
// exchange without matchers). The matchers see each exchange's request as
// recorded: as sent upstream, with its recorded body. A counting matcher
// ([Nth], [FirstN]) counts among the exchanges the other matchers select,
// in arrival order. Like [Recorder.Expect], Count first waits, for up to
// 5 seconds, for the requests that have reached the proxy to end, so that
// it counts the calls a client has just made. An invalid matcher, and
// [Probability], which selects only faults, count nothing; Expect reports
// them.
func (r *Recorder) Count(ms ...Matcher) int {
	ctx, cancel := context.WithTimeout(context.Background(), expectSettle)
	defer cancel()
	r.settle(ctx)
	n, _, err := r.count(ms)
	if err != nil {
		return 0
	}
	return n
}

// Expect checks that the number of kept exchanges all of ms select is what
// t says, and fails the test through tb.Errorf if not, listing every
// exchange that did arrive. Matchers are as for [Recorder.Count]. It first
// waits, for up to 5 seconds, for the requests that have reached the proxy
// to end, because a client may hold its response a moment before the
// recorder does; requests that a [Hang] fault holds are not waited for. A
// bad t or matcher fails the test too.
func (r *Recorder) Expect(tb TB, t Times, ms ...Matcher) {
	tb.Helper()
	if t.err != nil {
		tb.Errorf("%v", t.err)
		return
	}
	if t.desc == "" {
		tb.Errorf("tapproxytest: Expect: zero Times; use Exactly, AtLeast or Never")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), expectSettle)
	defer cancel()
	r.settle(ctx)
	n, kept, err := r.count(ms)
	if err != nil {
		tb.Errorf("tapproxytest: Expect: %v", err)
		return
	}
	if t.holds(n) {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "tapproxytest: expected %s %s, got %d", t, describe(ms), n)
	if len(kept) == 0 {
		b.WriteString("; no exchange arrived")
	} else {
		fmt.Fprintf(&b, "; the %d that arrived:", len(kept))
		for _, ex := range kept {
			b.WriteString("\n\t")
			b.WriteString(ex.summary())
		}
	}
	tb.Errorf("%s", b.String())
}

func describe(ms []Matcher) string {
	if len(ms) == 0 {
		return "exchanges"
	}
	d := make([]string, len(ms))
	for i, m := range ms {
		d[i] = m.String()
	}
	return "exchanges matching " + strings.Join(d, ", ")
}

// settle waits until every request that has arrived has ended, or ctx ends.
func (r *Recorder) settle(ctx context.Context) {
	for {
		r.mu.Lock()
		done := r.ended+r.held >= r.arrived
		changed := r.changed
		r.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// count counts the kept exchanges that ms select, and returns those kept.
func (r *Recorder) count(ms []Matcher) (int, []Exchange, error) {
	var errs []error
	counting := false
	for _, m := range ms {
		switch {
		case m.err != nil:
			errs = append(errs, m.err)
		case m.isZero():
			errs = append(errs, errors.New("tapproxytest: zero Matcher; use a constructor such as Path"))
		case m.prob != nil:
			errs = append(errs, fmt.Errorf("tapproxytest: %s selects faults, not recorded exchanges", m))
		}
		counting = counting || m.from != 0
	}
	kept := r.Exchanges()
	if err := errors.Join(errs...); err != nil {
		return 0, kept, err
	}
	n, k := 0, int64(0)
next:
	for _, ex := range kept {
		req := ex.asRequest()
		for _, m := range ms {
			if m.pred != nil {
				req.Body = io.NopCloser(bytes.NewReader(ex.Request.Body))
				if !m.pred(req) {
					continue next
				}
			}
		}
		if counting {
			k++
			for _, m := range ms {
				if m.from != 0 && (k < m.from || k > m.to) {
					continue next
				}
			}
		}
		n++
	}
	return n, kept, nil
}

// asRequest returns the recorded request as an *http.Request for matchers.
func (ex Exchange) asRequest() *http.Request {
	u := ex.Request.URL
	if u == nil {
		u = &url.URL{}
	}
	h := ex.Request.Header
	if h == nil {
		h = http.Header{}
	}
	return &http.Request{
		Method:        ex.Request.Method,
		URL:           u,
		Host:          ex.Request.Host,
		Header:        h,
		ContentLength: ex.Request.BodyBytes,
		Body:          http.NoBody,
	}
}

// summary describes ex on one line for failure messages, as in
// `#2 POST /users?x=1 -> 201 body "{\"name\":\"ann\"}" faults [delay(1s)]`.
func (ex Exchange) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s", ex.Seq, ex.Request.Method)
	if u := ex.Request.URL; u != nil {
		b.WriteString(" " + u.RequestURI())
	}
	if ex.Response.StatusCode != 0 {
		fmt.Fprintf(&b, " -> %d", ex.Response.StatusCode)
	} else {
		b.WriteString(" -> no response")
	}
	if body := ex.Request.Body; len(body) > 0 {
		const show = 120
		if len(body) > show {
			fmt.Fprintf(&b, " body %q... (%d bytes)", body[:show], ex.Request.BodyBytes)
		} else {
			fmt.Fprintf(&b, " body %q", body)
		}
	}
	if len(ex.Faults) > 0 {
		fmt.Fprintf(&b, " faults %v", ex.Faults)
	}
	if ex.Err != nil {
		fmt.Fprintf(&b, " error: %v", ex.Err)
	}
	return b.String()
}
