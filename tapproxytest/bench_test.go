package tapproxytest_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tapproxy/tapproxy/tapproxytest"
)

// BenchmarkServer measures one GET of a 1 KiB body straight from an
// httptest upstream, and through a Server whose recorder keeps copies and
// whose fault set selects nothing (so that matching is paid for): the
// difference is what the shim costs a test per request. The record case
// adds a cassette that records every exchange.
func BenchmarkServer(b *testing.B) {
	body := strings.Repeat("x", 1<<10)
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	})
	run := func(b *testing.B, c *http.Client, u string) {
		b.ReportAllocs()
		for b.Loop() {
			res, err := c.Get(u)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, res.Body); err != nil {
				b.Fatal(err)
			}
			res.Body.Close()
		}
	}
	b.Run("direct", func(b *testing.B) {
		srv := httptest.NewServer(upstream)
		defer srv.Close()
		run(b, srv.Client(), srv.URL+"/x")
	})
	b.Run("server", func(b *testing.B) {
		srv := tapproxytest.NewServer(b, upstream,
			tapproxytest.WithFaults(tapproxytest.Respond(http.StatusTeapot, "").On(tapproxytest.Path("/never"))))
		run(b, srv.Client(), srv.URL+"/x")
	})
	b.Run("record", func(b *testing.B) {
		srv := tapproxytest.NewServer(b, upstream, tapproxytest.WithCassette(
			filepath.Join(b.TempDir(), "bench.har"), tapproxytest.WithMode(tapproxytest.Record)))
		run(b, srv.Client(), srv.URL+"/x")
	})
}
