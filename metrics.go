package tapproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
)

// ScopeName is the instrumentation scope name of the Meter a [Proxy] records
// its metrics with: the module path. Views can select its instruments by it.
const ScopeName = "github.com/tapproxy/tapproxy"

// Version is the version of tapproxy, reported as the instrumentation
// scope's version.
const Version = "0.1.0"

// durationBuckets are the HTTP semantic conventions' advice for request
// durations, in seconds.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// observerBuckets are finer: an observer runs on the request's path and
// should take microseconds, which the HTTP buckets would lump together.
var observerBuckets = []float64{0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}

// sizeBuckets are for body sizes in bytes: the conventions give none, and
// the SDK's default (up to 10000) would put most bodies in the last bucket.
var sizeBuckets = []float64{0, 64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20}

// The names of the proxy's own instruments, and their attribute keys.
const (
	timeToHeadersName    = "tapproxy.upstream.time_to_headers"
	captureBytesName     = "tapproxy.capture.bytes"
	captureTruncatedName = "tapproxy.capture.truncated"
	captureSkippedName   = "tapproxy.capture.skipped"
	observerDurationName = "tapproxy.observer.duration"
	observerPanicsName   = "tapproxy.observer.panics"
	observerDroppedName  = "tapproxy.observer.dropped"
	upstreamHealthyName  = "tapproxy.upstream.healthy"
	ejectionsName        = "tapproxy.upstream.ejections"
	retriesName          = "tapproxy.retries"
	failOpenName         = "tapproxy.balancer.fail_open"

	// bodyKey says which body a capture metric is about: "request" or
	// "response".
	bodyKey = attribute.Key("tapproxy.body")
	// observerKey is the observer's position in the chain, from 0.
	observerKey = attribute.Key("tapproxy.observer.index")
	// ejectionKey says why an upstream was ejected: "passive" or "active".
	ejectionKey = attribute.Key("tapproxy.ejection.reason")
	// retryKey says why an attempt was retried.
	retryKey = attribute.Key("tapproxy.retry.reason")
)

// ejectReason says what ejected an upstream; it indexes ejectReasons.
type ejectReason uint8

const (
	ejectPassive ejectReason = iota
	ejectActive
)

var ejectReasons = [...]string{ejectPassive: "passive", ejectActive: "active"}

// retryReason says why an attempt was retried; it indexes retryReasons.
type retryReason uint8

const (
	retryDial retryReason = iota
	retryReset
	retryTimeout
	retryStatus
)

var retryReasons = [...]string{retryDial: "dial", retryReset: "reset", retryTimeout: "timeout", retryStatus: "status"}

// knownMethods are the methods the conventions name; others are recorded as
// _OTHER, so that a client cannot blow up the number of series.
var knownMethods = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace, "QUERY",
}

const methodOther = uint8(len(knownMethods))

func methodIndex(m string) uint8 {
	for i, k := range knownMethods {
		if m == k {
			return uint8(i)
		}
	}
	return methodOther
}

func methodName(i uint8) string {
	if i == methodOther {
		return "_OTHER"
	}
	return knownMethods[i]
}

// portOf returns u's port, or its scheme's default when it has none.
func portOf(u *url.URL) int {
	if port := u.Port(); port != "" { // Atoi's error for "" allocates
		if p, err := strconv.Atoi(port); err == nil && p != 0 {
			return p
		}
	}
	if u.Scheme == "https" {
		return 443
	}
	return 80
}

// protocolVersion formats an HTTP version as the conventions want it:
// "1.1", "2", "3".
func protocolVersion(major, minor int) string {
	switch {
	case major == 1 && minor == 1:
		return "1.1"
	case major == 1 && minor == 0:
		return "1.0"
	case major >= 2 && minor == 0:
		return strconv.Itoa(major)
	}
	return strconv.Itoa(major) + "." + strconv.Itoa(minor)
}

// meters holds a proxy's instruments and the attribute options it has
// built for them.
type meters struct {
	serverDuration metric.Float64Histogram
	serverActive   metric.Int64UpDownCounter
	serverReqSize  metric.Int64Histogram
	serverRespSize metric.Int64Histogram
	clientDuration metric.Float64Histogram
	timeToHeaders  metric.Float64Histogram
	captureBytes   metric.Int64Counter
	captureTrunc   metric.Int64Counter
	captureSkip    metric.Int64Counter
	obsDuration    metric.Float64Histogram
	obsPanics      metric.Int64Counter
	obsDropped     metric.Int64Counter
	clientActiveC  metric.Int64UpDownCounter
	healthy        metric.Int64ObservableGauge
	ejections      metric.Int64Counter
	retries        metric.Int64Counter
	failOpen       metric.Int64Counter
	meter          metric.Meter

	route  func(*http.Request) string
	logger *slog.Logger

	// Options for attribute sets known in advance: built once, so that
	// recording them allocates nothing.
	active          [methodOther + 1][2][]metric.AddOption // by method and TLS
	requestCapture  []metric.AddOption
	responseCapture []metric.AddOption
	observerRecord  [][]metric.RecordOption
	observerAdd     [][]metric.AddOption

	server attrCache[serverKey, []metric.RecordOption]
	client attrCache[clientKey, clientOptions]

	gauges   []metric.Registration // the gauges' callbacks
	stopOnce sync.Once
}

func newMeters(c *config) (*meters, error) {
	meter := c.meterProvider.Meter(ScopeName,
		metric.WithInstrumentationVersion(Version),
		metric.WithSchemaURL(semconv.SchemaURL))
	m := &meters{route: c.route, logger: c.logger}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	sizes := metric.WithExplicitBucketBoundaries(sizeBuckets...)

	// The httpconv constructors set the conventions' names, units,
	// descriptions and duration buckets (after any given here).
	sd, err := httpconv.NewServerRequestDuration(meter)
	check(err)
	m.serverDuration = sd.Inst()
	sa, err := httpconv.NewServerActiveRequests(meter)
	check(err)
	m.serverActive = sa.Inst()
	sq, err := httpconv.NewServerRequestBodySize(meter, sizes)
	check(err)
	m.serverReqSize = sq.Inst()
	sr, err := httpconv.NewServerResponseBodySize(meter, sizes)
	check(err)
	m.serverRespSize = sr.Inst()
	cd, err := httpconv.NewClientRequestDuration(meter)
	check(err)
	m.clientDuration = cd.Inst()
	// The upstream leg's body sizes are left out: they repeat the
	// client-facing leg's byte for byte (the proxy relays what it reads),
	// and with two more histograms of eight attributes each they were a
	// third of the recording's cost per request.

	m.timeToHeaders, err = meter.Float64Histogram(timeToHeadersName,
		metric.WithDescription("Time from receiving a request until the upstream's response headers arrived."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	m.captureBytes, err = meter.Int64Counter(captureBytesName,
		metric.WithDescription("Body bytes kept for observers."),
		metric.WithUnit("By"))
	check(err)
	m.captureTrunc, err = meter.Int64Counter(captureTruncatedName,
		metric.WithDescription("Exchanges whose body was longer than its capture limit."),
		metric.WithUnit("{exchange}"))
	check(err)
	m.captureSkip, err = meter.Int64Counter(captureSkippedName,
		metric.WithDescription("Exchanges whose capture the capture budget cut short or skipped."),
		metric.WithUnit("{exchange}"))
	check(err)
	m.obsDuration, err = meter.Float64Histogram(observerDurationName,
		metric.WithDescription("Time an observer took to handle an exchange."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(observerBuckets...))
	check(err)
	m.obsPanics, err = meter.Int64Counter(observerPanicsName,
		metric.WithDescription("Observer calls that panicked."),
		metric.WithUnit("{panic}"))
	check(err)
	m.obsDropped, err = meter.Int64Counter(observerDroppedName,
		metric.WithDescription("Exchanges not observed because the asynchronous observers' queue was full."),
		metric.WithUnit("{exchange}"))
	check(err)
	ca, err := httpconv.NewClientActiveRequests(meter)
	check(err)
	m.clientActiveC = ca.Inst()
	m.healthy, err = meter.Int64ObservableGauge(upstreamHealthyName,
		metric.WithDescription("Whether an upstream is healthy (1) or ejected or down (0)."),
		metric.WithUnit("{upstream}"))
	check(err)
	m.ejections, err = meter.Int64Counter(ejectionsName,
		metric.WithDescription("Upstreams ejected by passive health or marked down by active checks."),
		metric.WithUnit("{ejection}"))
	check(err)
	m.retries, err = meter.Int64Counter(retriesName,
		metric.WithDescription("Upstream attempts that failed and were retried."),
		metric.WithUnit("{retry}"))
	check(err)
	m.failOpen, err = meter.Int64Counter(failOpenName,
		metric.WithDescription("Requests routed while no upstream was healthy."),
		metric.WithUnit("{request}"))
	check(err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	m.meter = meter

	for mi := range m.active {
		for tls, scheme := range [2]string{"http", "https"} {
			set := attribute.NewSet(
				semconv.HTTPRequestMethodKey.String(methodName(uint8(mi))),
				semconv.URLSchemeKey.String(scheme))
			m.active[mi][tls] = []metric.AddOption{metric.WithAttributeSet(set)}
		}
	}
	m.requestCapture = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(bodyKey.String("request")))}
	m.responseCapture = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(bodyKey.String("response")))}
	for i := range c.observers {
		o := metric.WithAttributeSet(attribute.NewSet(observerKey.Int(i)))
		m.observerRecord = append(m.observerRecord, []metric.RecordOption{o})
		m.observerAdd = append(m.observerAdd, []metric.AddOption{o})
	}
	m.server.build = buildServer
	m.client.build = buildClient
	return m, nil
}

// exchangeMetrics is what an exchangeState keeps for the metrics.
type exchangeMetrics struct {
	in       *http.Request      // as received from the client
	active   []metric.AddOption // the active count went up with these
	sent     time.Time          // when the upstream request left, if timed
	status   int                // what the error handler answered, 0 if none
	upStatus int                // the upstream's status, 0 if none arrived
	upMajor  uint8
	upMinor  uint8
	timed    bool // the upstream leg's duration is being recorded
}

// begin counts the request as active, if that is being recorded.
func (m *meters) begin(ctx context.Context, st *exchangeState, r *http.Request) {
	sm := &st.metrics
	sm.in = r
	sm.timed = m.clientDuration.Enabled(ctx)
	if !m.serverActive.Enabled(ctx) {
		return
	}
	tls := 0
	if r.TLS != nil {
		tls = 1
	}
	sm.active = m.active[methodIndex(r.Method)][tls]
	m.serverActive.Add(ctx, 1, sm.active...)
}

// sending notes when the upstream request leaves.
func (sm *exchangeMetrics) sending() {
	if sm.timed {
		sm.sent = time.Now()
	}
}

// received notes the upstream's response as it arrived, before any hook
// could change it.
func (sm *exchangeMetrics) received(res *http.Response) {
	sm.upStatus = res.StatusCode
	sm.upMajor, sm.upMinor = uint8(min(res.ProtoMajor, 255)), uint8(min(res.ProtoMinor, 255))
}

// record records a settled exchange: everything but the observers.
func (m *meters) record(ctx context.Context, st *exchangeState) {
	ex, sm := &st.ex, &st.metrics
	kind := errKindOf(ex.Err)
	if st.route.attempts > 0 && !st.local {
		m.recordAttempt(ctx, ex.Request, sm, kind, ex.Start.Add(ex.Duration), ex.TimeToHeaders)
	}

	if (len(ex.body) > 0 || len(ex.reqBody) > 0) && m.captureBytes.Enabled(ctx) {
		if len(ex.body) > 0 {
			m.captureBytes.Add(ctx, int64(len(ex.body)), m.responseCapture...)
		}
		if len(ex.reqBody) > 0 {
			m.captureBytes.Add(ctx, int64(len(ex.reqBody)), m.requestCapture...)
		}
	}
	// Only a capture that is on can be truncated: with a limit of zero,
	// every body is "truncated", by choice.
	resTrunc := ex.Truncated && st.resBody.buf.limit > 0
	reqTrunc := ex.RequestTruncated && st.reqBody.tee != nil && st.reqBody.tee.buf.limit > 0
	if (resTrunc || reqTrunc) && m.captureTrunc.Enabled(ctx) {
		if resTrunc {
			m.captureTrunc.Add(ctx, 1, m.responseCapture...)
		}
		if reqTrunc {
			m.captureTrunc.Add(ctx, 1, m.requestCapture...)
		}
	}

	if ex.CaptureSkipped {
		m.captureSkip.Add(ctx, 1)
	}

	// The client-facing leg's duration last, so that a reader that sees
	// it sees the rest of the exchange too.
	if sm.active != nil {
		// With the options it went up with, even if a view changed since.
		m.serverActive.Add(ctx, -1, sm.active...)
	}
	sd, sq, sr := m.serverDuration.Enabled(ctx), m.serverReqSize.Enabled(ctx), m.serverRespSize.Enabled(ctx)
	if sd || sq || sr {
		in := sm.in
		k := serverKey{
			method: methodIndex(in.Method),
			tls:    in.TLS != nil,
			major:  uint8(min(in.ProtoMajor, 255)),
			minor:  uint8(min(in.ProtoMinor, 255)),
			status: sm.status,
			err:    kind,
		}
		if k.status == 0 && st.err == nil && ex.Response != nil {
			k.status = ex.Response.StatusCode
		}
		if m.route != nil {
			k.route = m.routeOf(ctx, in)
		}
		opts := m.server.get(k)
		if sq {
			m.serverReqSize.Record(ctx, ex.RequestBodyBytes, opts...)
		}
		if sr {
			m.serverRespSize.Record(ctx, ex.BodyBytes, opts...)
		}
		if sd {
			m.serverDuration.Record(ctx, ex.Duration.Seconds(), opts...)
		}
	}
}

// recordAttempt records the upstream leg of one attempt, sent as out, that
// ended at end with the given kind; ttfb is when its headers arrived,
// measured from the exchange's start, zero if they did not or are not to
// be recorded.
func (m *meters) recordAttempt(ctx context.Context, out *http.Request, sm *exchangeMetrics, kind errKind, end time.Time, ttfb time.Duration) {
	cd, th := m.clientDuration.Enabled(ctx), m.timeToHeaders.Enabled(ctx) && sm.upStatus != 0 && ttfb > 0
	if !cd && !th {
		return
	}
	k := clientKey{
		method:  methodIndex(out.Method),
		scheme:  out.URL.Scheme,
		address: out.URL.Hostname(),
		status:  sm.upStatus,
		major:   sm.upMajor,
		minor:   sm.upMinor,
		err:     kind,
		port:    portOf(out.URL),
	}
	opts := m.client.get(k)
	if cd && !sm.sent.IsZero() {
		m.clientDuration.Record(ctx, end.Sub(sm.sent).Seconds(), opts.full...)
	}
	if th {
		m.timeToHeaders.Record(ctx, ttfb.Seconds(), opts.headers...)
	}
}

// routeOf calls the user's route function, containing its panic: the
// exchange must still be recorded and observed.
func (m *meters) routeOf(ctx context.Context, r *http.Request) (route string) {
	defer func() {
		if v := recover(); v != nil {
			route = ""
			m.logger.LogAttrs(ctx, slog.LevelError, "tapproxy: route function panicked",
				slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
		}
	}()
	return m.route(r)
}

// observerTimed reports whether observer durations are being recorded; the
// clock is read only then.
func (m *meters) observerTimed(ctx context.Context) bool { return m.obsDuration.Enabled(ctx) }

func (m *meters) observed(ctx context.Context, i int, d time.Duration) {
	m.obsDuration.Record(ctx, d.Seconds(), m.observerRecord[i]...)
}

func (m *meters) panicked(ctx context.Context, i int) {
	m.obsPanics.Add(ctx, 1, m.observerAdd[i]...)
}

func (m *meters) dropped(ctx context.Context) { m.obsDropped.Add(ctx, 1) }

// serverKey is what the client-facing leg's attributes are made of.
type serverKey struct {
	route        string
	status       int
	method       uint8
	major, minor uint8
	err          errKind
	tls          bool
}

func buildServer(k serverKey) []metric.RecordOption {
	scheme := "http"
	if k.tls {
		scheme = "https"
	}
	kv := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(methodName(k.method)),
		semconv.URLSchemeKey.String(scheme),
		semconv.NetworkProtocolVersionKey.String(protocolVersion(int(k.major), int(k.minor))),
	}
	if k.status != 0 {
		kv = append(kv, semconv.HTTPResponseStatusCodeKey.Int(k.status))
	}
	if k.route != "" {
		kv = append(kv, semconv.HTTPRouteKey.String(k.route))
	}
	switch {
	case k.err != errNone:
		kv = append(kv, semconv.ErrorTypeKey.String(errorKinds[k.err].name))
	case k.status >= 500:
		// A server's 5xx is its error; a 4xx is the client's.
		kv = append(kv, semconv.ErrorTypeKey.String(strconv.Itoa(k.status)))
	}
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
}

// clientKey is what the upstream leg's attributes are made of.
type clientKey struct {
	scheme, address string
	port            int
	status          int
	method          uint8
	major, minor    uint8
	err             errKind
}

// clientOptions holds the upstream leg's attributes, in full and without
// error.type for the time to headers: a failure after the headers arrived
// says nothing about how long they took.
type clientOptions struct {
	full, headers []metric.RecordOption
}

func buildClient(k clientKey) clientOptions {
	kv := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(methodName(k.method)),
		semconv.URLSchemeKey.String(k.scheme),
		semconv.ServerAddressKey.String(k.address),
		semconv.ServerPortKey.Int(k.port),
	}
	if k.status != 0 {
		kv = append(kv,
			semconv.HTTPResponseStatusCodeKey.Int(k.status),
			semconv.NetworkProtocolVersionKey.String(protocolVersion(int(k.major), int(k.minor))))
	}
	headers := []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
	switch {
	case k.err != errNone:
		kv = append(kv, semconv.ErrorTypeKey.String(errorKinds[k.err].name))
	case k.status >= 400:
		// For a client, any 4xx or 5xx answer is an error.
		kv = append(kv, semconv.ErrorTypeKey.String(strconv.Itoa(k.status)))
	}
	return clientOptions{
		full:    []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(kv...))},
		headers: headers,
	}
}

// maxAttrSets bounds an attrCache. Past it, options are built per request:
// slower, but a flood of distinct routes or hosts cannot exhaust memory.
const maxAttrSets = 1024

// attrCache maps attribute keys to the options built from them, so that a
// request whose attributes were seen before records without allocating.
// Reads take no lock: the map is replaced, never changed.
type attrCache[K comparable, V any] struct {
	m     atomic.Pointer[map[K]V]
	mu    sync.Mutex // serializes writers
	build func(K) V
}

func (c *attrCache[K, V]) get(k K) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	return c.add(k)
}

func (c *attrCache[K, V]) add(k K) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	v := c.build(k)
	if old != nil && len(*old) >= maxAttrSets {
		return v
	}
	m := make(map[K]V, 1+lenMap(old))
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	m[k] = v
	c.m.Store(&m)
	return v
}

func lenMap[K comparable, V any](m *map[K]V) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// upstreamAttrs holds an upstream's attribute options, built once when it
// joins a pool, so that recording its metrics allocates nothing.
type upstreamAttrs struct {
	active    []metric.AddOption
	healthy   []metric.ObserveOption
	ejections [len(ejectReasons)][]metric.AddOption
	retries   [len(retryReasons)][]metric.AddOption
}

func (m *meters) upstreamAttrs(u *url.URL) upstreamAttrs {
	addr, srvPort := semconv.ServerAddressKey.String(u.Hostname()), semconv.ServerPortKey.Int(portOf(u))
	base := attribute.NewSet(addr, srvPort)
	a := upstreamAttrs{
		active:  []metric.AddOption{metric.WithAttributeSet(base)},
		healthy: []metric.ObserveOption{metric.WithAttributeSet(base)},
	}
	for r, name := range ejectReasons {
		a.ejections[r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(addr, srvPort, ejectionKey.String(name)))}
	}
	for r, name := range retryReasons {
		a.retries[r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(addr, srvPort, retryKey.String(name)))}
	}
	return a
}

// registerGauges registers the callbacks of the observable gauges through
// mp and m: the bytes that the captures hold and their budget, from b, and
// the health of the pool's upstreams. stopGauges unregisters them.
func (m *meters) registerGauges(mp metric.MeterProvider, b *captureBudget, pl *pool) error {
	held, err := b.register(mp)
	if err != nil {
		return fmt.Errorf("tapproxy: creating instruments: %w", err)
	}
	health, err := m.observeHealth(pl)
	if err != nil {
		_ = held.Unregister()
		return fmt.Errorf("tapproxy: registering the upstream health gauge: %w", err)
	}
	m.gauges = []metric.Registration{held, health}
	return nil
}

// stopGauges unregisters the gauges' callbacks, once: they would otherwise
// keep the proxy reachable from its MeterProvider.
func (m *meters) stopGauges() {
	m.stopOnce.Do(func() {
		for _, g := range m.gauges {
			_ = g.Unregister()
		}
	})
}

// observeHealth registers the callback of the healthy gauge, which reports
// the upstreams of the pool's current set: removed ones stop reporting.
func (m *meters) observeHealth(p *pool) (metric.Registration, error) {
	return m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		now := time.Now()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, u := range p.set.Load().all {
			v := int64(0)
			if u.health.healthy(now) {
				v = 1
			}
			o.ObserveInt64(m.healthy, v, u.attrs.healthy...)
		}
		return nil
	}, m.healthy)
}

func (m *meters) clientActive(ctx context.Context, u *Upstream, n int64) {
	if m.clientActiveC.Enabled(ctx) {
		m.clientActiveC.Add(ctx, n, u.attrs.active...)
	}
}

func (m *meters) ejected(u *Upstream, r ejectReason) {
	m.ejections.Add(context.Background(), 1, u.attrs.ejections[r]...)
}

func (m *meters) retried(ctx context.Context, u *Upstream, r retryReason) {
	m.retries.Add(ctx, 1, u.attrs.retries[r]...)
}

func (m *meters) failedOpen(ctx context.Context) { m.failOpen.Add(ctx, 1) }
