package tapproxytest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/tapproxytest"
)

// exampleT stands in for the *testing.T that a real test passes to
// NewServer; Examples have none.
type exampleT struct{ cleanups []func() }

func (t *exampleT) Helper()                           {}
func (t *exampleT) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) Log(args ...any)                   {}
func (t *exampleT) Errorf(format string, args ...any) { fmt.Printf("error: "+format+"\n", args...) }
func (t *exampleT) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (t *exampleT) Name() string                      { return "Example" }
func (t *exampleT) Failed() bool                      { return false }

// done runs the cleanups, as the end of a test does.
func (t *exampleT) done() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// getWithRetry is client code under test: it retries 5xx answers with
// exponential backoff.
func getWithRetry(c *http.Client, url string, attempts int, backoff time.Duration) (string, error) {
	for i := 0; ; i++ {
		res, err := c.Get(url)
		if err != nil {
			return "", err
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			return "", err
		}
		if res.StatusCode < 500 {
			return string(body), nil
		}
		if i+1 == attempts {
			return "", fmt.Errorf("giving up after %d attempts: %s", attempts, res.Status)
		}
		time.Sleep(backoff << i)
	}
}

// A client's retries and backoff, against an upstream whose first two
// calls fail.
func Example_retry() {
	t := &exampleT{} // in a test: the *testing.T
	defer t.done()

	srv := tapproxytest.NewServer(t,
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "report ready")
		}),
		tapproxytest.WithFaults(
			tapproxytest.Respond(http.StatusServiceUnavailable, "try later").On(tapproxytest.FirstN(2)),
		))

	const backoff = 20 * time.Millisecond
	body, err := getWithRetry(srv.Client(), srv.URL+"/report", 5, backoff)
	fmt.Println(body, err)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var exs []tapproxytest.Exchange
	for n := 1; n <= 3; n++ {
		ex, err := srv.Recorder.Wait(ctx, n)
		if err != nil {
			panic(err)
		}
		exs = append(exs, ex)
	}
	for i, ex := range exs {
		fmt.Printf("call %d: %d %v", ex.Seq, ex.Response.StatusCode, ex.Faults)
		if i > 0 {
			gap := ex.Start.Sub(exs[i-1].Start)
			fmt.Printf(", backed off at least %v: %t", backoff<<(i-1), gap >= backoff<<(i-1))
		}
		fmt.Println()
	}
	// Output:
	// report ready <nil>
	// call 1: 503 [respond(503)]
	// call 2: 503 [respond(503)], backed off at least 20ms: true
	// call 3: 200 [], backed off at least 40ms: true
}

// createUser is service code under test: it registers a user with an
// upstream API.
func createUser(c *http.Client, baseURL, token, name string) error {
	body, err := json.Marshal(map[string]any{"name": name, "admin": false})
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, baseURL+"/v1/users", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		return fmt.Errorf("create user: %s", res.Status)
	}
	return nil
}

// Asserting exactly what a service sent upstream: method, path, headers and
// JSON body.
func Example_request() {
	t := &exampleT{}
	defer t.done()

	srv := tapproxytest.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))

	if err := createUser(srv.Client(), srv.URL, "s3cret", "ada"); err != nil {
		panic(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ex, err := srv.Recorder.Wait(ctx, 1)
	if err != nil {
		panic(err)
	}
	fmt.Println(ex.Request.Method, ex.Request.URL.Path)
	fmt.Println(ex.Request.Header.Get("Authorization"))
	fmt.Println(ex.Request.Header.Get("Content-Type"))
	var sent struct {
		Name  string `json:"name"`
		Admin bool   `json:"admin"`
	}
	if err := json.Unmarshal(ex.Request.Body, &sent); err != nil {
		panic(err)
	}
	fmt.Printf("%+v\n", sent)
	fmt.Println(ex.Response.StatusCode)
	// Output:
	// POST /v1/users
	// Bearer s3cret
	// application/json
	// {Name:ada Admin:false}
	// 201
}

// fetchStatus is client code under test: it must give up on a slow
// upstream after its timeout.
func fetchStatus(c *http.Client, url string) (string, error) {
	c = &http.Client{Transport: c.Transport, Timeout: time.Second}
	res, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return string(b), err
}

// Timeout handling, with an upstream whose answer is delayed.
func Example_timeout() {
	t := &exampleT{}
	defer t.done()

	srv := tapproxytest.NewServer(t,
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "green")
		}),
		tapproxytest.WithFaults(
			tapproxytest.Delay(time.Minute).On(tapproxytest.Path("/slow")),
		))

	status, err := fetchStatus(srv.Client(), srv.URL+"/fast")
	fmt.Println(status, err)

	_, err = fetchStatus(srv.Client(), srv.URL+"/slow")
	var ne interface{ Timeout() bool }
	fmt.Println("client timed out:", errors.As(err, &ne) && ne.Timeout())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ex, err := srv.Recorder.Wait(ctx, 2)
	if err != nil {
		panic(err)
	}
	fmt.Println(ex.Request.URL.Path, ex.Faults, errors.Is(ex.Err, tapproxy.ErrClientGone))
	// Output:
	// green <nil>
	// client timed out: true
	// /slow [delay(1m0s)] true
}

// Recording a real API once, then replaying it offline: the second run
// never contacts the API. In a test, the cassette would live under
// testdata, and ModeFromEnv("TAPPROXY_RECORD") would let one command
// record it again.
func Example_cassette() {
	dir, err := os.MkdirTemp("", "cassettes")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	cassette := filepath.Join(dir, "weather.har")

	// A stand-in for the real API.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"city":%q,"sky":"clear"}`, r.URL.Query().Get("city"))
	}))

	forecast := func(srv *tapproxytest.Server) {
		res, err := srv.Client().Get(srv.URL + "/forecast?city=Oslo")
		if err != nil {
			panic(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		fmt.Println(res.StatusCode, string(body))
	}

	// First run: no cassette yet, so the server records.
	t := &exampleT{}
	forecast(tapproxytest.NewServerURL(t, api.URL, tapproxytest.WithCassette(cassette)))
	t.done() // the end of the test writes the cassette

	api.Close() // offline from here on

	// Second run: the cassette exists, so the server replays it.
	t = &exampleT{}
	forecast(tapproxytest.NewServerURL(t, api.URL, tapproxytest.WithCassette(cassette)))
	t.done()
	// Output:
	// 200 {"city":"Oslo","sky":"clear"}
	// 200 {"city":"Oslo","sky":"clear"}
}

// Testing a client's retries with a retry library nobody here wrote,
// hashicorp/go-retryablehttp, against an upstream whose first two
// connections close before any response byte.
func Example_retryablehttp() {
	t := &exampleT{}
	defer t.done()

	srv := tapproxytest.NewServer(t,
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "done")
		}),
		tapproxytest.WithFaults(tapproxytest.CloseConnection().On(tapproxytest.FirstN(2))))

	client := retryablehttp.NewClient()
	client.HTTPClient = srv.Client()
	client.RetryMax = 3
	client.RetryWaitMin, client.RetryWaitMax = time.Millisecond, 10*time.Millisecond
	client.Logger = nil
	attempts := 0
	client.RequestLogHook = func(_ retryablehttp.Logger, _ *http.Request, n int) { attempts = n + 1 }

	res, err := client.Get(srv.URL + "/job")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Println(string(body), "after", attempts, "attempts")

	srv.Recorder.Expect(t, tapproxytest.Exactly(3), tapproxytest.Path("/job"))
	for _, ex := range srv.Recorder.Exchanges() {
		fmt.Println(ex.Seq, ex.Response.StatusCode, ex.Faults)
	}
	// Output:
	// done after 3 attempts
	// 1 0 [close-connection]
	// 2 0 [close-connection]
	// 3 200 []
}

// Checking that exactly one POST with a given JSON body reached the
// upstream, whatever the order of its fields; and what a failed
// expectation reports.
func Example_expect() {
	t := &exampleT{}
	defer t.done()

	srv := tapproxytest.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	if err := createUser(srv.Client(), srv.URL, "token", "ada"); err != nil {
		panic(err)
	}

	jsonBody := func(want string) tapproxytest.Matcher {
		return tapproxytest.Match(func(r *http.Request) bool {
			var got, exp any
			if json.NewDecoder(r.Body).Decode(&got) != nil || json.Unmarshal([]byte(want), &exp) != nil {
				return false
			}
			return reflect.DeepEqual(got, exp)
		})
	}
	srv.Recorder.Expect(t, tapproxytest.Exactly(1),
		tapproxytest.Method(http.MethodPost), tapproxytest.Path("/v1/users"),
		jsonBody(`{"admin": false, "name": "ada"}`))
	fmt.Println("one POST with that body")

	// A failed expectation lists what did arrive (t.Errorf prints it here).
	srv.Recorder.Expect(t, tapproxytest.Never(), tapproxytest.Method(http.MethodPost))
	// Output:
	// one POST with that body
	// error: tapproxytest: expected no exchanges matching Method("POST"), got 1; the 1 that arrived:
	// 	#1 POST /v1/users -> 201 body "{\"admin\":false,\"name\":\"ada\"}"
}
