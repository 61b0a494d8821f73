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
// matchers select: delays, fixed responses, connection resets, truncated or
// throttled bodies, dropped trailers and hangs.
//
// The package needs only a [TB], which [testing.TB] satisfies; it uses no
// assertion library. The server closes itself when the test ends.
//
// Quick start: check that a client retries after two failures, and what it
// sent.
//
//	func TestClientRetries(t *testing.T) {
//		srv := tapproxytest.NewServer(t,
//			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//				io.WriteString(w, "ok")
//			}),
//			tapproxytest.WithFaults(
//				tapproxytest.Respond(503, "busy").On(tapproxytest.FirstN(2)),
//			))
//
//		callWithRetries(srv.Client(), srv.URL+"/work") // the code under test
//
//		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
//		defer cancel()
//		ex, err := srv.Recorder.Wait(ctx, 3)
//		if err != nil {
//			t.Fatal(err)
//		}
//		if ex.Response.StatusCode != 200 || ex.Request.URL.Path != "/work" {
//			t.Errorf("third call: %d %s", ex.Response.StatusCode, ex.Request.URL.Path)
//		}
//	}
package tapproxytest
