package tapproxy

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// An Option configures a [Proxy]. Options are applied by [New] in the order
// given; each option's documentation says what repeating it does.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// DefaultCaptureLimit is the number of response body bytes kept for
// observers when [WithCaptureLimit] is not given.
const DefaultCaptureLimit = 64 << 10

// DefaultCaptureBudget is the bound on the bytes that the captures of all
// in-flight exchanges of a proxy hold together when [WithCaptureBudget] is
// not given: a thousand full 64 KiB captures at once. Measured with 2,000
// concurrent held streaming responses, it kept a proxy with one observer
// at about 1.5 times the peak RSS of a bare ReverseProxy, against 1.9
// times without a budget, and it grows no further with more streams.
const DefaultCaptureBudget = 64 << 20

// config is what the options build; New validates it once.
type config struct {
	directors       []Director
	observers       []ResponseObserver
	captureLimit    int64
	reqCapture      int64
	captureBudget   int64
	capturePolicy   func(*http.Response) int64
	transport       http.RoundTripper
	flushInterval   time.Duration
	errorHandler    func(http.ResponseWriter, *http.Request, error)
	modifyResponse  func(*http.Response) error
	logger          *slog.Logger
	decoders        map[string]Decoder
	decodeLimit     int64
	showCredentials bool
	meterProvider   metric.MeterProvider
	route           func(*http.Request) string
	async           bool
	asyncWorkers    int
	asyncQueue      int
	balancer        Balancer
	healthCheck     *HealthCheck
	passiveHealth   *PassiveHealth
	retry           *Retry
	slowStart       time.Duration
	rawPaths        bool // path normalisation off
	escapedSlashes  EscapedSlashAction
	bodyLimit       int64
}

func newConfig(opts []Option) *config {
	c := &config{captureLimit: DefaultCaptureLimit, decodeLimit: DefaultDecodeLimit, captureBudget: DefaultCaptureBudget}
	for _, o := range opts {
		if o != nil {
			o.apply(c)
		}
	}
	if c.transport == nil {
		c.transport = NewTransport()
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	if c.meterProvider == nil {
		c.meterProvider = otel.GetMeterProvider()
	}
	if c.balancer == nil {
		c.balancer = LeastRequests()
	}
	return c
}

// WithDirector adds directors that rewrite each outbound request. They run in
// order after the request has been routed to the target (see [Director]).
//
// Repeated use accumulates: WithDirector(a) + WithDirector(b, c) ==
// WithDirector(a, b, c). Nil directors are skipped. By default there are none.
func WithDirector(d ...Director) Option {
	return optionFunc(func(c *config) {
		for _, d := range d {
			if d != nil {
				c.directors = append(c.directors, d)
			}
		}
	})
}

// WithObserver adds observers that are handed every exchange, in order, once
// the response has ended (see [ResponseObserver]).
//
// Repeated use accumulates: WithObserver(a) + WithObserver(b, c) ==
// WithObserver(a, b, c). Nil observers are skipped. By default there are none.
func WithObserver(o ...ResponseObserver) Option {
	return optionFunc(func(c *config) {
		for _, o := range o {
			if o != nil {
				c.observers = append(c.observers, o)
			}
		}
	})
}

// WithCaptureLimit sets how many bytes of each response body are kept for
// observers; the rest streams to the client and is only counted. A
// [WithCapturePolicy] policy chooses a limit per response instead. The
// default is [DefaultCaptureLimit] (64 KiB). Zero keeps no bytes, but
// observers still run. A negative value makes [New] fail. The last call
// wins.
func WithCaptureLimit(n int64) Option {
	return optionFunc(func(c *config) { c.captureLimit = n })
}

// WithRequestCaptureLimit sets how many bytes of each request body are kept
// for observers, read from the body as it streams upstream (see
// [Exchange.RequestBody]). The default is 0: request bodies are not captured.
// A negative value makes [New] fail. The last call wins.
func WithRequestCaptureLimit(n int64) Option {
	return optionFunc(func(c *config) { c.reqCapture = n })
}

// WithCaptureBudget bounds the bytes that the captures of all in-flight
// exchanges of the proxy hold together, response and request captures
// alike, so that many concurrent large responses cannot grow memory with
// their number. A capture reserves from the budget as it grows and gives
// back what it held once its observers have run. When the budget is spent,
// a capture keeps what it has, possibly nothing, and its exchange reports
// [Exchange.CaptureSkipped]; the response still streams to the client
// whole.
//
// The budget's limit and what the captures hold now are reported as the
// tapproxy.capture.budget and tapproxy.capture.held gauges.
//
// The default is [DefaultCaptureBudget] (64 MiB), so that a burst of
// concurrency cannot take memory without bound; exchanges past it still
// stream whole, and say so. Zero removes the bound: each capture is then
// bounded only by its own limit. A negative value makes [New] fail. The
// last call wins.
func WithCaptureBudget(n int64) Option {
	return optionFunc(func(c *config) { c.captureBudget = n })
}

// WithTransport sets the round tripper used to reach the upstream. The
// default is a transport from [NewTransport]. Nil keeps the default. The last
// call wins.
func WithTransport(rt http.RoundTripper) Option {
	return optionFunc(func(c *config) {
		if rt != nil {
			c.transport = rt
		}
	})
}

// WithFlushInterval sets how often buffered response bytes are flushed to
// the client, with the meaning of [httputil.ReverseProxy.FlushInterval]: zero
// (the default) flushes Server-Sent Events and bodies of unknown length at
// once and others when the handler returns; a negative value flushes after
// every write. The last call wins.
func WithFlushInterval(d time.Duration) Option {
	return optionFunc(func(c *config) { c.flushInterval = d })
}

// WithErrorHandler sets the function that answers the client when no
// response can be relayed: the upstream is unreachable, timed out, sent an
// invalid response, or the [WithModifyResponse] hook failed. The error it is
// given matches the kinds of [Exchange.Err] with [errors.Is]. The default
// answers 504 Gateway Timeout for [ErrUpstreamTimeout] and 502 Bad Gateway
// otherwise. Nil keeps the default. The last call wins.
//
// Observers see the exchange either way; the handler need not report it.
func WithErrorHandler(h func(http.ResponseWriter, *http.Request, error)) Option {
	return optionFunc(func(c *config) {
		if h != nil {
			c.errorHandler = h
		}
	})
}

// WithModifyResponse sets a hook that may change the upstream response
// before it is sent to the client and captured: observers see what the
// client gets. If the hook replaces the body but leaves the Content-Length
// as it was, the proxy drops the stale length so that the framing stays
// correct. If the hook returns an error, the error handler answers instead.
// By default there is no hook. Nil keeps the default. The last call wins.
func WithModifyResponse(f func(*http.Response) error) Option {
	return optionFunc(func(c *config) {
		if f != nil {
			c.modifyResponse = f
		}
	})
}

// WithLogger sets where the proxy logs: upstream failures, observer panics,
// and what [httputil.ReverseProxy] itself would log. A client that went away
// is not a proxy failure and is not logged. The default is [slog.Default] at
// the time [New] runs. Nil keeps the default. The last call wins.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) {
		if l != nil {
			c.logger = l
		}
	})
}

// WithDecoder registers a [Decoder] for the content coding name (such as
// "br" or "zstd"), used by [Exchange.DecodedBody]. gzip and deflate are
// built in; registering them replaces the built-in decoder. Names are case
// insensitive. Repeated use accumulates, and a later registration of the
// same name wins. A nil decoder is ignored.
//
// The core imports no compression library beyond the standard library's;
// zstd and brotli plug in here, for example with
// github.com/klauspost/compress/zstd and github.com/andybalholm/brotli:
//
//	tapproxy.WithDecoder("zstd", func(r io.Reader) (io.Reader, error) {
//		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
//		if err != nil {
//			return nil, err
//		}
//		return d.IOReadCloser(), nil // closed when the observer call ends
//	}),
//	tapproxy.WithDecoder("br", func(r io.Reader) (io.Reader, error) {
//		return brotli.NewReader(r), nil
//	}),
func WithDecoder(name string, d Decoder) Option {
	return optionFunc(func(c *config) {
		if d == nil {
			return
		}
		if c.decoders == nil {
			c.decoders = make(map[string]Decoder)
		}
		c.decoders[strings.ToLower(name)] = d
	})
}

// WithDecodeLimit caps how many decoded bytes [Exchange.DecodedBody] yields,
// against decompression bombs. The default is [DefaultDecodeLimit] (1 MiB).
// Zero decodes nothing. A negative value makes [New] fail. The last call
// wins.
func WithDecodeLimit(n int64) Option {
	return optionFunc(func(c *config) { c.decodeLimit = n })
}

// WithUnredactedCredentials lets observers see the values of credential
// headers: Authorization, Proxy-Authorization and Cookie on the request, and
// Set-Cookie on the response. By default observers see them redacted ("Bearer
// REDACTED", "session=REDACTED"); the request and response the proxy relays
// are never changed either way. Repeating it has no further effect.
func WithUnredactedCredentials() Option {
	return optionFunc(func(c *config) { c.showCredentials = true })
}

// WithMeterProvider sets the OpenTelemetry MeterProvider the proxy records
// its metrics with: the HTTP semantic conventions' server metrics for the
// client-facing leg, their client metrics for the upstream leg, and its own
// under "tapproxy." (the README lists them all). [New] creates the Meter,
// named [ScopeName] with version [Version], and its instruments once.
//
// The default is [otel.GetMeterProvider] at the time New runs, which records
// nothing until the application sets a global provider. Nil keeps the
// default. The last call wins. When the provider records nothing, recording
// costs a few checks per request and no allocations.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) {
		if mp != nil {
			c.meterProvider = mp
		}
	})
}

// WithRoute sets the function that names the route of an inbound request,
// recorded as the http.route attribute of the client-facing leg's metrics.
// It is called once per request, after the response ended, with the request
// as the client sent it, and must return a low-cardinality template such as
// "/users/{id}", never the raw path; an empty string leaves the attribute
// out for that request. It must be safe for concurrent use. If it panics,
// the panic is logged and the request is recorded without a route.
//
// By default there is none, and no metric carries http.route. A nil function
// is ignored. The last call wins.
func WithRoute(f func(r *http.Request) string) Option {
	return optionFunc(func(c *config) {
		if f != nil {
			c.route = f
		}
	})
}

// WithAsyncObservers delivers exchanges to the observers on a pool of
// workers goroutines instead of the request's goroutine, through a queue
// that holds up to queueSize exchanges. A slow observer then never delays a
// response or the next request on its connection. Each exchange is still
// observed by every observer, in order, on one worker; its capture stays
// valid until the last observer returns.
//
// The queue never blocks a request: when it is full, the exchange is
// dropped and counted in the tapproxy.observer.dropped metric. Call
// [Proxy.Shutdown] or [Proxy.Close] to drain the queue and stop the workers.
//
// By default observers run synchronously. Workers must be at least 1 and
// queueSize at least 0, or [New] fails. The last call wins. Without
// observers it starts no workers.
func WithAsyncObservers(workers, queueSize int) Option {
	return optionFunc(func(c *config) {
		c.async, c.asyncWorkers, c.asyncQueue = true, workers, queueSize
	})
}

// WithPathNormalization turns the resolution of dot-segments in request
// paths on or off. It is on by default: before a request is routed, its
// path's "." and ".." segments (%2e and %2E count as dots) are resolved as
// RFC 3986 section 5.2.4 says, keeping empty segments and trailing
// slashes, and a path that climbs above / is answered 400 with
// [ErrBadRequest]. Directors, [StripPrefix], the [WithRoute] function, the
// upstream, the observers and the metrics all see the resolved path; the
// rest of its escaping is kept as the client sent it.
//
// WithPathNormalization(false) relays paths with their dot-segments, for
// the rare upstream that needs them raw. That is dangerous: most upstream
// frameworks and file servers resolve dot-segments themselves, so a
// request for /api/../admin or /%2e%2e/etc passes the proxy's prefix and
// base path and is then served from outside them, which is how many
// gateway path-confusion vulnerabilities came about. Turn it off only
// when the upstream takes the path as opaque data. The escaped-slash
// action ([WithEscapedSlashes]) still applies. The last call wins.
func WithPathNormalization(on bool) Option {
	return optionFunc(func(c *config) { c.rawPaths = !on })
}

// WithEscapedSlashes sets what the proxy does with a request whose path
// holds an escaped slash or backslash (%2F, %2f, %5C, %5c): relay it as
// it is ([KeepEscaped], the default), answer 400 ([RejectEscaped]), or
// redirect the client to the path with them unescaped
// ([UnescapeAndRedirect]). The zero value is KeepEscaped. An action other
// than these makes [New] fail. The last call wins.
func WithEscapedSlashes(action EscapedSlashAction) Option {
	return optionFunc(func(c *config) { c.escapedSlashes = action })
}

// WithRequestBodyLimit caps request bodies at n bytes, like nginx's
// client_max_body_size. A request that declares a Content-Length over n is
// answered 413 Request Entity Too Large before anything goes upstream. A
// body of unknown length (chunked, or HTTP/2 without content-length) that
// grows past n is cut: the upstream sees its request body end in an error,
// never a shortened body that looks complete, and the client gets 413 if
// no response has started; otherwise the exchange aborts (the client's
// connection or stream is broken off). Either way [Exchange.Err] matches
// [ErrBadRequest] and wraps an [*http.MaxBytesError]. A custom error
// handler is not called for these.
//
// The default is no limit. Zero also means no limit. A negative value
// makes [New] fail. The last call wins.
func WithRequestBodyLimit(n int64) Option {
	return optionFunc(func(c *config) { c.bodyLimit = n })
}
