// Package tapproxytest puts a recording, fault-injecting proxy between the
// code under test and an upstream, as [net/http/httptest] puts a server in
// front of a handler.
//
// [NewServer] starts a fake upstream from an [http.Handler] and a
// [tapproxy.Proxy] in front of it, both on loopback; [NewServerURL] puts the
// proxy in front of an upstream that already runs. The code under test talks
// to [Server.URL]. The server's [Recorder] keeps a copy of every exchange:
// the request as sent upstream, with its body; the response as the client
// got it, with its body and trailers; timings; the error; and the faults
// applied. [Fault] values inject HTTP-level failures into the requests their
// matchers select: fixed and random delays, fixed responses, connection
// closes and resets, malformed chunks and garbage, truncated, throttled or
// dribbled bodies, dropped trailers and hangs. [WithSeed] makes the random
// ones repeat.
//
// [Recorder.Count] and [Recorder.Expect] verify what arrived, with the same
// matchers. [WithCassette] records the exchanges with a real upstream into a
// HAR 1.2 file, and replays them offline, below the faults. [WithTLS] and
// [WithHTTP2] put an HTTPS or HTTP/2 front before gRPC and other h2
// clients.
//
// [Recorder.WriteHAR] exports the recording as a HAR 1.2 file for a
// browser's network panel, and [WithHAROnFailure] writes one when the test
// fails; both redact credentials unless [WithUnredactedHAR] is given.
//
// The package needs only a [TB], which [testing.TB] satisfies; it uses no
// assertion library. The server closes itself when the test ends, and then
// writes its cassette and reports cassette misses through Errorf.
//
// Quick start: fail a client's first call with 503, then check what it
// saw and what it sent.
//
//	func TestFirstCallFails(t *testing.T) {
//		srv := tapproxytest.NewServer(t,
//			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//				io.WriteString(w, "ok")
//			}),
//			tapproxytest.WithFaults(
//				tapproxytest.Respond(http.StatusServiceUnavailable, "busy").On(tapproxytest.FirstN(1)),
//			))
//
//		for _, want := range []int{http.StatusServiceUnavailable, http.StatusOK} {
//			res, err := srv.Client().Get(srv.URL + "/work")
//			if err != nil {
//				t.Fatal(err)
//			}
//			res.Body.Close()
//			if res.StatusCode != want {
//				t.Errorf("status %d, want %d", res.StatusCode, want)
//			}
//		}
//
//		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
//		defer cancel()
//		ex, err := srv.Recorder.Wait(ctx, 1)
//		if err != nil {
//			t.Fatal(err)
//		}
//		if ex.Request.URL.Path != "/work" || !ex.HasFault("respond(503)") {
//			t.Errorf("first exchange: %s %v", ex.Request.URL.Path, ex.Faults)
//		}
//	}
package tapproxytest
