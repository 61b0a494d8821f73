package har

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/tapproxy/tapproxy"
)

// DefaultMaxEntries is how many entries a [Recorder] keeps when
// [WithMaxEntries] is not given.
const DefaultMaxEntries = 1000

// DefaultMaxBytes is how many bytes of body text a [Recorder] keeps in total
// when [WithMaxBytes] is not given: 64 MiB.
const DefaultMaxBytes = 64 << 20

// A RecorderOption configures a [Recorder].
type RecorderOption interface {
	applyRecorder(*recorderConfig)
}

type recorderOptionFunc func(*recorderConfig)

func (f recorderOptionFunc) applyRecorder(c *recorderConfig) { f(c) }

type recorderConfig struct {
	maxEntries int
	maxBytes   int64
}

// WithMaxEntries sets how many entries the recorder keeps; when one more
// arrives, the oldest is dropped. The default is [DefaultMaxEntries]. A value
// below 1 keeps the default. The last call wins.
func WithMaxEntries(n int) RecorderOption {
	return recorderOptionFunc(func(c *recorderConfig) {
		if n >= 1 {
			c.maxEntries = n
		}
	})
}

// WithMaxBytes bounds the body text (response content and request post
// data) the recorder holds in total; when an entry would go over it, the
// oldest entries are dropped until it fits. An entry whose text alone is
// larger than n is kept without its text, marked _truncated, so that its
// headers and timings still show. The default is [DefaultMaxBytes]. Zero
// keeps no body text; a negative value keeps the default. The last call
// wins.
func WithMaxBytes(n int64) RecorderOption {
	return recorderOptionFunc(func(c *recorderConfig) {
		if n >= 0 {
			c.maxBytes = n
		}
	})
}

// A Recorder is a [tapproxy.ResponseObserver] that keeps the most recent
// exchanges in memory as HAR entries, within a bound on their number and one
// on their body text. Serve them with [Recorder.Handler]. It is safe for
// concurrent use, and it never blocks an exchange for longer than it takes
// to convert it and take a lock.
type Recorder struct {
	cfg recorderConfig

	mu    sync.Mutex
	ring  []recorded // oldest first, from head
	head  int
	n     int
	bytes int64
}

// recorded is an entry and what the recorder needs to know of it.
type recorded struct {
	e     Entry
	start time.Time
	size  int64
}

var _ tapproxy.ResponseObserver = (*Recorder)(nil)

// NewRecorder returns an empty recorder.
func NewRecorder(opts ...RecorderOption) *Recorder {
	r := &Recorder{cfg: recorderConfig{maxEntries: DefaultMaxEntries, maxBytes: DefaultMaxBytes}}
	for _, o := range opts {
		if o != nil {
			o.applyRecorder(&r.cfg)
		}
	}
	return r
}

// ObserveResponse records ex with [FromExchange].
func (r *Recorder) ObserveResponse(_ context.Context, ex *tapproxy.Exchange) {
	var start time.Time
	if ex != nil {
		start = ex.Start
	}
	r.add(FromExchange(ex), start)
}

// Add records e, as ObserveResponse does an exchange. Its StartedDateTime
// orders it in [Recorder.HAR].
func (r *Recorder) Add(e Entry) {
	start, _ := time.Parse(time.RFC3339Nano, e.StartedDateTime)
	r.add(e, start)
}

func (r *Recorder) add(e Entry, start time.Time) {
	size := textSize(&e)
	if size > r.cfg.maxBytes {
		dropText(&e, r.cfg.maxBytes)
		size = 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ring == nil {
		// Grow up to the bound rather than allocate it at once: most
		// recorders see far fewer exchanges than the default allows.
		r.ring = make([]recorded, 0, min(r.cfg.maxEntries, 64))
	}
	for r.n > 0 && (r.n == r.cfg.maxEntries || r.bytes+size > r.cfg.maxBytes) {
		r.dropOldest()
	}
	rec := recorded{e: e, start: start, size: size}
	switch {
	case r.n < len(r.ring):
		r.ring[(r.head+r.n)%len(r.ring)] = rec
	case r.head == 0:
		r.ring = append(r.ring, rec)
	default:
		// Full below the bound, and wrapped: unwrap, then grow.
		grown := make([]recorded, 0, min(2*len(r.ring), r.cfg.maxEntries))
		grown = append(append(grown, r.ring[r.head:]...), r.ring[:r.head]...)
		r.ring, r.head = append(grown, rec), 0
	}
	r.n++
	r.bytes += size
}

func (r *Recorder) dropOldest() {
	old := &r.ring[r.head]
	r.bytes -= old.size
	*old = recorded{}
	r.head = (r.head + 1) % len(r.ring)
	r.n--
	if r.n == 0 {
		r.head = 0
		r.ring = r.ring[:0]
	}
}

// textSize is what an entry counts against the byte bound.
func textSize(e *Entry) int64 {
	n := int64(len(e.Response.Content.Text))
	if pd := e.Request.PostData; pd != nil {
		n += int64(len(pd.Text))
	}
	return n
}

func dropText(e *Entry, bound int64) {
	why := "body text dropped: larger than the recorder's bound of " + strconv.FormatInt(bound, 10) + " bytes"
	if c := &e.Response.Content; c.Text != "" {
		c.Text, c.Encoding, c.Truncated, c.Comment = "", "", true, why
	}
	if pd := e.Request.PostData; pd != nil && pd.Text != "" {
		cp := *pd
		cp.Text, cp.Encoding, cp.Truncated, cp.Comment = "", "", true, why
		e.Request.PostData = &cp
	}
}

// Len returns how many entries the recorder holds.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// HAR returns a snapshot of the recorded entries, sorted by
// startedDateTime (exchanges that started at the same time keep the order
// they ended in). The entries share their strings with the recorder, which
// never changes them; the lists are the snapshot's own.
func (r *Recorder) HAR() *HAR {
	r.mu.Lock()
	recs := make([]recorded, r.n)
	for i := range recs {
		recs[i] = r.ring[(r.head+i)%len(r.ring)]
	}
	r.mu.Unlock()
	slices.SortStableFunc(recs, func(a, b recorded) int { return a.start.Compare(b.start) })
	entries := make([]Entry, len(recs))
	for i := range recs {
		entries[i] = recs[i].e
	}
	return &HAR{Log: Log{Version: Version, Creator: DefaultCreator, Pages: []Page{}, Entries: entries}}
}

// Reset forgets every entry.
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring, r.head, r.n, r.bytes = nil, 0, 0, 0
}

// Handler returns an [http.Handler] for the recording. GET (and HEAD)
// answers with the HAR as a download: application/json, with a
// Content-Disposition that names it tapproxy-<time>.har. DELETE clears the
// recording and answers 204 No Content. Other methods get 405 Method Not
// Allowed. Mount it where only those who may see the traffic can reach it:
// the recording holds bodies, and credentials unless they were redacted.
func (r *Recorder) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.Method {
		case http.MethodGet, http.MethodHead:
			h := r.HAR()
			name := "tapproxy-" + time.Now().UTC().Format("20060102T150405Z") + ".har"
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
			w.Header().Set("Cache-Control", "no-store")
			if req.Method == http.MethodHead {
				return
			}
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(h) // a failed write means the client left
		case http.MethodDelete:
			r.Reset()
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "GET, HEAD, DELETE")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}
	})
}
