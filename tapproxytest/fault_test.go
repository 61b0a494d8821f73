package tapproxytest_test

import (
	"context"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/tapproxytest"
)

// bodyUpstream serves a body of size bytes, with a Content-Length, or
// chunked when chunked is set, and counts its calls.
func bodyUpstream(size int, chunked bool, calls *atomic.Int64) http.HandlerFunc {
	body := strings.Repeat("abcdefghij", size/10+1)[:size]
	return func(w http.ResponseWriter, r *http.Request) {
		if calls != nil {
			calls.Add(1)
		}
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(size))
			io.WriteString(w, body)
			return
		}
		// Flush between halves so that the server cannot compute a
		// length: the response goes out chunked.
		io.WriteString(w, body[:size/2])
		http.NewResponseController(w).Flush()
		io.WriteString(w, body[size/2:])
	}
}

func TestDelay(t *testing.T) {
	const d = 300 * time.Millisecond
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithFaults(tapproxytest.Delay(d)))

	start := time.Now()
	res, body, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "ok", string(body))
	// A lower bound only: the delay is a floor, never a ceiling.
	assert.GreaterOrEqual(t, time.Since(start), d)

	ex := exchange(t, srv, 1)
	assert.Equal(t, []string{"delay(300ms)"}, ex.Faults)
	assert.GreaterOrEqual(t, ex.TimeToHeaders, d)
	assert.NoError(t, ex.Err)
}

func TestDelayClientGivesUp(t *testing.T) {
	var calls atomic.Int64
	srv := tapproxytest.NewServer(t, bodyUpstream(10, false, &calls),
		tapproxytest.WithFaults(tapproxytest.Delay(time.Hour)))

	c := &http.Client{Transport: srv.Client().Transport, Timeout: 200 * time.Millisecond}
	_, err := c.Get(srv.URL + "/")
	require.Error(t, err)
	var ne interface{ Timeout() bool }
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())

	ex := exchange(t, srv, 1)
	assert.ErrorIs(t, ex.Err, tapproxy.ErrClientGone)
	assert.Equal(t, 0, ex.Response.StatusCode)
	// The delay holds back the answer, not the request.
	assert.EqualValues(t, 1, calls.Load())
}

func TestRespond(t *testing.T) {
	var calls atomic.Int64
	srv := tapproxytest.NewServer(t, bodyUpstream(10, false, &calls),
		tapproxytest.WithFaults(tapproxytest.Respond(http.StatusServiceUnavailable, "busy")))

	res, err := srv.Client().Post(srv.URL+"/jobs", "application/json", strings.NewReader(`{"id":1}`))
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.Equal(t, "busy", string(body))
	assert.EqualValues(t, 4, res.ContentLength)
	assert.Equal(t, "text/plain; charset=utf-8", res.Header.Get("Content-Type"))
	assert.Zero(t, calls.Load(), "the upstream must not be contacted")

	ex := exchange(t, srv, 1)
	assert.Equal(t, []string{"respond(503)"}, ex.Faults)
	assert.Equal(t, http.StatusServiceUnavailable, ex.Response.StatusCode)
	assert.Equal(t, "busy", string(ex.Response.Body))
	assert.Equal(t, `{"id":1}`, string(ex.Request.Body), "the request body is still recorded")
	assert.NoError(t, ex.Err)
}

func TestResetAfter(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run("chunked="+strconv.FormatBool(chunked), func(t *testing.T) {
			srv := tapproxytest.NewServer(t, bodyUpstream(100_000, chunked, nil),
				tapproxytest.WithFaults(tapproxytest.ResetAfter(1000)))

			_, body, err := get(t, srv.Client(), srv.URL+"/")
			require.Error(t, err)
			assert.ErrorIs(t, err, syscall.ECONNRESET)
			assert.LessOrEqual(t, len(body), 1000)

			ex := exchange(t, srv, 1)
			assert.Equal(t, []string{"reset-after(1000)"}, ex.Faults)
			assert.ErrorIs(t, ex.Err, tapproxy.ErrUpstreamReset)
			assert.EqualValues(t, 1000, ex.Response.BodyBytes)
		})
	}
}

func TestResetAfterZero(t *testing.T) {
	// With n = 0 nothing of the response reaches the client.
	srv := tapproxytest.NewServer(t, bodyUpstream(100, false, nil),
		tapproxytest.WithFaults(tapproxytest.ResetAfter(0)))

	res, err := srv.Client().Get(srv.URL + "/")
	if err == nil {
		// The headers may have gone out first; the body may not.
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		assert.Error(t, err)
		assert.Empty(t, body)
	}
	assert.ErrorIs(t, exchange(t, srv, 1).Err, tapproxy.ErrUpstreamReset)
}

func TestResetAfterShortBody(t *testing.T) {
	// A chunked body that ends before n bytes is reset instead of ending.
	srv := tapproxytest.NewServer(t, bodyUpstream(100, true, nil),
		tapproxytest.WithFaults(tapproxytest.ResetAfter(1000)))

	_, _, err := get(t, srv.Client(), srv.URL+"/")
	require.Error(t, err)
	assert.ErrorIs(t, exchange(t, srv, 1).Err, tapproxy.ErrUpstreamReset)
}

func TestTruncate(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run("chunked="+strconv.FormatBool(chunked), func(t *testing.T) {
			srv := tapproxytest.NewServer(t, bodyUpstream(100_000, chunked, nil),
				tapproxytest.WithFaults(tapproxytest.Truncate(1000)))

			res, body, err := get(t, srv.Client(), srv.URL+"/")
			assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
			assert.Equal(t, 1000, len(body), "bytes before the cut arrive")
			if chunked {
				assert.EqualValues(t, -1, res.ContentLength)
			} else {
				assert.EqualValues(t, 100_000, res.ContentLength, "the framing still declares the whole body")
			}

			ex := exchange(t, srv, 1)
			assert.Equal(t, []string{"truncate(1000)"}, ex.Faults)
			assert.ErrorIs(t, ex.Err, tapproxy.ErrUpstreamReset)
			assert.EqualValues(t, 1000, ex.Response.BodyBytes)
			assert.Len(t, ex.Response.Body, 1000)
		})
	}
}

func TestTruncateShortBodyUnaffected(t *testing.T) {
	srv := tapproxytest.NewServer(t, bodyUpstream(100, true, nil),
		tapproxytest.WithFaults(tapproxytest.Truncate(1000)))

	_, body, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Len(t, body, 100)
	assert.NoError(t, exchange(t, srv, 1).Err)
}

func TestThrottle(t *testing.T) {
	const size, rate = 1000, 2000 // half a second's worth
	srv := tapproxytest.NewServer(t, bodyUpstream(size, false, nil),
		tapproxytest.WithFaults(tapproxytest.Throttle(rate)))

	c := srv.Client()
	start := time.Now()
	res, err := c.Get(srv.URL + "/")
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	assert.Len(t, body, size)
	// A lower bound only: the last byte is due size/rate after the headers.
	assert.GreaterOrEqual(t, time.Since(start), time.Duration(size)*time.Second/rate)

	ex := exchange(t, srv, 1)
	assert.Equal(t, []string{"throttle(2000B/s)"}, ex.Faults)
	assert.NoError(t, ex.Err)
	assert.EqualValues(t, size, ex.Response.BodyBytes)
}

// trailerUpstream sends a body and the trailer X-Checksum.
func trailerUpstream(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Trailer", "X-Checksum")
	io.WriteString(w, "payload")
	w.Header().Set("X-Checksum", "abc")
}

func TestDropTrailers(t *testing.T) {
	tests := []struct {
		name    string
		faults  []tapproxytest.Fault
		trailer string
	}{
		{name: "without fault", trailer: "abc"},
		{name: "with fault", faults: []tapproxytest.Fault{tapproxytest.DropTrailers()}, trailer: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tapproxytest.NewServer(t, http.HandlerFunc(trailerUpstream), tapproxytest.WithFaults(tt.faults...))

			res, body, err := get(t, srv.Client(), srv.URL+"/")
			require.NoError(t, err)
			assert.Equal(t, "payload", string(body))
			assert.Equal(t, tt.trailer, res.Trailer.Get("X-Checksum"))
			_, announced := res.Trailer["X-Checksum"]
			assert.Equal(t, tt.trailer != "", announced, "a dropped trailer is not announced either")

			ex := exchange(t, srv, 1)
			assert.Equal(t, tt.trailer, ex.Response.Trailer.Get("X-Checksum"))
			assert.Equal(t, len(tt.faults) > 0, ex.HasFault("drop-trailers"))
		})
	}
}

func TestHang(t *testing.T) {
	var calls atomic.Int64
	srv := tapproxytest.NewServer(t, bodyUpstream(10, false, &calls),
		tapproxytest.WithFaults(tapproxytest.Hang()))

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/", nil)
	require.NoError(t, err)
	_, err = srv.Client().Do(req)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	ex := exchange(t, srv, 1)
	assert.Equal(t, []string{"hang"}, ex.Faults)
	assert.ErrorIs(t, ex.Err, tapproxy.ErrClientGone)
	assert.Zero(t, calls.Load())
}

func TestHangReleasedByClose(t *testing.T) {
	arrived := make(chan struct{})
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithFaults(
		tapproxytest.Hang().On(tapproxytest.Match(func(*http.Request) bool {
			close(arrived)
			return true
		}))))

	type result struct {
		res *http.Response
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := srv.Client().Get(srv.URL + "/")
		if err == nil {
			res.Body.Close()
		}
		done <- result{res, err}
	}()
	select {
	case <-arrived:
	case <-time.After(waitTimeout):
		t.Fatal("request did not arrive")
	}
	srv.Close()
	select {
	case r := <-done:
		require.NoError(t, r.err)
		assert.Equal(t, http.StatusBadGateway, r.res.StatusCode)
	case <-time.After(waitTimeout):
		t.Fatal("Close did not release the hung request")
	}
}

func TestMatchers(t *testing.T) {
	const hit = http.StatusTeapot
	type call struct {
		method, path, header string
	}
	tests := []struct {
		name  string
		on    []tapproxytest.Matcher
		calls []call
		want  []int // status per call
	}{
		{
			name:  "method",
			on:    []tapproxytest.Matcher{tapproxytest.Method("POST", "PUT")},
			calls: []call{{method: "GET"}, {method: "POST"}, {method: "PUT"}, {method: "DELETE"}},
			want:  []int{200, hit, hit, 200},
		},
		{
			name:  "path",
			on:    []tapproxytest.Matcher{tapproxytest.Path("/users/*")},
			calls: []call{{path: "/users/1"}, {path: "/users"}, {path: "/users/1/orders"}, {path: "/users/2"}},
			want:  []int{hit, 200, 200, hit},
		},
		{
			name:  "header",
			on:    []tapproxytest.Matcher{tapproxytest.Header("X-Tenant", "b")},
			calls: []call{{header: "a"}, {header: "b"}, {}},
			want:  []int{200, hit, 200},
		},
		{
			name: "predicate",
			on: []tapproxytest.Matcher{tapproxytest.Match(func(r *http.Request) bool {
				return strings.HasSuffix(r.URL.Path, ".json")
			})},
			calls: []call{{path: "/a.json"}, {path: "/a.xml"}},
			want:  []int{hit, 200},
		},
		{
			name:  "nth",
			on:    []tapproxytest.Matcher{tapproxytest.Nth(2)},
			calls: []call{{}, {}, {}},
			want:  []int{200, hit, 200},
		},
		{
			name:  "first n",
			on:    []tapproxytest.Matcher{tapproxytest.FirstN(2)},
			calls: []call{{}, {}, {}, {}},
			want:  []int{hit, hit, 200, 200},
		},
		{
			name:  "first zero",
			on:    []tapproxytest.Matcher{tapproxytest.FirstN(0)},
			calls: []call{{}, {}},
			want:  []int{200, 200},
		},
		{
			name: "counting only requests the others select",
			on:   []tapproxytest.Matcher{tapproxytest.Nth(2), tapproxytest.Method("POST")},
			calls: []call{
				{method: "POST"}, {method: "GET"}, {method: "GET"}, {method: "POST"}, {method: "POST"},
			},
			want: []int{200, 200, 200, hit, 200},
		},
		{
			name:  "all must select",
			on:    []tapproxytest.Matcher{tapproxytest.Method("GET"), tapproxytest.Path("/a")},
			calls: []call{{path: "/a"}, {path: "/b"}, {method: "POST", path: "/a"}},
			want:  []int{hit, 200, 200},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tapproxytest.NewServer(t, text("ok"),
				tapproxytest.WithFaults(tapproxytest.Respond(hit, "").On(tt.on...)))
			for i, c := range tt.calls {
				method, path := c.method, c.path
				if method == "" {
					method = "GET"
				}
				if path == "" {
					path = "/"
				}
				req, err := http.NewRequestWithContext(waitCtx(t), method, srv.URL+path, nil)
				require.NoError(t, err)
				if c.header != "" {
					req.Header.Set("X-Tenant", c.header)
				}
				res, err := srv.Client().Do(req)
				require.NoError(t, err)
				res.Body.Close()
				assert.Equal(t, tt.want[i], res.StatusCode, "call %d", i+1)
				assert.Equal(t, tt.want[i] == hit, exchange(t, srv, i+1).HasFault("respond(418)"), "call %d", i+1)
			}
		})
	}
}

func TestFaultsCompose(t *testing.T) {
	const d = 100 * time.Millisecond
	srv := tapproxytest.NewServer(t, http.HandlerFunc(trailerUpstream), tapproxytest.WithFaults(
		tapproxytest.Delay(d),
		tapproxytest.Delay(d).Named("second delay"),
		tapproxytest.DropTrailers(),
		tapproxytest.Respond(http.StatusAccepted, "fixed body").On(tapproxytest.Path("/fixed")),
		tapproxytest.Truncate(3).On(tapproxytest.Path("/fixed")),
		tapproxytest.Respond(http.StatusTeapot, "").On(tapproxytest.Path("/never")),
	))

	start := time.Now()
	res, body, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), 2*d, "delays add up")
	assert.Equal(t, "payload", string(body))
	assert.Empty(t, res.Trailer.Get("X-Checksum"))
	assert.Equal(t, []string{"delay(100ms)", "second delay", "drop-trailers"}, exchange(t, srv, 1).Faults)

	res, body, err = get(t, srv.Client(), srv.URL+"/fixed")
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.Equal(t, http.StatusAccepted, res.StatusCode)
	assert.Equal(t, "fix", string(body), "the fixed body is truncated too")
	ex := exchange(t, srv, 2)
	assert.Equal(t, []string{"delay(100ms)", "second delay", "drop-trailers", "respond(202)", "truncate(3)"}, ex.Faults)
	assert.ErrorIs(t, ex.Err, tapproxy.ErrUpstreamReset)
}

func TestSetFaults(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"),
		tapproxytest.WithFaults(tapproxytest.Respond(http.StatusTeapot, "").On(tapproxytest.FirstN(1))))

	res, _, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusTeapot, res.StatusCode)

	srv.SetFaults(tapproxytest.Respond(http.StatusGone, "").On(tapproxytest.FirstN(1)))
	res, _, err = get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusGone, res.StatusCode, "counting starts afresh")
	res, _, err = get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, res.StatusCode)

	srv.SetFaults()
	res, _, err = get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, res.StatusCode)
}

func TestInvalidFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault tapproxytest.Fault
		want  string
	}{
		{"negative delay", tapproxytest.Delay(-time.Second), "tapproxytest: Delay(-1s): negative duration"},
		{"bad status", tapproxytest.Respond(99, ""), "tapproxytest: Respond(99)"},
		{"body with 204", tapproxytest.Respond(204, "x"), "tapproxytest: Respond(204): this status has no body"},
		{"negative reset", tapproxytest.ResetAfter(-1), "tapproxytest: ResetAfter(-1)"},
		{"negative truncate", tapproxytest.Truncate(-1), "tapproxytest: Truncate(-1)"},
		{"zero rate", tapproxytest.Throttle(0), "tapproxytest: Throttle(0)"},
		{"zero fault", tapproxytest.Fault{}, "tapproxytest: zero Fault"},
		{"bad path pattern", tapproxytest.Hang().On(tapproxytest.Path("/[")), "tapproxytest: Path(\"/[\")"},
		{"zero matcher", tapproxytest.Hang().On(tapproxytest.Matcher{}), "tapproxytest: zero Matcher"},
		{"nth zero", tapproxytest.Hang().On(tapproxytest.Nth(0)), "tapproxytest: Nth(0)"},
		{"negative first n", tapproxytest.Hang().On(tapproxytest.FirstN(-1)), "tapproxytest: FirstN(-1)"},
		{"negative uniform delay", tapproxytest.DelayUniform(-time.Second, 0), "tapproxytest: DelayUniform(-1s, 0s): negative duration"},
		{"uniform hi below lo", tapproxytest.DelayUniform(2*time.Second, time.Second), "tapproxytest: DelayUniform(2s, 1s): hi is below lo"},
		{"negative log-normal median", tapproxytest.DelayLogNormal(-time.Second, 1, time.Second), "tapproxytest: DelayLogNormal(-1s, 1, 1s): negative median"},
		{"log-normal sigma NaN", tapproxytest.DelayLogNormal(time.Second, math.NaN(), time.Second), "sigma must be a finite number"},
		{"log-normal negative sigma", tapproxytest.DelayLogNormal(time.Second, -1, time.Second), "sigma must be a finite number"},
		{"log-normal max below median", tapproxytest.DelayLogNormal(time.Second, 1, time.Millisecond), "max is below the median"},
		{"dribble no chunks", tapproxytest.Dribble(0, time.Second), "tapproxytest: Dribble(0, 1s): chunks must be at least 1"},
		{"dribble negative total", tapproxytest.Dribble(2, -time.Second), "tapproxytest: Dribble(2, -1s): negative duration"},
		{"probability above 1", tapproxytest.Hang().On(tapproxytest.Probability(1.5)), "tapproxytest: Probability(1.5): p must be from 0 to 1"},
		{"probability NaN", tapproxytest.Hang().On(tapproxytest.Probability(math.NaN())), "tapproxytest: Probability(NaN)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := &fakeTB{}
			srv := tapproxytest.NewServer(tb, text("ok"), tapproxytest.WithFaults(tt.fault))
			tb.finish()
			assert.Nil(t, srv)
			require.Len(t, tb.fatals, 1)
			assert.Contains(t, tb.fatals[0], tt.want)
		})
	}

	t.Run("SetFaults keeps the faults", func(t *testing.T) {
		tb := &fakeTB{}
		srv := tapproxytest.NewServer(tb, text("ok"),
			tapproxytest.WithFaults(tapproxytest.Respond(http.StatusTeapot, "")))
		defer tb.finish()
		srv.SetFaults(tapproxytest.Throttle(-1))
		require.Len(t, tb.fatals, 1)
		assert.Contains(t, tb.fatals[0], "tapproxytest: Throttle(-1)")
		res, _, err := get(t, srv.Client(), srv.URL+"/")
		require.NoError(t, err)
		assert.Equal(t, http.StatusTeapot, res.StatusCode)
	})
}

func TestFaultString(t *testing.T) {
	assert.Equal(t, "throttle(10B/s)", tapproxytest.Throttle(10).String())
	assert.Equal(t, "mine", tapproxytest.Hang().Named("mine").String())
	assert.Equal(t, "delay-uniform(10ms,50ms)", tapproxytest.DelayUniform(10*time.Millisecond, 50*time.Millisecond).String())
	assert.Equal(t, "delay-lognormal(10ms,0.5,1s)", tapproxytest.DelayLogNormal(10*time.Millisecond, 0.5, time.Second).String())
	assert.Equal(t, "dribble(4,1s)", tapproxytest.Dribble(4, time.Second).String())
	assert.Equal(t, "close-connection", tapproxytest.CloseConnection().String())
	assert.Equal(t, "reset-connection", tapproxytest.ResetConnection().String())
	assert.Equal(t, "malformed-chunk", tapproxytest.MalformedChunk().String())
	assert.Equal(t, "garbage", tapproxytest.Garbage().String())
}
