package tapproxytest_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy/har"
	"github.com/tapproxy/tapproxy/tapproxytest"
)

// harSchema is the HAR 1.2 schema vendored with package har.
var harSchema = sync.OnceValues(func() (*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	dir := filepath.Join("..", "har", "testdata", "har-schema")
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
		if err := c.AddResource("https://har-schema.test/"+filepath.Base(f), doc); err != nil {
			return nil, err
		}
	}
	return c.Compile("https://har-schema.test/har.json")
})

// validHAR checks doc against the HAR 1.2 schema and decodes it.
func validHAR(tb testing.TB, doc []byte) har.HAR {
	tb.Helper()
	s, err := harSchema()
	require.NoError(tb, err)
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	require.NoError(tb, err)
	require.NoError(tb, s.Validate(v), "%s", doc)
	assert.NotContains(tb, string(doc), "null")
	var h har.HAR
	require.NoError(tb, json.Unmarshal(doc, &h))
	return h
}

func values(pairs []har.NameValue, name string) []string {
	var out []string
	for _, p := range pairs {
		if strings.EqualFold(p.Name, name) {
			out = append(out, p.Value)
		}
	}
	return out
}

func harUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/gzip":
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			io.WriteString(zw, "decoded text")
			zw.Close()
		default:
			body, _ := io.ReadAll(r.Body)
			w.Header().Add("Set-Cookie", "sid=s3cret; HttpOnly")
			w.Header().Set("Trailer", "X-Sum")
			w.Write(body)
			w.Header().Set("X-Sum", "42")
		}
	})
}

// TestWriteHAR: what a test recorded exports as a valid HAR document, with
// credentials redacted by default while the recording keeps them.
func TestWriteHAR(t *testing.T) {
	srv := tapproxytest.NewServer(t, harUpstream(),
		tapproxytest.WithFaults(tapproxytest.Respond(http.StatusServiceUnavailable, "busy").On(tapproxytest.Path("/busy")).Named("busy")))

	req, err := http.NewRequest(http.MethodPost, srv.URL+"/echo?x=1", strings.NewReader(`{"a":1}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer t0ken")
	req.Header.Set("Cookie", "c=v")
	res, err := srv.Client().Do(req)
	require.NoError(t, err)
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	gz, err := http.NewRequest(http.MethodGet, srv.URL+"/gzip", nil)
	require.NoError(t, err)
	gz.Header.Set("Accept-Encoding", "gzip")
	res, err = srv.Client().Do(gz)
	require.NoError(t, err)
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	_, _, err = get(t, srv.Client(), srv.URL+"/busy")
	require.NoError(t, err)
	exchange(t, srv, 3)

	var out bytes.Buffer
	require.NoError(t, srv.Recorder.WriteHAR(&out))
	h := validHAR(t, out.Bytes())
	require.Len(t, h.Log.Entries, 3)

	post := h.Log.Entries[0]
	assert.Equal(t, http.MethodPost, post.Request.Method)
	assert.True(t, strings.HasPrefix(post.Request.URL, srv.UpstreamURL+"/echo?x=1"), post.Request.URL)
	require.NotNil(t, post.Request.PostData)
	assert.Equal(t, `{"a":1}`, post.Request.PostData.Text)
	assert.Equal(t, `{"a":1}`, post.Response.Content.Text)
	assert.Equal(t, []string{"Bearer REDACTED"}, values(post.Request.Headers, "Authorization"))
	assert.Equal(t, []string{"c=REDACTED"}, values(post.Request.Headers, "Cookie"))
	assert.Equal(t, []har.Cookie{{Name: "sid", Value: "REDACTED", HTTPOnly: true}}, post.Response.Cookies)
	assert.Equal(t, []har.NameValue{{Name: "X-Sum", Value: "42"}}, post.Response.Trailers)

	zipped := h.Log.Entries[1]
	assert.Equal(t, "decoded text", zipped.Response.Content.Text)
	assert.EqualValues(t, len("decoded text"), zipped.Response.Content.Size)

	busy := h.Log.Entries[2]
	assert.Equal(t, http.StatusServiceUnavailable, busy.Response.Status)
	assert.Equal(t, "busy", busy.Response.Content.Text)
	assert.Contains(t, busy.Comment, "busy", "the fault is named")

	rec := exchange(t, srv, 1)
	assert.Equal(t, "Bearer t0ken", rec.Request.Header.Get("Authorization"), "the recording keeps credentials")
}

func TestWriteHARUnredacted(t *testing.T) {
	srv := tapproxytest.NewServer(t, harUpstream(), tapproxytest.WithUnredactedHAR())
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer t0ken")
	res, err := srv.Client().Do(req)
	require.NoError(t, err)
	res.Body.Close()
	exchange(t, srv, 1)

	var out bytes.Buffer
	require.NoError(t, srv.Recorder.WriteHAR(&out))
	h := validHAR(t, out.Bytes())
	require.Len(t, h.Log.Entries, 1)
	assert.Equal(t, []string{"Bearer t0ken"}, values(h.Log.Entries[0].Request.Headers, "Authorization"))
	assert.Equal(t, "s3cret", h.Log.Entries[0].Response.Cookies[0].Value)
}

// TestWriteHARFailures: an exchange cut short keeps the status the client
// got, with _error saying why and how many bytes it got first.
func TestWriteHARFailures(t *testing.T) {
	srv := tapproxytest.NewServer(t, harUpstream(),
		tapproxytest.WithFaults(tapproxytest.Truncate(3).Named("cut")))
	res, err := srv.Client().Post(srv.URL+"/echo", "text/plain", strings.NewReader("hello world"))
	require.NoError(t, err)
	_, err = io.ReadAll(res.Body)
	res.Body.Close()
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	exchange(t, srv, 1)

	var out bytes.Buffer
	require.NoError(t, srv.Recorder.WriteHAR(&out))
	h := validHAR(t, out.Bytes())
	require.Len(t, h.Log.Entries, 1)
	e := h.Log.Entries[0]
	assert.Equal(t, http.StatusOK, e.Response.Status)
	require.NotNil(t, e.Error)
	assert.Equal(t, har.KindUpstreamReset, e.Error.Kind)
	assert.EqualValues(t, 3, e.Error.BytesDelivered)
	assert.Equal(t, "hel", e.Response.Content.Text)
	assert.Equal(t, "faults: cut", e.Comment)
}

// TestHAROnFailure: a failed test leaves dir/<name>.har behind, in a
// directory created for it, and logs its path; a passing test leaves none.
func TestHAROnFailure(t *testing.T) {
	tests := []struct {
		name   string
		tbName string
		fail   bool
		file   string
	}{
		{"failed", "TestCheckout/pays with a card#01", true, "TestCheckout_pays_with_a_card_01.har"},
		{"passed", "TestCheckout/ok", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "artifacts", "har")
			tb := &fakeTB{name: tt.tbName}
			srv := tapproxytest.NewServer(tb, harUpstream(), tapproxytest.WithHAROnFailure(dir))
			req, err := http.NewRequest(http.MethodGet, srv.URL+"/pay", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer t0ken")
			res, err := srv.Client().Do(req)
			require.NoError(t, err)
			res.Body.Close()
			exchange(t, srv, 1)
			if tt.fail {
				tb.fail()
			}
			tb.finish()

			if tt.file == "" {
				_, err := os.Stat(dir)
				assert.ErrorIs(t, err, os.ErrNotExist, "no file, and no directory, for a passing test")
				return
			}
			path := filepath.Join(dir, tt.file)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			h := validHAR(t, b)
			require.Len(t, h.Log.Entries, 1)
			assert.Equal(t, []string{"Bearer REDACTED"}, values(h.Log.Entries[0].Request.Headers, "Authorization"),
				"files redact credentials")
			logs := strings.Join(tb.allLogs(), "\n")
			assert.Contains(t, logs, path)
		})
	}
}

// TestHAROnFailureUnwritable: a directory that cannot be made is logged,
// and does not fail anything else.
func TestHAROnFailureUnwritable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	tb := &fakeTB{name: "TestX"}
	srv := tapproxytest.NewServer(tb, harUpstream(), tapproxytest.WithHAROnFailure(filepath.Join(file, "sub")))
	_, _, err := get(t, srv.Client(), srv.URL+"/")
	require.NoError(t, err)
	tb.fail()
	tb.finish()
	assert.Contains(t, strings.Join(tb.allLogs(), "\n"), "tapproxytest: writing the recorded exchanges")
}
