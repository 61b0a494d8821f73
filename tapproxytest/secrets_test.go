package tapproxytest

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/tapproxy/tapproxy/har"
)

func TestHeaderSecrets(t *testing.T) {
	h := http.Header{
		"Authorization":       {"Bearer abcdef123"},
		"Proxy-Authorization": {"bare-credential"},
		"Cookie":              {"sid=cookie-value; short=ab"},
		"Set-Cookie":          {"session=set-cookie-value; Path=/"},
		"X-Other":             {"not-a-secret"},
	}
	assert.Equal(t, []string{"set-cookie-value", "bare-credential", "cookie-value", "abcdef123"}, headerSecrets(h),
		"longest first; values under 6 bytes are not secrets")
}

func TestScrubEntry(t *testing.T) {
	e := har.Entry{
		Request: har.Request{
			URL:         "http://upstream.test/p?key=abcdef123",
			Headers:     []har.NameValue{{Name: "Authorization", Value: "Bearer abcdef123"}, {Name: "X-Echo", Value: "abcdef123"}},
			QueryString: []har.NameValue{{Name: "key", Value: "abcdef123"}},
			PostData:    &har.PostData{Text: `{"t":"abcdef123"}`},
		},
		Response: har.Response{
			Content: har.Content{Text: "you are abcdef123"},
		},
	}
	bin := har.Content{Text: "YWJjZGVmMTIz", Encoding: "base64"}
	secrets := entrySecrets(&e)
	har.Redact(&e)
	scrubEntry(&e, secrets)
	assert.Equal(t, "http://upstream.test/p?key=REDACTED", e.Request.URL)
	assert.Equal(t, "REDACTED", e.Request.Headers[1].Value)
	assert.Equal(t, "REDACTED", e.Request.QueryString[0].Value)
	assert.Equal(t, `{"t":"REDACTED"}`, e.Request.PostData.Text)
	assert.Equal(t, "you are REDACTED", e.Response.Content.Text)

	e.Response.Content = bin
	scrubEntry(&e, secrets)
	assert.Equal(t, bin, e.Response.Content, "base64 bodies are left alone")
}
