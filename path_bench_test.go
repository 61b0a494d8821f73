package tapproxy

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
)

// BenchmarkPathScreen measures what screening a request line costs: a scan
// for paths without dot-segments, a resolution for paths with them.
func BenchmarkPathScreen(b *testing.B) {
	p, err := New(&url.URL{Scheme: "http", Host: "upstream", Path: "/v1"})
	if err != nil {
		b.Fatal(err)
	}
	for _, bm := range []struct{ name, target string }{
		{"clean", "/api/v2/users/42/orders?limit=10"},
		{"dot-segments", "/api/v2/users/../%2e%2e/orders/./42"},
	} {
		b.Run(bm.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, bm.target, nil)
			b.ReportAllocs()
			for b.Loop() {
				if _, a := p.screen.requestLine(r); a != nil {
					b.Fatal("refused")
				}
			}
		})
	}
}
