//go:build !unix

package tapproxy_test

import (
	"net"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
)

// deadURL returns the URL of a loopback port that nothing listens on: a
// dial there is refused.
func deadURL(tb testing.TB) *url.URL {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	addr := l.Addr().String()
	require.NoError(tb, l.Close())
	return mustParse(tb, "http://"+addr)
}
