package tapproxytest_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy/tapproxytest"
)

func TestFrontProtocols(t *testing.T) {
	tests := []struct {
		name      string
		opts      []tapproxytest.Option
		scheme    string
		wantMajor int
		tls       bool
	}{
		{"plain HTTP/1.1 by default", nil, "http://", 1, false},
		{"TLS, HTTP/1.1", []tapproxytest.Option{tapproxytest.WithTLS()}, "https://", 1, true},
		{"TLS, HTTP/2 by ALPN", []tapproxytest.Option{tapproxytest.WithTLS(), tapproxytest.WithHTTP2()}, "https://", 2, true},
		{"h2c without TLS", []tapproxytest.Option{tapproxytest.WithHTTP2()}, "http://", 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tapproxytest.NewServer(t, text("ok"), tt.opts...)
			assert.True(t, strings.HasPrefix(srv.URL, tt.scheme), srv.URL)
			res, body, err := get(t, srv.Client(), srv.URL+"/p")
			require.NoError(t, err)
			assert.Equal(t, "ok", string(body))
			assert.Equal(t, tt.wantMajor, res.ProtoMajor)
			assert.Equal(t, tt.tls, res.TLS != nil)
			assert.Equal(t, tt.tls, srv.Certificate() != nil)
			assert.Equal(t, "/p", exchange(t, srv, 1).Request.URL.Path)
		})
	}
}

func TestFrontCertificateTrusted(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithTLS(), tapproxytest.WithHTTP2())
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	c := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}}
	defer c.CloseIdleConnections()
	res, body, err := get(t, c, srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, 2, res.ProtoMajor)
	assert.Equal(t, "ok", string(body))
}

func TestResetConnectionOverTLS(t *testing.T) {
	srv := tapproxytest.NewServer(t, text("ok"), tapproxytest.WithTLS(),
		tapproxytest.WithFaults(tapproxytest.ResetConnection()))
	_, err := freshClient(srv).Get(srv.URL + "/")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connection reset by peer")
}
