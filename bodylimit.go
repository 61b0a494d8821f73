package tapproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
)

// errBodyCut is the cause the exchange's context is canceled with when a
// request body of unknown length grew past the limit.
var errBodyCut = errors.New("tapproxy: request body cut at the limit")

// body applies the request body limit to r. A declared length over the
// limit is answered 413 before anything goes upstream. A body of unknown
// length (chunked, or HTTP/2 without content-length) is wrapped so that it
// fails once it grows past the limit; the returned request's context is then canceled
// at that moment, so that an exchange whose response already started is
// aborted rather than finished on a shortened request. Call the returned
// function when the exchange is over.
func (s *requestScreen) body(w http.ResponseWriter, r *http.Request, st *exchangeState) (*http.Request, func(), *localAnswer) {
	switch {
	case s.bodyLimit <= 0:
		return r, func() {}, nil
	case r.ContentLength > s.bodyLimit:
		return r, func() {}, &localAnswer{
			status: http.StatusRequestEntityTooLarge,
			err:    &http.MaxBytesError{Limit: s.bodyLimit},
		}
	case r.ContentLength >= 0 || r.Body == nil || r.Body == http.NoBody:
		// The server holds a body of declared length to that length.
		return r, func() {}, nil
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	// http.MaxBytesReader also tells the server to close the connection
	// after the response rather than read the rest of the body.
	st.reqBody.limit = &limitedBody{rc: http.MaxBytesReader(w, r.Body, s.bodyLimit), cancel: cancel}
	r = r.WithContext(ctx)
	r.Body = st.reqBody.limit
	return r, func() { cancel(nil) }, nil
}

// limitedBody is a request body that fails past the limit. Its Read runs
// on the transport's goroutine; the handler's goroutine learns of the cut
// through exceeded.
type limitedBody struct {
	rc     io.ReadCloser // an http.MaxBytesReader
	cancel context.CancelCauseFunc
	err    atomic.Pointer[http.MaxBytesError]
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok && b.err.CompareAndSwap(nil, mbe) {
		// The upstream must see its request body end in an error, never
		// a short body that looks whole: the transport gets the error,
		// and the exchange is canceled in case the response is
		// already on its way.
		b.cancel(errBodyCut)
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// exceeded returns the exchange's error if the body grew past the limit,
// or nil.
func (b *limitedBody) exceeded() error {
	if b == nil {
		return nil
	}
	if mbe := b.err.Load(); mbe != nil {
		return newKindError(errBadRequest, mbe)
	}
	return nil
}

// answerTooLarge answers a body that grew past the limit before the
// response started.
var answerTooLarge = &localAnswer{status: http.StatusRequestEntityTooLarge}
