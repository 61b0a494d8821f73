package tapproxytest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy/tapproxytest"
)

// send sends method to path on srv with body, and reads the response.
func send(tb testing.TB, srv *tapproxytest.Server, method, path, body string) {
	tb.Helper()
	req, err := http.NewRequestWithContext(waitCtx(tb), method, srv.URL+path, strings.NewReader(body))
	require.NoError(tb, err)
	res, err := srv.Client().Do(req)
	require.NoError(tb, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
}

// jsonBody selects requests whose body is JSON equal to want.
func jsonBody(want string) tapproxytest.Matcher {
	return tapproxytest.Match(func(r *http.Request) bool {
		var got, exp any
		return json.NewDecoder(r.Body).Decode(&got) == nil &&
			json.Unmarshal([]byte(want), &exp) == nil &&
			assert.ObjectsAreEqual(exp, got)
	})
}

func TestCountAndExpect(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"))
	send(t, srv, http.MethodGet, "/users", "")
	send(t, srv, http.MethodPost, "/users", `{"name": "ann"}`)
	send(t, srv, http.MethodPost, "/users", `{"name":"bob"}`)
	send(t, srv, http.MethodGet, "/orders", "")

	tests := []struct {
		name  string
		ms    []tapproxytest.Matcher
		count int
	}{
		{"all", nil, 4},
		{"by method", []tapproxytest.Matcher{tapproxytest.Method(http.MethodPost)}, 2},
		{"by path", []tapproxytest.Matcher{tapproxytest.Path("/users")}, 3},
		{"by method and body", []tapproxytest.Matcher{tapproxytest.Method(http.MethodPost), jsonBody(`{"name":"ann"}`)}, 1},
		{"by header", []tapproxytest.Matcher{tapproxytest.Header("User-Agent", "nobody")}, 0},
		{"the first of the GETs", []tapproxytest.Matcher{tapproxytest.Method(http.MethodGet), tapproxytest.FirstN(1)}, 1},
		{"the third of all", []tapproxytest.Matcher{tapproxytest.Nth(3)}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.count, srv.Recorder.Count(tt.ms...))

			for _, times := range []struct {
				t    tapproxytest.Times
				fail bool
			}{
				{tapproxytest.Exactly(tt.count), false},
				{tapproxytest.Exactly(tt.count + 1), true},
				{tapproxytest.AtLeast(tt.count), false},
				{tapproxytest.AtLeast(tt.count + 1), true},
				{tapproxytest.Never(), tt.count != 0},
			} {
				tb := &fakeTB{}
				srv.Recorder.Expect(tb, times.t, tt.ms...)
				assert.Equal(t, times.fail, len(tb.allErrors()) == 1, "%s: %v", times.t, tb.allErrors())
			}
		})
	}
}

func TestExpectNamesWhatArrived(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"),
		tapproxytest.WithFaults(tapproxytest.Respond(http.StatusTeapot, "").On(tapproxytest.Path("/tea"))))
	send(t, srv, http.MethodGet, "/tea?cup=2", "")
	send(t, srv, http.MethodPut, "/users/1", `{"name":"ann"}`)

	tb := &fakeTB{}
	srv.Recorder.Expect(tb, tapproxytest.Exactly(1), tapproxytest.Method(http.MethodPost), tapproxytest.Path("/users"))
	errs := tb.allErrors()
	require.Len(t, errs, 1)
	msg := errs[0]
	assert.Contains(t, msg, `expected exactly 1 exchanges matching Method("POST"), Path("/users"), got 0`)
	assert.Contains(t, msg, "the 2 that arrived")
	assert.Contains(t, msg, "#1 GET /tea?cup=2 -> 418 faults [respond(418)]")
	assert.Contains(t, msg, `#2 PUT /users/1 -> 200 body "{\"name\":\"ann\"}"`)
}

func TestExpectNothingArrived(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"))
	tb := &fakeTB{}
	srv.Recorder.Expect(tb, tapproxytest.AtLeast(1))
	require.Len(t, tb.allErrors(), 1)
	assert.Contains(t, tb.allErrors()[0], "expected at least 1 exchanges, got 0; no exchange arrived")
	srv.Recorder.Expect(tb, tapproxytest.Never())
	assert.Len(t, tb.allErrors(), 1, "Never holds")
}

func TestExpectBadInput(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"))
	send(t, srv, http.MethodGet, "/", "")
	tests := []struct {
		name string
		t    tapproxytest.Times
		ms   []tapproxytest.Matcher
		want string
	}{
		{"negative exactly", tapproxytest.Exactly(-1), nil, "tapproxytest: Exactly(-1): negative count"},
		{"negative at least", tapproxytest.AtLeast(-2), nil, "tapproxytest: AtLeast(-2): negative count"},
		{"zero times", tapproxytest.Times{}, nil, "zero Times"},
		{"zero matcher", tapproxytest.Exactly(1), []tapproxytest.Matcher{{}}, "zero Matcher"},
		{"bad path", tapproxytest.Exactly(1), []tapproxytest.Matcher{tapproxytest.Path("[")}, `Path("[")`},
		{"probability", tapproxytest.Exactly(1), []tapproxytest.Matcher{tapproxytest.Probability(0.5)}, "Probability(0.5) selects faults"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := &fakeTB{}
			srv.Recorder.Expect(tb, tt.t, tt.ms...)
			require.Len(t, tb.allErrors(), 1)
			assert.Contains(t, tb.allErrors()[0], tt.want)
			if len(tt.ms) > 0 {
				assert.Zero(t, srv.Recorder.Count(tt.ms...), "a bad matcher counts nothing")
			}
		})
	}
}

func TestExpectWaitsForExchangesInFlight(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"))
	// Expect right after the client has its response: the recorder may
	// not have the exchange yet, and Expect waits for it.
	for range 20 {
		srv.Recorder.Reset()
		send(t, srv, http.MethodGet, "/", "")
		tb := &fakeTB{}
		srv.Recorder.Expect(tb, tapproxytest.Exactly(1))
		require.Empty(t, tb.allErrors())
	}
}

func TestTimesString(t *testing.T) {
	assert.Equal(t, "exactly 2", tapproxytest.Exactly(2).String())
	assert.Equal(t, "at least 1", tapproxytest.AtLeast(1).String())
	assert.Equal(t, "no", tapproxytest.Never().String())
	assert.Equal(t, `Header("X-A", "b")`, tapproxytest.Header("X-A", "b").String())
	assert.Equal(t, "Probability(0.25)", tapproxytest.Probability(0.25).String())
}

func TestExpectDoesNotWaitForHang(t *testing.T) {
	arrived := make(chan struct{})
	var once sync.Once
	held := tapproxytest.Match(func(r *http.Request) bool {
		if r.URL.Path != "/held" {
			return false
		}
		once.Do(func() { close(arrived) })
		return true
	})
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithFaults(tapproxytest.Hang().On(held)))
	go func() {
		req, err := http.NewRequestWithContext(waitCtx(t), http.MethodGet, srv.URL+"/held", nil)
		if err == nil {
			if res, err := srv.Client().Do(req); err == nil {
				res.Body.Close()
			}
		}
	}()
	send(t, srv, http.MethodGet, "/fine", "")
	select {
	case <-arrived:
	case <-time.After(waitTimeout):
		t.Fatal("the held request never arrived")
	}
	start := time.Now()
	assert.Equal(t, 1, srv.Recorder.Count())
	assert.Less(t, time.Since(start), 4*time.Second, "Count did not wait out its bound for the held request")
}
