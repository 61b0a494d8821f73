package tapproxytest

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestKeyQuery(t *testing.T) {
	kr := &keyer{ignore: map[string]bool{"ts": true}}
	tests := []struct{ name, raw, want string }{
		{"empty", "", ""},
		{"keys sorted", "b=2&a=1", "a=1&b=2"},
		{"values of a key keep their order", "a=3&b=2&a=1", "a=3&a=1&b=2"},
		{"ignored keys left out", "ts=123&a=1", "a=1"},
		{"escapes normalised", "q=a%20b&p=x+y", "p=x+y&q=a+b"},
		{"empty parts skipped", "a=1&&b=2&", "a=1&b=2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, kr.query(tt.raw))
		})
	}
}

func TestCanonicalBody(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{"object keys sorted, space dropped", "{ \"b\": 1,\n \"a\": [2, 1] }", `{"a":[2,1],"b":1}`},
		{"numbers as written", `{"n": 1.50}`, `{"n":1.50}`},
		{"not JSON", "a=1&b=2", "a=1&b=2"},
		{"empty", "", ""},
		{"two JSON values are not one", `{} {}`, `{} {}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, canonicalBody([]byte(tt.body)))
		})
	}
}

func TestKeyIgnoresHostAndNamesHeaders(t *testing.T) {
	kr := &keyer{headers: []string{"Accept", "Authorization"}}
	key := func(rawURL string, h http.Header) requestKey {
		u, err := url.Parse(rawURL)
		require.NoError(t, err)
		return kr.key("GET", u, h, nil)
	}
	a := key("http://127.0.0.1:1234/x?q=1", http.Header{"Accept": {"text/plain"}, "Authorization": {"Bearer one-token"}, "User-Agent": {"a"}})
	b := key("http://127.0.0.1:5678/x?q=1", http.Header{"Accept": {"text/plain"}, "Authorization": {"Bearer two-token"}, "User-Agent": {"b"}})
	assert.Equal(t, a, b)
	assert.Equal(t, "Accept: text/plain; Authorization: Bearer REDACTED", a.headers)
	c := key("http://h/x?q=1", http.Header{"Accept": {"application/json"}})
	assert.NotEqual(t, a, c)
}

func TestKeyNormalize(t *testing.T) {
	kr := &keyer{normalize: []func(*http.Request){func(r *http.Request) {
		q := r.URL.Query()
		q.Del("nonce")
		r.URL.RawQuery = q.Encode()
		r.Header.Del("X-Trace")
	}}}
	u, _ := url.Parse("http://h/p?nonce=7&a=1")
	h := http.Header{"X-Trace": {"t"}}
	k := kr.key("GET", u, h, []byte("body"))
	assert.Equal(t, "a=1", k.query)
	assert.Equal(t, "body", k.body, "the body is read back after the hooks")
	assert.Equal(t, "nonce=7&a=1", u.RawQuery, "the hooks get a copy")
	assert.Equal(t, "t", h.Get("X-Trace"))
}

func TestMissReport(t *testing.T) {
	k := requestKey{method: "GET", path: "/b", query: "a=1"}
	keys := []requestKey{
		{method: "POST", path: "/c", query: "z=1"},
		{method: "GET", path: "/b", query: "a=2"},
		{method: "GET", path: "/b", query: "a=1"},
	}
	report := missReport("x.har", k, keys, []bool{false, false, true})
	lines := strings.Split(report, "\n")
	assert.Equal(t, "tapproxytest: replay miss in cassette x.har: no recorded entry left for", lines[0])
	assert.Contains(t, report, "nearest recorded entries (of 3):")
	// Nearest first: the used twin, then one field off, then three.
	assert.Less(t, strings.Index(report, "entry 2 (already replayed)"), strings.Index(report, "entry 1 (unused)"))
	assert.Less(t, strings.Index(report, "entry 1 (unused)"), strings.Index(report, "entry 0 (unused)"))
	assert.Contains(t, report, `query:   "a=2", not "a=1"`)

	assert.Contains(t, missReport("x.har", k, nil, nil), "the cassette has no entries")
}
