package har_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait in these tests. It is generous: tests
// assert order and outcome, never speed.
const waitTimeout = 10 * time.Second

// newUpstream starts a fake upstream on loopback.
func newUpstream(tb testing.TB, h http.HandlerFunc) *httptest.Server {
	tb.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	srv.Start()
	tb.Cleanup(srv.Close)
	return srv
}

// newFront starts a proxy to upstream on loopback, with a quiet logger.
func newFront(tb testing.TB, upstream string, opts ...tapproxy.Option) *httptest.Server {
	tb.Helper()
	u, err := url.Parse(upstream)
	require.NoError(tb, err)
	opts = append([]tapproxy.Option{tapproxy.WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	p, err := tapproxy.New(u, opts...)
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = p.Close() })
	srv := httptest.NewUnstartedServer(p)
	srv.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	srv.Start()
	tb.Cleanup(srv.Close)
	return srv
}

// through runs do, which makes one exchange, against a proxy in front of h
// that records into a new Recorder, waits for the entry, closes the proxy,
// and returns what was recorded.
func through(tb testing.TB, h http.HandlerFunc, do func(front *httptest.Server), opts ...tapproxy.Option) *har.HAR {
	tb.Helper()
	up := newUpstream(tb, h)
	rec := har.NewRecorder()
	front := newFront(tb, up.URL, append([]tapproxy.Option{tapproxy.WithObserver(rec)}, opts...)...)
	do(front)
	waitLen(tb, rec, 1) // an upgraded connection is observed once it closes
	front.CloseClientConnections()
	front.Close()
	return rec.HAR()
}

// waitLen waits until rec holds n entries.
func waitLen(tb testing.TB, rec *har.Recorder, n int) {
	tb.Helper()
	require.Eventually(tb, func() bool { return rec.Len() >= n }, waitTimeout, time.Millisecond,
		"waiting for %d entries", n)
}

// get sends a GET through c and returns the response with its body read.
func get(tb testing.TB, c *http.Client, u string) (*http.Response, []byte) {
	tb.Helper()
	res, err := c.Get(u)
	require.NoError(tb, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(tb, err)
	return res, body
}

// schema is the HAR 1.2 schema of the npm package har-schema 2.0.0,
// vendored under testdata with its licence, compiled with format assertions.
var schema = sync.OnceValues(func() (*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	dir := filepath.Join("testdata", "har-schema")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if filepath.Base(f) == "package.json" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		// The files name each other relatively ("log.json#"), so they
		// all live under one base.
		if err := c.AddResource("https://har-schema.test/"+filepath.Base(f), doc); err != nil {
			return nil, err
		}
	}
	return c.Compile("https://har-schema.test/har.json")
})

// validate checks doc against the HAR 1.2 schema and the importers'
// invariants, and returns it decoded.
func validate(tb testing.TB, doc []byte) *har.HAR {
	tb.Helper()
	s, err := schema()
	require.NoError(tb, err)
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	require.NoError(tb, err, "not JSON: %s", doc)
	require.NoError(tb, s.Validate(v), "%s", doc)
	var generic any
	require.NoError(tb, json.Unmarshal(doc, &generic))
	checkInvariants(tb, generic)

	var h har.HAR
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	require.NoError(tb, dec.Decode(&h))
	return &h
}

// marshal renders h as the Recorder's handler does, and validates it.
func marshal(tb testing.TB, h *har.HAR) (*har.HAR, []byte) {
	tb.Helper()
	b, err := json.Marshal(h)
	require.NoError(tb, err)
	return validate(tb, b), b
}

var millis = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$`)

// checkInvariants asserts what Chrome's and Firefox's importers rely on, on
// the document as generic JSON: no null anywhere, lists that are lists,
// numbers that are numbers, and timings that add up.
func checkInvariants(tb testing.TB, doc any) {
	tb.Helper()
	noNulls(tb, "$", doc)
	log := doc.(map[string]any)["log"].(map[string]any)
	assert.IsType(tb, []any{}, log["pages"], "pages")
	for i, raw := range log["entries"].([]any) {
		e := raw.(map[string]any)
		where := fmt.Sprintf("entry %d", i)
		assert.IsType(tb, map[string]any{}, e["cache"], where)
		started, ok := e["startedDateTime"].(string)
		require.True(tb, ok, where)
		assert.Regexp(tb, millis, started, where)
		_, err := time.Parse(time.RFC3339Nano, started)
		assert.NoError(tb, err, where)

		req := e["request"].(map[string]any)
		u, err := url.Parse(req["url"].(string))
		require.NoError(tb, err, where)
		assert.True(tb, u.IsAbs() && u.Host != "", "%s: url %q is not absolute", where, u)
		for _, k := range []string{"headers", "cookies", "queryString"} {
			assert.IsType(tb, []any{}, req[k], "%s: request.%s", where, k)
		}
		res := e["response"].(map[string]any)
		for _, k := range []string{"headers", "cookies"} {
			assert.IsType(tb, []any{}, res[k], "%s: response.%s", where, k)
		}
		if pd, ok := req["postData"].(map[string]any); ok {
			assert.IsType(tb, "", pd["text"], "%s: postData.text", where)
		}
		content := res["content"].(map[string]any)
		for _, n := range []any{res["status"], res["headersSize"], res["bodySize"], req["headersSize"], req["bodySize"], content["size"], e["time"]} {
			assert.IsType(tb, float64(0), n, where)
		}
		if ip, ok := e["serverIPAddress"]; ok {
			_, err := netip.ParseAddr(ip.(string))
			assert.NoError(tb, err, where)
		}

		timings := e["timings"].(map[string]any)
		sum := 0.0
		for _, k := range []string{"blocked", "dns", "connect", "send", "wait", "receive"} {
			v, ok := timings[k].(float64)
			require.True(tb, ok, "%s: timings.%s is %v", where, k, timings[k])
			if v != -1 {
				sum += v
			}
		}
		for _, k := range []string{"send", "wait", "receive"} {
			assert.GreaterOrEqual(tb, timings[k].(float64), 0.0, "%s: timings.%s", where, k)
		}
		assert.InDelta(tb, sum, e["time"].(float64), 1e-9, "%s: time is the sum of the timings", where)
		assert.False(tb, math.IsNaN(sum))
	}
}

func noNulls(tb testing.TB, path string, v any) {
	tb.Helper()
	switch v := v.(type) {
	case nil:
		tb.Errorf("null at %s", path)
	case map[string]any:
		for k, x := range v {
			noNulls(tb, path+"."+k, x)
		}
	case []any:
		for _, x := range v {
			noNulls(tb, path+"[]", x)
		}
	}
}

// header returns the values of the pairs named name, in order.
func header(pairs []har.NameValue, name string) []string {
	var out []string
	for _, p := range pairs {
		if strings.EqualFold(p.Name, name) {
			out = append(out, p.Value)
		}
	}
	return out
}
