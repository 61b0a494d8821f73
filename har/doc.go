// Package har turns the exchanges a [tapproxy.Proxy] relays into HAR 1.2
// (HTTP Archive) documents, the format every browser's network panel opens.
//
// A [Recorder] keeps the most recent exchanges in memory, within bounds on
// their number and on their body text, and serves them as a download with
// [Recorder.Handler]. A [Writer] streams every exchange into one document,
// such as a file, finished by [Writer.Close]. Both are observers; with
// [tapproxy.WithAsyncObservers] the conversion runs off the request path.
// [FromExchange] converts one exchange inside an observer of your own, and
// [FromParts] one recorded elsewhere.
//
// The types follow the HAR 1.2 specification, written so that Chrome's and
// Firefox's importers and the HAR 1.2 JSON schema accept them: lists are
// never null, repeated headers stay separate pairs, and text bodies stay
// text. Custom fields start with an underscore: _error, _truncated,
// _trailers and _encoding.
//
// Quick start: keep the last exchanges, and serve them on an admin port.
//
//	rec := har.NewRecorder()
//	proxy, err := tapproxy.New(target,
//		tapproxy.WithObserver(rec),
//		tapproxy.WithAsyncObservers(2, 4096))
//	if err != nil {
//		log.Fatal(err)
//	}
//	go http.ListenAndServe("127.0.0.1:9090", rec.Handler()) // GET: download; DELETE: clear
//	log.Fatal(http.ListenAndServe(":8080", proxy))
//
// Open the downloaded file in a browser's network panel: in Chrome,
// DevTools, Network, then drag the file in; in Firefox, Network, the gear
// menu, Import HAR File.
package har
