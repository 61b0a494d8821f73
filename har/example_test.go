package har_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"time"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

// A proxy that keeps its recent exchanges, served as a HAR download.
func ExampleRecorder() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello")
	}))
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)

	rec := har.NewRecorder(har.WithMaxEntries(100))
	p, err := tapproxy.New(target, tapproxy.WithObserver(rec))
	if err != nil {
		log.Fatal(err)
	}
	front := httptest.NewServer(p)
	res, err := http.Get(front.URL + "/greeting")
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	front.Close() // waits for the exchange, and so for the observer

	// Mount rec.Handler() on an admin port to download the file; here we
	// read the snapshot directly.
	e := rec.HAR().Log.Entries[0]
	fmt.Println(e.Request.Method, e.Response.Status, e.Response.Content.MimeType, e.Response.Content.Text)
	// Output: GET 200 text/plain hello
}

// An entry from recorded parts, as a test shim or a cassette has them.
func ExampleFromParts() {
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:8080/health", nil)
	e := har.FromParts(&har.Parts{
		Request:       req,
		Response:      &http.Response{StatusCode: http.StatusOK, Header: http.Header{}},
		Body:          []byte("ok"),
		BodyBytes:     2,
		Start:         time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC),
		TimeToHeaders: 1500 * time.Microsecond,
		Duration:      2 * time.Millisecond,
	})
	fmt.Println(e.StartedDateTime, e.Time, e.Timings.Wait, e.Timings.Receive, e.ServerIPAddress)
	// Output: 2026-01-02T03:04:05.006Z 2 1.5 0.5 127.0.0.1
}

// Streaming every exchange into one file, finished on Close.
func ExampleWriter() {
	w := har.NewWriter(os.Stdout)
	// Pass w to tapproxy.WithObserver; here one entry is written by hand.
	w.WriteEntry(har.Entry{StartedDateTime: "2026-01-02T03:04:05.000Z"})
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// {"log":{"version":"1.2","creator":{"name":"tapproxy","version":"0.1.0"},"pages":[],"entries":[
	// {"startedDateTime":"2026-01-02T03:04:05.000Z","time":0,"request":{"method":"","url":"","httpVersion":"","cookies":[],"headers":[],"queryString":[],"headersSize":0,"bodySize":0},"response":{"status":0,"statusText":"","httpVersion":"","cookies":[],"headers":[],"content":{"size":0,"mimeType":"","text":""},"redirectURL":"","headersSize":0,"bodySize":0},"cache":{},"timings":{"blocked":0,"dns":0,"connect":0,"send":0,"wait":0,"receive":0,"ssl":0}}
	// ]}}
}
