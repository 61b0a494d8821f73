package har_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/tapproxy/tapproxy/har"
)

func TestRedact(t *testing.T) {
	req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/", nil)
	req.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
	req.Header.Set("Proxy-Authorization", "token")
	req.Header.Set("Cookie", "a=1; b=2")
	req.Header.Set("X-Other", "kept")
	res := &http.Response{StatusCode: 200, Header: http.Header{
		"Set-Cookie": {"s=secret; Path=/; Secure", "t=x"},
	}}
	e := har.FromParts(&har.Parts{Request: req, Response: res})
	har.Redact(&e)

	assert.Equal(t, []string{"Basic REDACTED"}, header(e.Request.Headers, "Authorization"))
	assert.Equal(t, []string{"REDACTED"}, header(e.Request.Headers, "Proxy-Authorization"))
	assert.Equal(t, []string{"a=REDACTED; b=REDACTED"}, header(e.Request.Headers, "Cookie"))
	assert.Equal(t, []string{"kept"}, header(e.Request.Headers, "X-Other"))
	assert.Equal(t, []string{"s=REDACTED; Path=/; Secure", "t=REDACTED"}, header(e.Response.Headers, "Set-Cookie"))
	for _, c := range append(e.Request.Cookies, e.Response.Cookies...) {
		assert.Equal(t, "REDACTED", c.Value, c.Name)
	}
	assert.Equal(t, "Basic dXNlcjpwYXNz", req.Header.Get("Authorization"), "the parts are untouched")
	assert.Equal(t, "s=secret; Path=/; Secure", res.Header["Set-Cookie"][0])

	har.Redact(nil) // no panic
}
