package tapproxytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

// ErrReplayMiss is matched, with [errors.Is], by the [Exchange.Err] of a
// request that a cassette in [Replay] mode had no recorded entry for.
var ErrReplayMiss = errors.New("tapproxytest: replay miss")

// A Mode says what a cassette does with the requests that reach it; see
// [WithCassette].
type Mode int

const (
	// Replay answers from the cassette and never contacts the upstream.
	// A request with no recorded entry left is a miss: the client gets a
	// 502 with the header Tapproxy-Replay: miss, and the test fails.
	Replay Mode = iota

	// Record forwards every request to the upstream, and writes the
	// cassette anew at cleanup, with what the upstream answered.
	Record

	// RecordMissing replays what matches, forwards the rest to the
	// upstream, and appends what it answered to the cassette at cleanup.
	RecordMissing

	// Passthrough forwards every request, and reads and writes no file.
	Passthrough
)

// String returns the mode's name, as in "Replay".
func (m Mode) String() string {
	switch m {
	case Replay:
		return "Replay"
	case Record:
		return "Record"
	case RecordMissing:
		return "RecordMissing"
	case Passthrough:
		return "Passthrough"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// A CassetteOption configures a cassette; see [WithCassette].
type CassetteOption interface {
	applyCassette(*cassetteConfig)
}

type cassetteOptionFunc func(*cassetteConfig)

func (f cassetteOptionFunc) applyCassette(c *cassetteConfig) { f(c) }

type cassetteConfig struct {
	path        string
	mode        Mode
	modeSet     bool
	errs        []error
	headers     []string
	ignore      []string
	beforeSave  []func(*har.Entry) error
	normalize   []func(*http.Request)
	keepTimings bool
}

// WithCassette records the exchanges with the upstream in the HAR 1.2 file
// at path, or replays them from it, as go-vcr does, so that a test runs
// offline against what a real API once said. The file opens in a browser's
// network panel. By default the mode is [Replay] if the file exists, and
// [Record] if not; see [WithMode] and [ModeFromEnv].
//
// The cassette sits below the faults: it records what the upstream said,
// not what the faults made of it, and faults apply to replayed responses
// as to live ones. Faults that answer by themselves, such as [Respond], do
// not reach it.
//
// A request matches a recorded entry by its method, path, query (keys
// sorted; the order of the values of one key kept), body (exactly, or
// canonically when it is JSON: object keys in any order, no insignificant
// space) and the headers named by [MatchHeaders]. Host and port take no
// part. Identical requests are answered first in, first out, each entry
// once; when they run out, the request is a miss.
//
// Replayed responses have the recorded status, headers, trailers (after the
// body) and body. A body that arrived in gzip or deflate is stored decoded,
// and sent in the same coding again, with its Content-Length recomputed; a
// body in a coding that the standard library cannot undo, such as br, is
// stored in base64 and sent as it came. A recorded failure is replayed as
// the same failure, after the same body bytes: a reset, a body cut short
// or a timeout. A body longer than the server's body limit cannot be
// replayed: recording it fails the test at cleanup (see [WithBodyLimit]),
// and so does a miss, a request body over the limit, or a file that cannot
// be written, all through the TB's Errorf. While recording, responses
// stream to the client as they arrive. When a fault or the client stops
// reading a response early, the cassette reads on, for up to a second, to
// record the rest; what it cannot read in that time is recorded as a client
// that left, and replayed as the bytes, then a wait until the client
// leaves.
//
// The file is deterministic: headers are sorted, timestamps and timings are
// fixed (see [KeepTimings]), and URLs carry the host of the upstream given
// to [NewServerURL], or http://upstream.test for the fake upstream of
// [NewServer], whose port changes on every run. Entries are in the order
// their requests reached the proxy. Authorization, Proxy-Authorization,
// Cookie and Set-Cookie are redacted in the file (and replayed redacted),
// and their values, when at least 6 bytes long, are scrubbed from the rest
// of the entry too: from the URL, other headers and text bodies, such as a
// response that echoes a token. The test that records still gets the real
// values, and matching compares live requests scrubbed the same way, so a
// different live token still matches. A recording that
// differs from the file only in Date headers and timings leaves the file
// untouched. A missing directory is created.
//
// A file that cannot be read or parsed, or Replay of a file that does not
// exist, fails the test when the server starts, through Fatalf. An empty
// path is an error. Repeated use: the last call wins.
func WithCassette(path string, opts ...CassetteOption) Option {
	return optionFunc(func(c *config) {
		cc := &cassetteConfig{path: path}
		for _, o := range opts {
			if o != nil {
				o.applyCassette(cc)
			}
		}
		c.cassette = cc
	})
}

// WithMode sets the cassette's mode. The default is [Replay] if the file
// exists, and [Record] if it does not. A mode that is not one of the four
// constants is an error. With [ModeFromEnv], the last that sets a mode wins.
func WithMode(m Mode) CassetteOption {
	return cassetteOptionFunc(func(c *cassetteConfig) {
		if m < Replay || m > Passthrough {
			c.errs = append(c.errs, fmt.Errorf("tapproxytest: WithMode(%d): unknown mode", int(m)))
			return
		}
		c.mode, c.modeSet = m, true
	})
}

// ModeFromEnv sets the cassette's mode from the environment variable name,
// so that one command re-records: TAPPROXY_RECORD=1 go test ./... with
// ModeFromEnv("TAPPROXY_RECORD"). The values are, ignoring case: 1, true
// or record for [Record]; missing for [RecordMissing]; 0, false or replay
// for [Replay]; passthrough or off for [Passthrough]. Unset or empty keeps
// the mode as it was (the default, or an earlier [WithMode]). Any other
// value is an error, which fails the test when the server starts. With
// WithMode, the last that sets a mode wins.
func ModeFromEnv(name string) CassetteOption {
	return cassetteOptionFunc(func(c *cassetteConfig) {
		v := strings.ToLower(strings.TrimSpace(os.Getenv(name)))
		switch v {
		case "":
		case "1", "true", "record":
			c.mode, c.modeSet = Record, true
		case "missing":
			c.mode, c.modeSet = RecordMissing, true
		case "0", "false", "replay":
			c.mode, c.modeSet = Replay, true
		case "passthrough", "off":
			c.mode, c.modeSet = Passthrough, true
		default:
			c.errs = append(c.errs, fmt.Errorf("tapproxytest: ModeFromEnv(%q): unknown value %q; use 1, missing, replay or passthrough", name, v))
		}
	})
}

// MatchHeaders adds request headers whose values take part in matching, in
// addition to the method, path, query and body. By default no header does,
// so that a changed User-Agent or token does not break a recording.
// Credentials are compared redacted, as the file holds them: a different
// live token still matches. Repeated use accumulates. Names are
// case-insensitive; empty names are skipped.
func MatchHeaders(names ...string) CassetteOption {
	return cassetteOptionFunc(func(c *cassetteConfig) {
		for _, n := range names {
			if n != "" {
				c.headers = append(c.headers, textproto.CanonicalMIMEHeaderKey(n))
			}
		}
	})
}

// IgnoreQuery adds query parameters that take no part in matching, such as
// a timestamp or a nonce. By default every parameter takes part. Repeated
// use accumulates. Names are case-sensitive, as in URLs.
func IgnoreQuery(names ...string) CassetteOption {
	return cassetteOptionFunc(func(c *cassetteConfig) { c.ignore = append(c.ignore, names...) })
}

// BeforeSave adds a hook that changes each newly recorded entry before it
// is written, after the default redaction: to hide a secret in a body, say,
// or to drop a header that changes on every run. It changes only what is
// written, never what the test receives. Hooks run in the order given; an
// error fails the test at cleanup and leaves the file as it was. Repeated
// use accumulates; nil is skipped.
func BeforeSave(f func(*har.Entry) error) CassetteOption {
	return cassetteOptionFunc(func(c *cassetteConfig) {
		if f != nil {
			c.beforeSave = append(c.beforeSave, f)
		}
	})
}

// Normalize adds a hook that changes a request before its key is computed:
// both each live request and each recorded one, rebuilt from the file with
// its body. Use it to drop a volatile query parameter or JSON field. It gets
// a copy, so it changes only the matching, never what goes upstream. Hooks
// run in the order given. Repeated use accumulates; nil is skipped.
func Normalize(f func(*http.Request)) CassetteOption {
	return cassetteOptionFunc(func(c *cassetteConfig) {
		if f != nil {
			c.normalize = append(c.normalize, f)
		}
	})
}

// KeepTimings makes the cassette write each entry's real start time and
// timings, rather than fixed ones, at the cost of a file that changes on
// every recording. By default timestamps count from 2000-01-01T00:00:00Z, a
// millisecond apart, and timings are 0. Repeating it changes nothing.
func KeepTimings() CassetteOption {
	return cassetteOptionFunc(func(c *cassetteConfig) { c.keepTimings = true })
}

// fakeUpstreamHost is the host that cassettes write for NewServer's fake
// upstream, whose port changes on every run.
const fakeUpstreamHost = "upstream.test"

// fixedStart is where the fixed timestamps of a cassette begin.
var fixedStart = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// rawComment marks a body stored as it came, still in its Content-Encoding.
const rawComment = "stored as received, in its Content-Encoding"

// cassette is the round tripper below the faults that records and
// replays.
type cassette struct {
	cfg       *cassetteConfig
	mode      Mode
	keyer     keyer
	bodyLimit int64
	fakeHost  bool // rewrite recorded URLs to fakeUpstreamHost
	next      http.RoundTripper
	done      <-chan struct{}

	mu       sync.Mutex
	existed  bool
	loaded   []har.Entry
	keys     []requestKey
	used     []bool
	queues   map[string][]int // indices of unused entries, by key
	recorded []recorded
	problems []string // reported through Errorf at cleanup
}

type recorded struct {
	seq   int
	entry har.Entry
}

func newCassette(cfg *cassetteConfig, bodyLimit int64, fakeHost bool, next http.RoundTripper, done <-chan struct{}) (*cassette, error) {
	if err := errors.Join(cfg.errs...); err != nil {
		return nil, err
	}
	if cfg.path == "" {
		return nil, errors.New("tapproxytest: WithCassette: empty path")
	}
	c := &cassette{
		cfg: cfg, bodyLimit: bodyLimit, fakeHost: fakeHost, next: next, done: done,
		keyer:  keyer{headers: slices.Compact(slices.Sorted(slices.Values(cfg.headers))), normalize: cfg.normalize},
		queues: map[string][]int{},
	}
	if len(cfg.ignore) > 0 {
		c.keyer.ignore = map[string]bool{}
		for _, n := range cfg.ignore {
			c.keyer.ignore[n] = true
		}
	}
	data, err := os.ReadFile(cfg.path)
	switch {
	case err == nil:
		c.existed = true
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("tapproxytest: cassette: %w", err)
	}
	c.mode = cfg.mode
	if !cfg.modeSet {
		c.mode = Record
		if c.existed {
			c.mode = Replay
		}
	}
	if c.mode == Replay && !c.existed {
		return nil, fmt.Errorf("tapproxytest: cassette %s does not exist, so it cannot be replayed; record it with WithMode(Record)", cfg.path)
	}
	if c.mode == Passthrough || !c.existed {
		return c, nil
	}
	var h har.HAR
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("tapproxytest: cassette %s: %w", cfg.path, err)
	}
	c.loaded = h.Log.Entries
	c.used = make([]bool, len(c.loaded))
	for i := range c.loaded {
		k, err := c.entryKey(&c.loaded[i])
		if err != nil {
			return nil, fmt.Errorf("tapproxytest: cassette %s: entry %d: %w", cfg.path, i, err)
		}
		c.keys = append(c.keys, k)
		ks := k.String()
		c.queues[ks] = append(c.queues[ks], i)
	}
	return c, nil
}

// entryKey computes the key of a recorded request.
func (c *cassette) entryKey(e *har.Entry) (requestKey, error) {
	u, err := url.Parse(e.Request.URL)
	if err != nil {
		return requestKey{}, err
	}
	h := http.Header{}
	for _, nv := range e.Request.Headers {
		h.Add(nv.Name, nv.Value)
	}
	var body []byte
	if pd := e.Request.PostData; pd != nil {
		if body, err = textBytes(pd.Text, pd.Encoding); err != nil {
			return requestKey{}, err
		}
	}
	return c.keyer.key(e.Request.Method, u, h, body), nil
}

func (c *cassette) problem(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

// RoundTrip answers from the cassette, or forwards and records, as the
// mode says.
func (c *cassette) RoundTrip(req *http.Request) (*http.Response, error) {
	if c.mode == Passthrough {
		return c.next.RoundTrip(req)
	}
	body, over, err := c.readBody(req)
	if err != nil {
		return nil, err
	}
	k := c.keyer.key(req.Method, req.URL, req.Header, body)
	if c.mode != Record {
		if e := c.take(k); e != nil {
			return c.replay(req, e)
		}
		if c.mode == Replay {
			return c.miss(req, k)
		}
	}
	if over {
		c.problem("tapproxytest: cassette %s: the request body of %s %s is longer than the body limit of %d bytes, so it cannot be recorded; raise the limit with WithBodyLimit",
			c.cfg.path, req.Method, req.URL.Path, c.bodyLimit)
	}
	rec := &recording{c: c, req: req, reqBody: body, over: over, start: time.Now()}
	if t := tagFrom(req.Context()); t != nil {
		rec.seq = t.seq
	}
	res, err := c.next.RoundTrip(req)
	if err != nil {
		rec.finish(nil, err, false)
		return nil, err
	}
	rec.tth = time.Since(rec.start)
	if res.StatusCode == http.StatusSwitchingProtocols {
		c.problem("tapproxytest: cassette %s: %s %s switched protocols, which a cassette cannot replay; use Passthrough",
			c.cfg.path, req.Method, req.URL.Path)
		return res, nil
	}
	// The faults above get a copy, so that what they change, such as
	// the trailers, is not what is recorded.
	rec.res = res
	out := *res
	out.Body = &recordingBody{rc: res.Body, rec: rec, out: &out}
	return &out, nil
}

// readBody reads the request body, up to the body limit, for the key, and
// puts it back for the upstream. over says there was more.
func (c *cassette) readBody(req *http.Request) ([]byte, bool, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, false, nil
	}
	orig := req.Body
	body, err := io.ReadAll(io.LimitReader(orig, c.bodyLimit+1))
	if err != nil {
		return nil, false, err
	}
	if int64(len(body)) > c.bodyLimit {
		req.Body = readCloser{io.MultiReader(bytes.NewReader(body), orig), orig}
		return body[:c.bodyLimit], true, nil
	}
	req.Body = readCloser{bytes.NewReader(body), orig}
	return body, false, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// take returns the first unused entry with key k, marking it used, or nil.
func (c *cassette) take(k requestKey) *har.Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	ks := k.String()
	q := c.queues[ks]
	if len(q) == 0 {
		return nil
	}
	i := q[0]
	c.queues[ks] = q[1:]
	c.used[i] = true
	return &c.loaded[i]
}

// missError is the Err of an exchange that missed.
type missError struct{ report string }

func (e *missError) Error() string { return e.report }
func (e *missError) Unwrap() error { return ErrReplayMiss }

// miss answers a request that no entry matches with a 502 that says why,
// and notes the miss for the exchange and for cleanup.
func (c *cassette) miss(req *http.Request, k requestKey) (*http.Response, error) {
	c.mu.Lock()
	report := missReport(c.cfg.path, k, c.keys, c.used)
	c.problems = append(c.problems, report)
	c.mu.Unlock()
	if t := tagFrom(req.Context()); t != nil {
		t.replayErr = &missError{report}
	}
	body := report // the same text as the test failure
	return &http.Response{
		Status:     "502 " + http.StatusText(http.StatusBadGateway),
		StatusCode: http.StatusBadGateway,
		Proto:      "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{
			"Tapproxy-Replay": {"miss"},
			"Content-Type":    {"text/plain; charset=utf-8"},
			"Content-Length":  {strconv.Itoa(len(body))},
		},
		ContentLength: int64(len(body)),
		Body:          io.NopCloser(strings.NewReader(body)),
		Request:       req,
	}, nil
}

// replay rebuilds the recorded response, or failure, of e.
func (c *cassette) replay(req *http.Request, e *har.Entry) (*http.Response, error) {
	failure := e.Error
	if e.Response.HTTPVersion == "" {
		// No response was recorded: the upstream failed before it.
		if failure == nil {
			failure = &har.Error{Kind: har.KindOther, Message: "tapproxytest: recorded entry has no response"}
		}
		if failure.Kind == har.KindClientGone {
			return nil, c.hold(req.Context())
		}
		return nil, replayError(failure)
	}
	body, err := c.replayBody(e)
	if err != nil {
		return nil, fmt.Errorf("tapproxytest: cassette %s: %w", c.cfg.path, err)
	}
	h := http.Header{}
	for _, nv := range e.Response.Headers {
		h[textproto.CanonicalMIMEHeaderKey(nv.Name)] = append(h[textproto.CanonicalMIMEHeaderKey(nv.Name)], nv.Value)
	}
	res := &http.Response{
		Status:     strconv.Itoa(e.Response.Status) + " " + http.StatusText(e.Response.Status),
		StatusCode: e.Response.Status,
		Proto:      "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        h,
		ContentLength: -1,
		Request:       req,
	}
	noBody := req.Method == http.MethodHead || e.Response.Status == http.StatusNoContent || e.Response.Status == http.StatusNotModified
	var trailer http.Header
	if len(e.Response.Trailers) > 0 {
		// Announced now, filled in at the end of the body.
		res.Trailer, trailer = http.Header{}, http.Header{}
		for _, nv := range e.Response.Trailers {
			k := textproto.CanonicalMIMEHeaderKey(nv.Name)
			res.Trailer[k] = nil
			trailer[k] = append(trailer[k], nv.Value)
		}
		h.Del("Content-Length")
	}
	switch {
	case noBody:
		if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil && req.Method != http.MethodHead {
			res.ContentLength = n
		}
	case failure != nil:
		// Keep the declared length that the failure fell short of.
		if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil {
			res.ContentLength = n
		}
	case h.Get("Content-Length") != "":
		h.Set("Content-Length", strconv.Itoa(len(body)))
		res.ContentLength = int64(len(body))
	}
	rb := &replayBody{r: bytes.NewReader(body), res: res, trailer: trailer, ctx: req.Context(), c: c}
	if failure != nil {
		rb.fail = failure
	}
	res.Body = rb
	return res, nil
}

// replayBody returns the bytes to send for e's body, encoded again as the
// recorded Content-Encoding says.
func (c *cassette) replayBody(e *har.Entry) ([]byte, error) {
	ct := e.Response.Content
	body, err := textBytes(ct.Text, ct.Encoding)
	if err != nil {
		return nil, err
	}
	codings := contentCodings(e.Response.Headers)
	if len(codings) == 0 || ct.Comment == rawComment || e.Error != nil {
		return body, nil
	}
	return encode(body, codings)
}

// hold blocks until ctx ends or the server closes, as a recorded client
// that left did.
func (c *cassette) hold(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-c.done:
		return errServerClosed
	}
}

// replayBody is a replayed response body: the recorded bytes, then the
// trailers, or the recorded failure.
type replayBody struct {
	r       *bytes.Reader
	res     *http.Response
	trailer http.Header
	fail    *har.Error
	ctx     context.Context
	c       *cassette
}

func (b *replayBody) Read(p []byte) (int, error) {
	if b.r.Len() > 0 {
		return b.r.Read(p)
	}
	if b.fail != nil {
		if b.fail.Kind == har.KindClientGone {
			return 0, b.c.hold(b.ctx)
		}
		return 0, replayError(b.fail)
	}
	for k, vs := range b.trailer {
		b.res.Trailer[k] = vs
	}
	return 0, io.EOF
}

func (b *replayBody) Close() error { return nil }

// replayTimeout stands for a recorded timeout; the proxy classifies it as
// one.
type replayTimeout struct{ msg string }

func (e *replayTimeout) Error() string   { return e.msg }
func (e *replayTimeout) Timeout() bool   { return true }
func (e *replayTimeout) Temporary() bool { return true }

var _ net.Error = (*replayTimeout)(nil)

// replayError returns an error that the proxy classifies as f's kind.
func replayError(f *har.Error) error {
	msg := "tapproxytest: replayed failure: " + f.Message
	switch f.Kind {
	case har.KindUpstreamTimeout:
		return &replayTimeout{msg}
	case har.KindUpstreamUnavailable:
		return &net.OpError{Op: "dial", Net: "tcp", Err: errors.New(msg)}
	case har.KindUpstreamMalformed:
		return textproto.ProtocolError(msg)
	case har.KindUpstreamReset:
		return fmt.Errorf("%s: %w", msg, syscall.ECONNRESET)
	}
	return errors.New(msg)
}

// recording is one exchange being recorded.
type recording struct {
	c        *cassette
	seq      int
	req      *http.Request
	reqBody  []byte
	over     bool
	res      *http.Response
	start    time.Time
	tth      time.Duration
	once     sync.Once
	finished atomic.Bool
	body     bytes.Buffer
	n        int64
	bodyOver bool
}

// recordingBody tees the upstream's body into the recording as it streams.
type recordingBody struct {
	rc       io.ReadCloser
	rec      *recording
	out      *http.Response // the copy handed up
	timedOut atomic.Bool
}

// drainTimeout bounds how long closing a body before its end goes on
// reading it, to record the rest of what the upstream says.
const drainTimeout = time.Second

// errStopped stands for a body that was closed before its end: the
// exchange above the cassette, a client or a fault, stopped reading.
var errStopped = errors.New("tapproxytest: the exchange stopped reading the body before its end")

func (b *recordingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	r := b.rec
	if n > 0 {
		r.n += int64(n)
		if room := r.c.bodyLimit - int64(r.body.Len()); room > 0 {
			r.body.Write(p[:min(int64(n), room)])
		}
		if r.n > r.c.bodyLimit {
			r.bodyOver = true
		}
	}
	switch {
	case err == io.EOF:
		if b.out.Trailer == nil && r.res.Trailer != nil {
			// Trailers that were not announced arrive in the
			// original response only.
			b.out.Trailer = r.res.Trailer
		}
		r.finish(r.res, nil, true)
	case err != nil && b.timedOut.Load():
		r.finish(r.res, errStopped, true)
	case err != nil:
		r.finish(r.res, err, true)
	}
	return n, err
}

// Close records the rest of the body when the exchange above stopped
// reading early, as a fault or a client that left makes it: the cassette
// keeps what the upstream said. It reads for up to drainTimeout and the
// body limit; what it could not read is recorded as the exchange stopped.
func (b *recordingBody) Close() error {
	r := b.rec
	if !r.finished.Load() {
		timer := time.AfterFunc(drainTimeout, func() {
			b.timedOut.Store(true)
			b.rc.Close()
		})
		buf := make([]byte, 32<<10)
		for !r.finished.Load() && !r.bodyOver {
			if _, err := b.Read(buf); err != nil {
				break
			}
		}
		timer.Stop()
		r.finish(r.res, errStopped, true)
	}
	return b.rc.Close()
}

// finish turns the recording into an entry, once.
func (r *recording) finish(res *http.Response, err error, midBody bool) {
	r.once.Do(func() {
		r.finished.Store(true)
		c := r.c
		if r.bodyOver {
			c.problem("tapproxytest: cassette %s: the response to %s %s has %d body bytes, more than the body limit of %d, so it cannot be replayed; raise the limit with WithBodyLimit",
				c.cfg.path, r.req.Method, r.req.URL.Path, r.n, c.bodyLimit)
			return
		}
		if r.over {
			return // reported when the request came
		}
		e := c.entry(r, res, err, midBody)
		c.mu.Lock()
		c.recorded = append(c.recorded, recorded{seq: r.seq, entry: e})
		c.mu.Unlock()
	})
}

// entry builds the HAR entry of a recording.
func (c *cassette) entry(r *recording, res *http.Response, err error, midBody bool) har.Entry {
	u := *r.req.URL
	u.User = nil
	if c.fakeHost {
		u.Scheme, u.Host = "http", fakeUpstreamHost
	}
	req := &http.Request{Method: r.req.Method, URL: &u, Host: u.Host, Proto: r.req.Proto, Header: r.req.Header}
	p := &har.Parts{
		Request:     req,
		RequestBody: r.reqBody, RequestBodyBytes: int64(len(r.reqBody)),
		Start: r.start, TimeToHeaders: r.tth, Duration: time.Since(r.start),
	}
	if res != nil {
		snap := &http.Response{StatusCode: res.StatusCode, Proto: res.Proto, Header: res.Header, Trailer: res.Trailer}
		if res.Proto == "" {
			snap.Proto = "HTTP/1.1"
		}
		p.Response, p.Body, p.BodyBytes = snap, r.body.Bytes(), r.n
	}
	e := har.FromParts(p)
	if res != nil {
		storeContent(&e.Response.Content, res.Header, r.body.Bytes(), err == nil)
	}
	e.Error = nil
	if err != nil {
		kind := recordedKind(r.req.Context(), err, midBody)
		e.Error = &har.Error{Kind: kind, Message: err.Error(), BytesDelivered: r.n}
		if res == nil {
			switch kind {
			case har.KindClientGone:
				e.Response.Status = 0
			case har.KindUpstreamTimeout:
				e.Response.Status = http.StatusGatewayTimeout
			default:
				e.Response.Status = http.StatusBadGateway
			}
			e.Response.StatusText = http.StatusText(e.Response.Status)
		}
	}
	return e
}

// recordedKind classifies a failure seen below the proxy as the proxy
// would.
func recordedKind(ctx context.Context, err error, midBody bool) string {
	var (
		ne  net.Error
		op  *net.OpError
		dns *net.DNSError
		pe  textproto.ProtocolError
	)
	switch {
	case errors.Is(err, errStopped), errors.Is(err, context.Canceled), errors.Is(ctx.Err(), context.Canceled):
		return har.KindClientGone
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return har.KindUpstreamTimeout
	case !midBody && (errors.As(err, &op) && op.Op == "dial" || errors.As(err, &dns)):
		return har.KindUpstreamUnavailable
	case errors.As(err, &pe), strings.Contains(err.Error(), "malformed HTTP"):
		return har.KindUpstreamMalformed
	case midBody, errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return har.KindUpstreamReset
	}
	return har.KindOther
}

// finish writes the cassette, if the mode records, and reports through
// tb.Errorf what went wrong: misses, bodies over the limit, a file that
// could not be written.
func (c *cassette) finish(tb TB) {
	tb.Helper()
	c.mu.Lock()
	recs := slices.Clone(c.recorded)
	problems := slices.Clone(c.problems)
	c.mu.Unlock()
	if c.mode == Record || (c.mode == RecordMissing && len(recs) > 0) {
		if err := c.save(recs); err != nil {
			problems = append(problems, err.Error())
		}
	}
	for _, p := range problems {
		tb.Errorf("%s", p)
	}
}

// save writes the cassette: for Record the new recordings, for
// RecordMissing the loaded entries and the new ones after them.
func (c *cassette) save(recs []recorded) error {
	slices.SortStableFunc(recs, func(a, b recorded) int { return a.seq - b.seq })
	var entries []har.Entry
	if c.mode == RecordMissing {
		entries = slices.Clone(c.loaded)
	}
	for _, r := range recs {
		e := r.entry
		secrets := entrySecrets(&e)
		har.Redact(&e)
		scrubEntry(&e, secrets)
		for _, f := range c.cfg.beforeSave {
			if err := f(&e); err != nil {
				return fmt.Errorf("tapproxytest: cassette %s: BeforeSave: %w; the file is left as it was", c.cfg.path, err)
			}
		}
		entries = append(entries, e)
	}
	if !c.cfg.keepTimings {
		for i := range entries {
			fixTimes(&entries[i], i)
		}
	}
	if entries == nil {
		entries = []har.Entry{}
	}
	doc := har.HAR{Log: har.Log{
		Version: "1.2",
		Creator: har.Creator{Name: "tapproxytest", Version: tapproxy.Version},
		Entries: entries,
	}}
	if c.existed && c.unchanged(entries) {
		return nil
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("tapproxytest: cassette %s: %w", c.cfg.path, err)
	}
	data = append(data, '\n')
	if err := replaceFile(c.cfg.path, data); err != nil {
		return fmt.Errorf("tapproxytest: cassette %s: %w", c.cfg.path, err)
	}
	return nil
}

func fixTimes(e *har.Entry, i int) {
	e.StartedDateTime = fixedStart.Add(time.Duration(i) * time.Millisecond).Format("2006-01-02T15:04:05.000Z07:00")
	e.Time = 0
	e.Timings.Send, e.Timings.Wait, e.Timings.Receive = 0, 0, 0
}

// unchanged reports whether the file holds entries, apart from Date
// headers and timings.
func (c *cassette) unchanged(entries []har.Entry) bool {
	data, err := os.ReadFile(c.cfg.path)
	if err != nil {
		return false
	}
	var old har.HAR
	if json.Unmarshal(data, &old) != nil || len(old.Log.Entries) != len(entries) {
		return false
	}
	a, err1 := json.Marshal(comparable(old.Log.Entries))
	b, err2 := json.Marshal(comparable(entries))
	return err1 == nil && err2 == nil && bytes.Equal(a, b)
}

// comparable returns copies of entries without what changes on every
// recording of the same exchanges.
func comparable(entries []har.Entry) []har.Entry {
	out := make([]har.Entry, len(entries))
	for i, e := range entries {
		fixTimes(&e, 0)
		e.Response.Headers = slices.Clone(e.Response.Headers)
		for j, nv := range e.Response.Headers {
			if strings.EqualFold(nv.Name, "Date") {
				e.Response.Headers[j].Value = ""
			}
		}
		out[i] = e
	}
	return out
}

// replaceFile writes data to path through a temporary file, so that a test
// killed halfway leaves the old cassette whole.
func replaceFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".cassette-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
