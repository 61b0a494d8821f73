package tapproxy_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

func TestProxyRelaysAndObserves(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("hello " + r.URL.Path))
	})
	rec := newRecorder()
	front := newFrontend(t, up.URL, tapproxy.WithObserver(rec))

	res, body := get(t, front.Client(), front.URL+"/x")
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "hello /x", string(body))

	o := rec.next(t)
	assert.Equal(t, "GET", o.Method)
	assert.Equal(t, "/x", o.Path)
	assert.Equal(t, http.StatusOK, o.Status)
	assert.Equal(t, "hello /x", string(o.Body))
	assert.EqualValues(t, len("hello /x"), o.BodyBytes)
	assert.False(t, o.Truncated)
	assert.NoError(t, o.Err)
	assert.Positive(t, o.TimeToHeaders)
	assert.GreaterOrEqual(t, o.Duration, o.TimeToHeaders)
	require.Equal(t, 1, rec.count())
	_ = strings.Repeat
}
