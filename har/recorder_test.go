package har_test

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/har"
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// entry builds an entry numbered i with a body of size bytes.
func entry(i, size int) har.Entry {
	req := httptest.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1/%d", i), nil)
	return har.FromParts(&har.Parts{
		Request:  req,
		Response: &http.Response{StatusCode: 200, Header: http.Header{}},
		Body:     []byte(strings.Repeat("x", size)), BodyBytes: int64(size),
		Start: epoch.Add(time.Duration(i) * time.Second),
	})
}

func paths(h *har.HAR) []string {
	var out []string
	for _, e := range h.Log.Entries {
		out = append(out, e.Request.URL[len("http://127.0.0.1"):])
	}
	return out
}

// TestRecorderBounds: the recorder keeps within its entry and byte bounds,
// dropping the oldest first.
func TestRecorderBounds(t *testing.T) {
	tests := []struct {
		name  string
		opts  []har.RecorderOption
		sizes []int
		want  []string
	}{
		{"under both bounds", []har.RecorderOption{har.WithMaxEntries(5), har.WithMaxBytes(100)},
			[]int{10, 10, 10}, []string{"/0", "/1", "/2"}},
		{"entry bound drops the oldest", []har.RecorderOption{har.WithMaxEntries(3)},
			[]int{1, 1, 1, 1, 1}, []string{"/2", "/3", "/4"}},
		{"byte bound drops the oldest until it fits", []har.RecorderOption{har.WithMaxBytes(100)},
			[]int{40, 40, 10, 60}, []string{"/2", "/3"}},
		{"wrapping many times", []har.RecorderOption{har.WithMaxEntries(4), har.WithMaxBytes(35)},
			[]int{10, 10, 10, 10, 10, 30, 1, 1, 1, 1, 1}, []string{"/7", "/8", "/9", "/10"}},
		{"defaults for bad values", []har.RecorderOption{har.WithMaxEntries(0), har.WithMaxBytes(-1), nil},
			[]int{1, 1}, []string{"/0", "/1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := har.NewRecorder(tt.opts...)
			for i, size := range tt.sizes {
				rec.Add(entry(i, size))
			}
			h := rec.HAR()
			assert.Equal(t, tt.want, paths(h))
			assert.Equal(t, len(tt.want), rec.Len())
			marshal(t, h)
		})
	}
}

// TestRecorderEntryBound fills a recorder through a real proxy, past its
// entry bound.
func TestRecorderEntryBound(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) })
	rec := har.NewRecorder(har.WithMaxEntries(3))
	front := newFront(t, up.URL, tapproxy.WithObserver(rec))
	for i := range 7 {
		get(t, front.Client(), fmt.Sprintf("%s/%d", front.URL, i))
		waitLen(t, rec, min(i+1, 3))
	}
	front.Close()
	h, _ := marshal(t, rec.HAR())
	var got []string
	for _, e := range h.Log.Entries {
		got = append(got, e.Response.Content.Text)
	}
	assert.Equal(t, []string{"/4", "/5", "/6"}, got)
}

// TestRecorderHugeEntry: an entry whose text alone is over the byte bound is
// kept without its text, so its headers and timings still show.
func TestRecorderHugeEntry(t *testing.T) {
	rec := har.NewRecorder(har.WithMaxBytes(50))
	rec.Add(entry(0, 10))
	rec.Add(entry(1, 51))
	h, _ := marshal(t, rec.HAR())
	require.Len(t, h.Log.Entries, 2, "the small entry fits beside the emptied one")
	c := h.Log.Entries[1].Response.Content
	assert.Empty(t, c.Text)
	assert.True(t, c.Truncated)
	assert.Contains(t, c.Comment, "50 bytes")
	assert.EqualValues(t, 51, c.Size, "the real size stays")

	zero := har.NewRecorder(har.WithMaxBytes(0))
	zero.Add(entry(0, 1))
	assert.Empty(t, zero.HAR().Log.Entries[0].Response.Content.Text, "zero keeps no body text")
}

// TestRecorderSorted: the snapshot is sorted by startedDateTime, whatever
// the order the exchanges ended in.
func TestRecorderSorted(t *testing.T) {
	rec := har.NewRecorder()
	for _, i := range []int{3, 1, 2, 0} {
		rec.Add(entry(i, 1))
	}
	assert.Equal(t, []string{"/0", "/1", "/2", "/3"}, paths(rec.HAR()))
}

func TestRecorderConcurrent(t *testing.T) {
	rec := har.NewRecorder(har.WithMaxEntries(50), har.WithMaxBytes(1000))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				rec.Add(entry(g*100+i, i%40))
				if i%10 == 0 {
					_ = rec.HAR()
				}
			}
		})
	}
	wg.Wait()
	h := rec.HAR()
	assert.LessOrEqual(t, len(h.Log.Entries), 50)
	total := 0
	for _, e := range h.Log.Entries {
		total += len(e.Response.Content.Text)
	}
	assert.LessOrEqual(t, total, 1000)
}

// TestHandler: GET returns the recording as a download and DELETE clears
// it, both through a real client.
func TestHandler(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	rec := har.NewRecorder()
	front := newFront(t, up.URL, tapproxy.WithObserver(rec))
	get(t, front.Client(), front.URL+"/one")
	get(t, front.Client(), front.URL+"/two")
	waitLen(t, rec, 2)

	srv := httptest.NewServer(rec.Handler())
	t.Cleanup(srv.Close)
	client := srv.Client()

	res, body := get(t, client, srv.URL)
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "application/json", res.Header.Get("Content-Type"))
	disp, params, err := mime.ParseMediaType(res.Header.Get("Content-Disposition"))
	require.NoError(t, err)
	assert.Equal(t, "attachment", disp)
	assert.Regexp(t, `^tapproxy-\d{8}T\d{6}Z\.har$`, params["filename"])
	h := validate(t, body)
	require.Len(t, h.Log.Entries, 2)
	assert.Equal(t, "hello", h.Log.Entries[0].Response.Content.Text)

	req, err := http.NewRequest(http.MethodDelete, srv.URL, nil)
	require.NoError(t, err)
	res, err = client.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusNoContent, res.StatusCode)
	assert.Equal(t, 0, rec.Len())

	res, body = get(t, client, srv.URL)
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Empty(t, validate(t, body).Log.Entries, "cleared")
	var raw map[string]map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(body, &raw))
	assert.Equal(t, "[]", string(raw["log"]["entries"]))

	res, err = client.Post(srv.URL, "text/plain", nil)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)
	assert.Equal(t, "GET, HEAD, DELETE", res.Header.Get("Allow"))

	front.Close()
}

func TestRecorderReset(t *testing.T) {
	rec := har.NewRecorder(har.WithMaxEntries(2))
	rec.Add(entry(0, 1))
	rec.Add(entry(1, 1))
	rec.Add(entry(2, 1))
	rec.Reset()
	assert.Equal(t, 0, rec.Len())
	rec.Add(entry(3, 1))
	assert.Equal(t, []string{"/3"}, paths(rec.HAR()))
}
