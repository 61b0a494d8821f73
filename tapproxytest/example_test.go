package tapproxytest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

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
