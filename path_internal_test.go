package tapproxy

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRemoveDotSegments(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"/", "/", true},
		{"/./", "/", true},
		{"/.", "/", true},
		{"/../", "", false},
		{"/..", "", false},
		{"/a/..", "/", true},
		{"/a/b/..", "/a/", true},
		{"/a/b/.", "/a/b/", true},
		{"/a//b/../c", "/a//c", true},
		{"/a/./b", "/a/b", true},
		{"/a/%2e%2E/b", "/b", true},
		{"/a/.%2e/b", "/b", true},
		{"/a/%2e/b", "/a/b", true},
		{"/api/..%2fsecret", "/secret", true},
		{"/..%2fsecret", "", false},
		{"/api%2F..%2Fsecret", "/secret", true},
		{"/x/a%2f..%2fb", "/x/b", true},
		{"/a/..%5c..%5cb", "", false},
		{"/a/b%2fc", "/a/b%2fc", true},
		{"/%7Eu/x/../%41", "/%7Eu/%41", true},
		{"/a/...", "/a/...", true},
		{"/a/..%2f", "/", true},
		{"/a%2f..", "/", true},
		{"/a/b/../../..", "", false},
		{"/a\\..\\b", "/b", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := removeDotSegments(tt.in)
			assert.Equal(t, tt.ok, ok)
			if tt.ok {
				assert.Equal(t, tt.want, got)
			}
		})
	}
}

// TestPathFastPathAllocs checks that a path without dot-segments costs no
// allocation: it is only scanned.
func TestPathFastPathAllocs(t *testing.T) {
	p, err := New(&url.URL{Scheme: "http", Host: "upstream", Path: "/v1"})
	require.NoError(t, err)
	for _, target := range []string{"/", "/api/users/42", "/a.b/..c/...", "/%7Euser/%41", "/a/b%2Fc", "//x//"} {
		t.Run(target, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, target, nil)
			allocs := testing.AllocsPerRun(100, func() {
				if out, a := p.screen.requestLine(r); out != r || a != nil {
					t.Fatalf("screen(%q) changed the request or answered it", target)
				}
			})
			assert.Zero(t, allocs)
		})
	}
}

// resolveDecoded is RFC 3986 section 5.2.4 as written, on a decoded path,
// except that it reports a climb above the root instead of clamping it.
func resolveDecoded(in string) (string, bool) {
	var out []string // segments, each with its leading '/'
	for in != "" {
		switch {
		case strings.HasPrefix(in, "/./") || in == "/.":
			in = "/" + strings.TrimPrefix(strings.TrimPrefix(in, "/."), "/")
		case strings.HasPrefix(in, "/../") || in == "/..":
			if len(out) == 0 {
				return "", false
			}
			out = out[:len(out)-1]
			in = "/" + strings.TrimPrefix(strings.TrimPrefix(in, "/.."), "/")
		default:
			end := strings.IndexByte(in[1:], '/')
			if end < 0 {
				end = len(in) - 1
			}
			out = append(out, in[:end+1])
			in = in[end+1:]
		}
	}
	return strings.Join(out, ""), true
}

// decodedView is what an upstream that decodes escaped slashes and takes
// backslashes for slashes makes of an escaped path.
func decodedView(tb testing.TB, esc string) string {
	tb.Helper()
	p, err := url.PathUnescape(esc)
	if err != nil {
		tb.Fatalf("unescaping %q: %v", esc, err)
	}
	return strings.ReplaceAll(p, `\`, "/")
}

// segments splits an escaped path at its separators, escaped ones too.
func segments(esc string) []string {
	var segs []string
	for i := 0; i < len(esc); {
		n := separatorLen(esc[i:])
		j := i + n
		for j < len(esc) && separatorLen(esc[j:]) == 0 {
			j++
		}
		segs = append(segs, esc[i+n:j])
		i = j
	}
	return segs
}

// FuzzNormalizePath checks that resolving dot-segments agrees with RFC
// 3986 on the decoded form, is idempotent, never yields a path that leads
// outside a base path (whatever leading segments a prefix strips, and
// whether or not the upstream decodes escaped slashes), and keeps the
// escaping of every byte it does not remove.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{
		"/", "/./", "/../", "/..", "/a/b/..", "/a//b/../c", "/a/%2e%2E/b", "/a/.%2e/b",
		"/api/..%2fsecret", "/api%2F..%2Fsecret", "/a/..%5c..%5cb", "/%7Eu/x/../%41",
		"/a%5C..%5Cb", "/x/a%2f..%2fb", "/a/%252e%252e/b", "//..",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, esc string) {
		if !strings.HasPrefix(esc, "/") {
			return
		}
		// Only what URL.EscapedPath can return reaches the resolution.
		dec, err := url.PathUnescape(esc)
		if err != nil || (&url.URL{Path: dec, RawPath: esc}).EscapedPath() != esc {
			return
		}
		got, ok := removeDotSegments(esc)
		want, wantOK := resolveDecoded(decodedView(t, esc))
		if ok != wantOK {
			t.Fatalf("removeDotSegments(%q) ok = %v; RFC 3986 on %q says %v", esc, ok, decodedView(t, esc), wantOK)
		}
		if !ok {
			return
		}
		if view := decodedView(t, got); view != want {
			t.Fatalf("removeDotSegments(%q) = %q, decoded %q; want %q", esc, got, view, want)
		}
		if again, ok := removeDotSegments(got); !ok || again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", esc, got, again, ok)
		}
		// Joined to a base after stripping any number of leading
		// segments, it stays under the base.
		for i := 0; i < len(got); i++ {
			if got[i] != '/' {
				continue
			}
			joined, ok := resolveDecoded("/base" + decodedView(t, got[i:]))
			if !ok || joined != "/base" && !strings.HasPrefix(joined, "/base/") {
				t.Fatalf("%q -> %q: its tail %q leads outside /base to %q", esc, got, got[i:], joined)
			}
		}
		// The kept segments are the input's, escaping and all, in order.
		kept, in := segments(got), segments(esc)
		j := 0
		for _, s := range kept {
			for j < len(in) && (in[j] != s) {
				j++
			}
			if j == len(in) && s != "" {
				t.Fatalf("%q -> %q: segment %q is not one of the input's, in order", esc, got, s)
			}
			j++
		}
		if hasDot := func() bool {
			for _, s := range in {
				if dots(s) > 0 {
					return true
				}
			}
			return false
		}(); !hasDot && got != esc {
			t.Fatalf("%q has no dot-segment but became %q", esc, got)
		}
		var u url.URL
		setEscapedPath(&u, got)
		if u.EscapedPath() != got {
			t.Fatalf("the URL escapes %q as %q", got, u.EscapedPath())
		}
	})
}
