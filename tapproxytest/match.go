package tapproxytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/tapproxy/tapproxy/internal/redact"
)

// requestKey is what a cassette matches a request by: the method, the
// path, the query with its keys sorted and the order of the values within
// a key kept, the body (canonical when it is JSON), and the headers that
// MatchHeaders names. Host and port take no part.
type requestKey struct {
	method, path, query, body, headers string
}

// String joins the fields into the map key. NUL cannot occur in a method,
// path or header line, so distinct keys stay distinct.
func (k requestKey) String() string {
	return k.method + "\x00" + k.path + "\x00" + k.query + "\x00" + k.headers + "\x00" + k.body
}

// fields lists the key's fields by name, for miss reports.
func (k requestKey) fields() [5][2]string {
	return [5][2]string{
		{"method", k.method}, {"path", k.path}, {"query", k.query},
		{"headers", k.headers}, {"body", k.body},
	}
}

// keyer computes keys as a cassette's options ask.
type keyer struct {
	headers   []string // canonical names
	ignore    map[string]bool
	normalize []func(*http.Request)
}

// key computes the key of a request with the given parts. The request given
// to the Normalize hooks is a copy: they change only the key.
func (kr *keyer) key(method string, u *url.URL, h http.Header, body []byte) requestKey {
	uc := url.URL{}
	if u != nil {
		uc = *u
	}
	req := &http.Request{
		Method: method, URL: &uc, Header: h.Clone(), Host: uc.Host,
		Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
	}
	if req.Header == nil {
		req.Header = http.Header{}
	}
	if len(kr.normalize) > 0 {
		for _, f := range kr.normalize {
			f(req)
		}
		if req.Body != nil {
			body, _ = io.ReadAll(req.Body)
		} else {
			body = nil
		}
	}
	if req.URL == nil {
		req.URL = &url.URL{}
	}
	// Scrubbed as the file is, so that a live request with other
	// credentials matches.
	secrets := headerSecrets(req.Header)
	k := requestKey{
		method: req.Method,
		path:   scrub(req.URL.EscapedPath(), secrets),
		query:  scrub(kr.query(req.URL.RawQuery), secrets),
		body:   canonicalBody(body),
	}
	if utf8.Valid(body) {
		// Only text bodies are scrubbed in the file.
		k.body = scrub(k.body, secrets)
	}
	if len(kr.headers) > 0 {
		// Credentials as the file has them, so that a key that includes
		// them matches a recording whatever the live token is.
		redact.Request(req.Header)
		var b strings.Builder
		for _, name := range kr.headers {
			for _, v := range req.Header.Values(name) {
				if b.Len() > 0 {
					b.WriteString("; ")
				}
				b.WriteString(name + ": " + v)
			}
		}
		k.headers = b.String()
	}
	return k
}

// query sorts the query by key, keeping the order of the values of each key,
// and leaves out the keys IgnoreQuery names.
func (kr *keyer) query(raw string) string {
	if raw == "" {
		return ""
	}
	type kv struct{ k, v string }
	var pairs []kv
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err == nil {
			k = uk
		}
		if uv, err := url.QueryUnescape(v); err == nil {
			v = uv
		}
		if kr.ignore[k] {
			continue
		}
		pairs = append(pairs, kv{k, v})
	}
	// A stable sort keeps the values of one key in their order.
	sort.SliceStable(pairs, func(i, j int) bool { return pairs[i].k < pairs[j].k })
	q := make([]string, len(pairs))
	for i, p := range pairs {
		q[i] = url.QueryEscape(p.k) + "=" + url.QueryEscape(p.v)
	}
	return strings.Join(q, "&")
}

// canonicalBody returns a JSON body compacted with its object keys sorted,
// and any other body as it is.
func canonicalBody(body []byte) string {
	if len(body) == 0 || !json.Valid(body) {
		return string(body)
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber() // keep numbers as written
	var v any
	if err := d.Decode(&v); err != nil {
		return string(body)
	}
	out, err := json.Marshal(v) // sorts the keys of objects
	if err != nil {
		return string(body)
	}
	return string(out)
}

// missReport describes a request that no recorded entry answered, and the
// nearest entries, field by field.
func missReport(path string, k requestKey, keys []requestKey, used []bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "tapproxytest: replay miss in cassette %s: no recorded entry left for\n", path)
	for _, f := range k.fields() {
		fmt.Fprintf(&b, "\t%-8s %s\n", f[0]+":", show(f[1]))
	}
	if len(keys) == 0 {
		b.WriteString("the cassette has no entries")
		return b.String()
	}
	type near struct{ i, diff int }
	nearest := make([]near, len(keys))
	for i, rk := range keys {
		d := 0
		for j, f := range rk.fields() {
			if f[1] != k.fields()[j][1] {
				d++
			}
		}
		nearest[i] = near{i, d}
	}
	slices.SortStableFunc(nearest, func(a, b near) int { return a.diff - b.diff })
	const shown = 3
	fmt.Fprintf(&b, "nearest recorded entries (of %d):", len(keys))
	for _, n := range nearest[:min(shown, len(nearest))] {
		rk := keys[n.i]
		state := "unused"
		if used[n.i] {
			state = "already replayed"
		}
		fmt.Fprintf(&b, "\n\tentry %d (%s):", n.i, state)
		for j, f := range rk.fields() {
			if f[1] == k.fields()[j][1] {
				fmt.Fprintf(&b, "\n\t\t%-8s same", f[0]+":")
			} else {
				fmt.Fprintf(&b, "\n\t\t%-8s %s, not %s", f[0]+":", show(f[1]), show(k.fields()[j][1]))
			}
		}
	}
	return b.String()
}

// show quotes a key field, cut short when long.
func show(s string) string {
	const max = 200
	if len(s) > max {
		return fmt.Sprintf("%q... (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}
