package tapproxy_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

func TestCredentialsRedactedForObservers(t *testing.T) {
	const setCookie = "sid=s3cr3t; Path=/; HttpOnly; Secure"
	received := make(chan http.Header, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		received <- r.Header.Clone()
		w.Header().Add("Set-Cookie", setCookie)
	})
	tests := []struct {
		name                                string
		opts                                []tapproxy.Option
		wantAuth, wantCookie, wantSetCookie string
	}{
		{
			name:          "redacted by default",
			wantAuth:      "Bearer REDACTED",
			wantCookie:    "a=REDACTED; b=REDACTED",
			wantSetCookie: "sid=REDACTED; Path=/; HttpOnly; Secure",
		},
		{
			name:          "shown on opt-in",
			opts:          []tapproxy.Option{tapproxy.WithUnredactedCredentials()},
			wantAuth:      "Bearer t0ken",
			wantCookie:    "a=1; b=2",
			wantSetCookie: setCookie,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			front := newFrontend(t, up.URL, append(tt.opts, tapproxy.WithObserver(rec))...)
			req, err := http.NewRequest(http.MethodGet, front.URL, nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer t0ken")
			req.Header.Set("Cookie", "a=1; b=2")
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			res.Body.Close()

			up := <-received
			assert.Equal(t, "Bearer t0ken", up.Get("Authorization"), "the upstream gets the real credentials")
			assert.Equal(t, "a=1; b=2", up.Get("Cookie"))
			assert.Equal(t, setCookie, res.Header.Get("Set-Cookie"), "the client gets the real cookie")

			o := rec.next(t)
			assert.Equal(t, tt.wantAuth, o.OutHeader.Get("Authorization"))
			assert.Equal(t, tt.wantCookie, o.OutHeader.Get("Cookie"))
			assert.Equal(t, tt.wantSetCookie, o.Header.Get("Set-Cookie"))
		})
	}
}
