//go:build !linux

package tapproxy_test

import "testing"

// fullBacklogAddr would return an address where a dial times out; doing
// that deterministically on loopback relies on Linux's accept queue.
func fullBacklogAddr(tb testing.TB) string {
	tb.Skip("a deterministic dial timeout on loopback needs Linux")
	return ""
}
