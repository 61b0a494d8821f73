//go:build unix

package tapproxy_test

import (
	"net/url"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// deadURL returns the URL of a loopback port that is bound but not
// listening: a dial there is refused, and since the port stays bound until
// the test ends, no server started meanwhile can take it.
func deadURL(tb testing.TB) *url.URL {
	tb.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	require.NoError(tb, err)
	tb.Cleanup(func() { syscall.Close(fd) })
	require.NoError(tb, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := syscall.Getsockname(fd)
	require.NoError(tb, err)
	return mustParse(tb, "http://127.0.0.1:"+strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}
