package har_test

import (
	"log"
	"net/http"
	"net/url"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

// The package documentation's quick start, kept here so that it compiles.
// It serves on fixed ports, so it is not run.
func quickStart(target *url.URL) {
	rec := har.NewRecorder()
	proxy, err := tapproxy.New(target,
		tapproxy.WithObserver(rec),
		tapproxy.WithAsyncObservers(2, 4096))
	if err != nil {
		log.Fatal(err)
	}
	go http.ListenAndServe("127.0.0.1:9090", rec.Handler()) // GET: download; DELETE: clear
	log.Fatal(http.ListenAndServe(":8080", proxy))
}

var _ = quickStart
