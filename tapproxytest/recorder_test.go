package tapproxytest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/tapproxytest"
)

func TestRecorderRecordsExchange(t *testing.T) {
	srv := tapproxytest.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"got":%q}`, body)
		w.Header().Set("X-Sum", "42")
	}))

	req, err := http.NewRequestWithContext(waitCtx(t), http.MethodPut, srv.URL+"/items/7?v=2", strings.NewReader("hello"))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer t")
	res, err := srv.Client().Do(req)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, res.Body)
	require.NoError(t, err)
	res.Body.Close()

	ex := exchange(t, srv, 1)
	assert.Equal(t, 1, ex.Seq)
	assert.Equal(t, http.MethodPut, ex.Request.Method)
	assert.Equal(t, srv.UpstreamURL+"/items/7?v=2", ex.Request.URL.String())
	assert.Equal(t, strings.TrimPrefix(srv.UpstreamURL, "http://"), ex.Request.Host)
	assert.Equal(t, "Bearer t", ex.Request.Header.Get("Authorization"))
	assert.Equal(t, "hello", string(ex.Request.Body))
	assert.EqualValues(t, 5, ex.Request.BodyBytes)
	assert.False(t, ex.Request.BodyTruncated)

	assert.Equal(t, http.StatusCreated, ex.Response.StatusCode)
	assert.Equal(t, "application/json", ex.Response.Header.Get("Content-Type"))
	assert.Equal(t, "42", ex.Response.Trailer.Get("X-Sum"))
	assert.Equal(t, `{"got":"hello"}`, string(ex.Response.Body))
	assert.EqualValues(t, len(`{"got":"hello"}`), ex.Response.BodyBytes)
	assert.False(t, ex.Response.BodyTruncated)

	assert.False(t, ex.Start.IsZero())
	assert.Positive(t, ex.TimeToHeaders)
	assert.GreaterOrEqual(t, ex.Duration, ex.TimeToHeaders)
	assert.NoError(t, ex.Err)
	assert.Empty(t, ex.Faults)
}

func TestRecorderBodyLimit(t *testing.T) {
	srv := tapproxytest.NewServer(t, text(strings.Repeat("r", 100)), tapproxytest.WithBodyLimit(10))

	res, err := srv.Client().Post(srv.URL+"/", "text/plain", strings.NewReader(strings.Repeat("q", 50)))
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	assert.Len(t, body, 100, "the limit bounds the recording, not the relay")

	ex := exchange(t, srv, 1)
	assert.Equal(t, strings.Repeat("q", 10), string(ex.Request.Body))
	assert.EqualValues(t, 50, ex.Request.BodyBytes)
	assert.True(t, ex.Request.BodyTruncated)
	assert.Equal(t, strings.Repeat("r", 10), string(ex.Response.Body))
	assert.EqualValues(t, 100, ex.Response.BodyBytes)
	assert.True(t, ex.Response.BodyTruncated)
}

func TestRecorderRecordsFailure(t *testing.T) {
	// An upstream that is not there: the proxy answers 502, and the
	// recorder keeps the request and the error.
	up := tapproxytest.NewServer(t, text("gone"))
	target := up.UpstreamURL
	up.Close()
	srv := tapproxytest.NewServerURL(t, target)

	res, _, err := get(t, srv.Client(), srv.URL+"/x")
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)

	ex := exchange(t, srv, 1)
	assert.Equal(t, "/x", ex.Request.URL.Path)
	assert.Equal(t, 0, ex.Response.StatusCode)
	assert.ErrorIs(t, ex.Err, tapproxy.ErrUpstreamUnavailable)
}

func TestRecorderBounded(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithMaxExchanges(3))
	for i := 1; i <= 5; i++ {
		_, _, err := get(t, srv.Client(), fmt.Sprintf("%s/%d", srv.URL, i))
		require.NoError(t, err)
		exchange(t, srv, i) // in order
	}

	var paths []string
	var seqs []int
	for _, ex := range srv.Recorder.Exchanges() {
		paths = append(paths, ex.Request.URL.Path)
		seqs = append(seqs, ex.Seq)
	}
	assert.Equal(t, []string{"/3", "/4", "/5"}, paths, "the most recent are kept, oldest first")
	assert.Equal(t, []int{3, 4, 5}, seqs)
	assert.Equal(t, 5, srv.Recorder.Len())

	_, err := srv.Recorder.Wait(waitCtx(t), 2)
	assert.ErrorContains(t, err, "tapproxytest: exchange 2 is no longer kept")
	ex, err := srv.Recorder.Wait(waitCtx(t), 3)
	require.NoError(t, err)
	assert.Equal(t, "/3", ex.Request.URL.Path)
}

func TestRecorderWaitForFuture(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"))

	got := make(chan tapproxytest.Exchange, 1)
	errc := make(chan error, 1)
	go func() {
		ex, err := srv.Recorder.Wait(waitCtx(t), 2)
		errc <- err
		got <- ex
	}()
	for _, p := range []string{"/a", "/b"} {
		_, _, err := get(t, srv.Client(), srv.URL+p)
		require.NoError(t, err)
	}
	require.NoError(t, <-errc)
	assert.Equal(t, "/b", (<-got).Request.URL.Path)
}

func TestRecorderWaitFor(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"))
	_, _, err := get(t, srv.Client(), srv.URL+"/early")
	require.NoError(t, err)

	isLate := func(ex tapproxytest.Exchange) bool { return ex.Request.URL.Path == "/late" }
	done := make(chan tapproxytest.Exchange, 1)
	go func() {
		ex, err := srv.Recorder.WaitFor(waitCtx(t), isLate)
		assert.NoError(t, err)
		done <- ex
	}()
	for _, p := range []string{"/other", "/late", "/late"} {
		_, _, err := get(t, srv.Client(), srv.URL+p)
		require.NoError(t, err)
	}
	select {
	case ex := <-done:
		assert.Equal(t, 3, ex.Seq, "the first match")
	case <-time.After(waitTimeout):
		t.Fatal("WaitFor did not return")
	}

	// Already recorded matches are found without waiting.
	ex, err := srv.Recorder.WaitFor(waitCtx(t), func(ex tapproxytest.Exchange) bool { return ex.Request.URL.Path == "/early" })
	require.NoError(t, err)
	assert.Equal(t, 1, ex.Seq)
}

func TestRecorderWaitEndsWithContext(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()

	_, err := srv.Recorder.Wait(ctx, 1)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorContains(t, err, "tapproxytest: waiting for exchange 1")

	_, err = srv.Recorder.WaitFor(ctx, func(tapproxytest.Exchange) bool { return true })
	assert.ErrorIs(t, err, context.DeadlineExceeded)

	_, err = srv.Recorder.Wait(ctx, 0)
	assert.ErrorContains(t, err, "tapproxytest: Wait(0)")
	_, err = srv.Recorder.WaitFor(ctx, nil)
	assert.ErrorContains(t, err, "tapproxytest: WaitFor: nil match function")
}

func TestRecorderReset(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"))
	_, _, err := get(t, srv.Client(), srv.URL+"/before")
	require.NoError(t, err)
	exchange(t, srv, 1)

	srv.Recorder.Reset()
	assert.Empty(t, srv.Recorder.Exchanges())
	assert.Zero(t, srv.Recorder.Len())

	_, _, err = get(t, srv.Client(), srv.URL+"/after")
	require.NoError(t, err)
	ex := exchange(t, srv, 1)
	assert.Equal(t, "/after", ex.Request.URL.Path, "numbering restarts")
	ex, err = srv.Recorder.WaitFor(waitCtx(t), func(tapproxytest.Exchange) bool { return true })
	require.NoError(t, err)
	assert.Equal(t, "/after", ex.Request.URL.Path)
}

func TestRecorderConcurrent(t *testing.T) {
	const n = 50
	srv := tapproxytest.NewServer(t, text("ok"))

	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Not get: require must not be called off the test goroutine.
			res, err := srv.Client().Get(fmt.Sprintf("%s/%d", srv.URL, i))
			if assert.NoError(t, err) {
				_, err = io.Copy(io.Discard, res.Body)
				assert.NoError(t, err)
				res.Body.Close()
			}
			_ = srv.Recorder.Exchanges()
			_ = srv.Recorder.Len()
		})
	}
	wg.Wait()

	for i := 1; i <= n; i++ {
		exchange(t, srv, i) // every one has ended
	}
	seen := map[string]bool{}
	for i, ex := range srv.Recorder.Exchanges() {
		assert.Equal(t, i+1, ex.Seq)
		seen[ex.Request.URL.Path] = true
	}
	assert.Len(t, seen, n, "every exchange is recorded once")
}

// heldSlow is a server whose upstream holds the request for /slow until
// release is called, and answers other paths at once. It returns once a
// client's GET of /slow has reached the upstream; finish releases it and
// returns the client's error once the observers (the recorder among them)
// have seen the exchange.
func heldSlow(t *testing.T, opts ...tapproxytest.Option) (srv *tapproxytest.Server, finish func() error) {
	t.Helper()
	arrived, release, observed := make(chan struct{}), make(chan struct{}), make(chan struct{})
	// Observers run in order, the recorder first: once this one saw
	// /slow, so did the recorder.
	opts = append(opts, tapproxytest.WithProxyOptions(tapproxy.WithObserver(tapproxy.ObserverFunc(
		func(_ context.Context, ex *tapproxy.Exchange) {
			if ex.Request.URL.Path == "/slow" {
				close(observed)
			}
		}))))
	srv = tapproxytest.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(arrived)
			<-release
		}
		io.WriteString(w, r.URL.Path)
	}), opts...)
	done := make(chan error, 1)
	go func() {
		res, err := srv.Client().Get(srv.URL + "/slow")
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	<-arrived
	return srv, func() error {
		close(release)
		err := <-done
		<-observed
		return err
	}
}

func TestRecorderNumbersByArrival(t *testing.T) {
	srv, finishSlow := heldSlow(t)
	_, _, err := get(t, srv.Client(), srv.URL+"/fast")
	require.NoError(t, err)
	// The fast exchange ended first, but arrived second.
	ex := exchange(t, srv, 2)
	assert.Equal(t, "/fast", ex.Request.URL.Path)
	assert.Equal(t, 1, srv.Recorder.Len())

	require.NoError(t, finishSlow())
	ex = exchange(t, srv, 1)
	assert.Equal(t, "/slow", ex.Request.URL.Path)
	var paths []string
	for _, ex := range srv.Recorder.Exchanges() {
		paths = append(paths, ex.Request.URL.Path)
	}
	assert.Equal(t, []string{"/slow", "/fast"}, paths)
}

func TestRecorderResetDropsInFlight(t *testing.T) {
	srv, finishSlow := heldSlow(t)
	srv.Recorder.Reset()
	require.NoError(t, finishSlow())
	assert.Empty(t, srv.Recorder.Exchanges(), "the exchange in flight at Reset is not recorded")
	assert.Zero(t, srv.Recorder.Len())

	_, _, err := get(t, srv.Client(), srv.URL+"/after")
	require.NoError(t, err)
	ex := exchange(t, srv, 1)
	assert.Equal(t, "/after", ex.Request.URL.Path)
	assert.Len(t, srv.Recorder.Exchanges(), 1)
}

func TestRecorderBoundDropsLateOlderExchange(t *testing.T) {
	srv, finishSlow := heldSlow(t, tapproxytest.WithMaxExchanges(1))
	_, _, err := get(t, srv.Client(), srv.URL+"/fast")
	require.NoError(t, err)
	assert.Equal(t, "/fast", exchange(t, srv, 2).Request.URL.Path)

	require.NoError(t, finishSlow())
	// The slow exchange arrived first, so it is the older one to drop.
	_, err = srv.Recorder.Wait(waitCtx(t), 1)
	assert.ErrorContains(t, err, "tapproxytest: exchange 1 is no longer kept")
	assert.Equal(t, 2, srv.Recorder.Len())
	require.Len(t, srv.Recorder.Exchanges(), 1)
	assert.Equal(t, 2, srv.Recorder.Exchanges()[0].Seq)
}
