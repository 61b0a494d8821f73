package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestProxiesAndLogsEachExchange(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream saw %s", r.URL.Path)
	}))
	defer up.Close()
	port := freePort(t)

	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-port", strconv.Itoa(port), "-target-url", up.URL}, &logs) }()

	front := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	var res *http.Response
	require.Eventually(t, func() bool {
		var err error
		res, err = client.Get(front + "/hello")
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "the proxy starts listening")
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, "upstream saw /hello", string(body))
	assert.Eventually(t, func() bool {
		return bytes.Contains([]byte(logs.String()), []byte("path=/hello status=200 bytes=19"))
	}, 10*time.Second, 10*time.Millisecond, "one log line per exchange:\n%s", logs.String())

	cancel()
	select {
	case err := <-done:
		assert.NoError(t, err, "a signal shuts it down cleanly")
	case <-time.After(10 * time.Second):
		t.Fatal("did not shut down")
	}
}

func TestBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"malformed URL", []string{"-target-url", "://nope"}, "-target-url"},
		{"URL without host", []string{"-target-url", "http://"}, "has no host"},
		{"unknown flag", []string{"-bogus"}, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncBuffer
			err := run(context.Background(), tt.args, &logs)
			require.Error(t, err)
			assert.Contains(t, err.Error()+logs.String(), tt.want)
		})
	}
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
