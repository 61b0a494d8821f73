// Package tapproxy is an observing reverse proxy: an [http.Handler] built on
// [httputil.ReverseProxy] that streams every response to the client as it
// arrives and hands each exchange to a chain of observers, with a size-capped
// copy of the response body teed off while it streamed.
//
// Quick start: put a proxy in front of a service and log its responses.
//
//	target, _ := url.Parse("http://127.0.0.1:9000")
//	proxy, err := tapproxy.New(target,
//		tapproxy.WithDirector(tapproxy.StripPrefix("/api")),
//		tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
//			body, _ := io.ReadAll(ex.Body()) // the first 64 KiB, as streamed
//			log.Printf("%s %s: %d bytes (%.20q...), err=%v", ex.Request.Method, ex.Request.URL.Path, ex.BodyBytes, body, ex.Err)
//		})))
//	if err != nil {
//		log.Fatal(err)
//	}
//	log.Fatal(http.ListenAndServe(":8080", proxy))
//
// Directors ([Director]) rewrite the outbound request; they run inside
// ReverseProxy's Rewrite hook, so clients cannot spoof X-Forwarded-* or strip
// headers that a director sets. Observers ([ResponseObserver]) run once per
// request after the body ended, each reading its own view of the capture
// through [Exchange.Body] (or [Exchange.DecodedBody]); with
// [WithAsyncObservers] they run on a bounded worker pool instead of the
// request's goroutine. Upgrades (WebSocket), 1xx responses, trailers,
// flushing of streams, HTTP/2 and gRPC pass through as with a bare
// ReverseProxy.
//
// Before a request is routed, its path's dot-segments are resolved (RFC 3986
// section 5.2.4, with %2e as a dot) and a path that climbs above / is
// refused with [ErrBadRequest], so that no request leaves the target's base
// path or [StripPrefix] mapping; CONNECT is refused too, and
// [WithRequestBodyLimit] caps request bodies. See [WithPathNormalization]
// and [WithEscapedSlashes].
//
// [NewBalanced] proxies to a pool of upstreams instead of one: a [Balancer]
// picks each request's upstream before the directors run, passive health
// and [WithHealthCheck] leave failing upstreams out, and [WithRetry] retries
// failed attempts on another upstream while nothing has reached the client.
//
// Every request is also recorded as OpenTelemetry metrics, following the
// HTTP semantic conventions, through the MeterProvider given with
// [WithMeterProvider]. Package tapproxytest puts the proxy in tests, as a
// recording, fault-injecting stand-in for an upstream.
package tapproxy
