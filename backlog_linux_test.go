package tapproxy_test

import (
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fullBacklogAddr returns a loopback address whose listener never accepts
// and whose accept queue is full, so that the kernel drops new SYNs and a
// dial there times out, deterministically and without leaving loopback.
// net.Listen cannot choose the backlog, so the socket is made by hand.
func fullBacklogAddr(tb testing.TB) string {
	tb.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(tb, err)
	tb.Cleanup(func() { syscall.Close(fd) })
	require.NoError(tb, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(tb, syscall.Listen(fd, 0))
	sa, err := syscall.Getsockname(fd)
	require.NoError(tb, err)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))

	// Fill the queue until a dial times out.
	for range 16 {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			var ne net.Error
			require.ErrorAs(tb, err, &ne)
			require.True(tb, ne.Timeout(), "filling the backlog: %v", err)
			return addr
		}
		tb.Cleanup(func() { c.Close() })
	}
	tb.Fatal("the accept queue never filled")
	return ""
}
