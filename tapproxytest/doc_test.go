package tapproxytest_test

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/tapproxy/tapproxy/tapproxytest"
)

// The package documentation's quick start, kept here so that it compiles
// and passes.
func TestFirstCallFails(t *testing.T) {
	srv := tapproxytest.NewServer(t,
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok")
		}),
		tapproxytest.WithFaults(
			tapproxytest.Respond(http.StatusServiceUnavailable, "busy").On(tapproxytest.FirstN(1)),
		))

	for _, want := range []int{http.StatusServiceUnavailable, http.StatusOK} {
		res, err := srv.Client().Get(srv.URL + "/work")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("status %d, want %d", res.StatusCode, want)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ex, err := srv.Recorder.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if ex.Request.URL.Path != "/work" || !ex.HasFault("respond(503)") {
		t.Errorf("first exchange: %s %v", ex.Request.URL.Path, ex.Faults)
	}
}
