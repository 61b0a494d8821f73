package redact

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestValues(t *testing.T) {
	tests := []struct {
		name string
		f    func(string) string
		in   string
		want string
	}{
		{"auth with scheme", Auth, "Bearer abc", "Bearer REDACTED"},
		{"auth without scheme", Auth, "abc", "REDACTED"},
		{"cookies", Cookies, "a=1; b=2", "a=REDACTED; b=REDACTED"},
		{"set-cookie with attributes", SetCookie, "sid=xyz; Path=/; Secure", "sid=REDACTED; Path=/; Secure"},
		{"set-cookie alone", SetCookie, "sid=xyz", "sid=REDACTED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { assert.Equal(t, tt.want, tt.f(tt.in)) })
	}
}

func TestHeaders(t *testing.T) {
	req := http.Header{"Authorization": {"Basic dTpw"}, "Proxy-Authorization": {"Bearer x"}, "Cookie": {"a=1"}, "Accept": {"*/*"}}
	Request(req)
	assert.Equal(t, http.Header{"Authorization": {"Basic REDACTED"}, "Proxy-Authorization": {"Bearer REDACTED"}, "Cookie": {"a=REDACTED"}, "Accept": {"*/*"}}, req)
	res := http.Header{"Set-Cookie": {"a=1; HttpOnly", "b=2"}}
	Response(res)
	assert.Equal(t, http.Header{"Set-Cookie": {"a=REDACTED; HttpOnly", "b=REDACTED"}}, res)
}
