package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tapproxy/tapproxy"
)

// grpcEnv is a gRPC health service behind a tapproxy: the upstream is a
// real grpc.Server over h2c, the proxy's front is an http.Server that
// accepts h2c or, with tlsFront, HTTP/2 over TLS, and client is a real gRPC
// client of the front.
type grpcEnv struct {
	health *health.Server
	client healthpb.HealthClient
	rec    *recorder
}

func newGRPCEnv(t *testing.T, tlsFront bool) *grpcEnv {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)

	upLis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer(grpc.UnaryInterceptor(echoMetadata), grpc.StreamInterceptor(echoStreamMetadata))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	wg.Go(func() { gs.Serve(upLis) })
	t.Cleanup(gs.Stop)

	// The proxy speaks HTTP/2 with prior knowledge to the h2c upstream.
	tr := tapproxy.NewTransport()
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	rec := newRecorder()
	p, err := tapproxy.New(&url.URL{Scheme: "http", Host: upLis.Addr().String()},
		tapproxy.WithTransport(tr), tapproxy.WithObserver(rec), tapproxy.WithLogger(testLogger(t)))
	require.NoError(t, err)

	var creds credentials.TransportCredentials
	var addr string
	if tlsFront {
		front := httptest.NewUnstartedServer(p)
		front.EnableHTTP2 = true
		front.Config.ErrorLog = slog.NewLogLogger(testLogger(t).Handler(), slog.LevelError)
		front.StartTLS()
		t.Cleanup(front.Close)
		pool := x509.NewCertPool()
		pool.AddCert(front.Certificate())
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool})
		addr = front.Listener.Addr().String()
	} else {
		frontLis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		protos := new(http.Protocols)
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		front := &http.Server{Handler: p, Protocols: protos, ErrorLog: slog.NewLogLogger(testLogger(t).Handler(), slog.LevelError)}
		wg.Go(func() { front.Serve(frontLis) })
		t.Cleanup(func() { front.Close() })
		creds = insecure.NewCredentials()
		addr = frontLis.Addr().String()
	}

	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })

	return &grpcEnv{health: hs, client: healthpb.NewHealthClient(cc), rec: rec}
}

// echoMetadata answers a call carrying x-call-id with that id in its header
// and trailer metadata.
func echoMetadata(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if id := metadata.ValueFromIncomingContext(ctx, "x-call-id"); len(id) == 1 {
		grpc.SetHeader(ctx, metadata.Pairs("x-call-id-echo", id[0]))
		grpc.SetTrailer(ctx, metadata.Pairs("x-call-trailer", id[0]))
	}
	return h(ctx, req)
}

func echoStreamMetadata(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if id := metadata.ValueFromIncomingContext(ss.Context(), "x-call-id"); len(id) == 1 {
		ss.SetHeader(metadata.Pairs("x-call-id-echo", id[0]))
	}
	return h(srv, ss)
}

// grpcFrame is the length-prefixed wire form of m in a gRPC body.
func grpcFrame(t *testing.T, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b))), b...)
}

// fronts are the ways clients reach the proxy in these tests.
var fronts = []struct {
	name string
	tls  bool
}{
	{"h2c", false},
	{"tls", true},
}

func TestGRPCUnary(t *testing.T) {
	for _, front := range fronts {
		t.Run(front.name, func(t *testing.T) {
			env := newGRPCEnv(t, front.tls)
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			ctx = metadata.AppendToOutgoingContext(ctx, "x-call-id", "call-1")

			var header, trailer metadata.MD
			res, err := env.client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&header), grpc.Trailer(&trailer))
			require.NoError(t, err)
			assert.Equal(t, healthpb.HealthCheckResponse_SERVING, res.GetStatus())
			assert.Equal(t, []string{"call-1"}, header.Get("x-call-id-echo"))
			assert.Equal(t, []string{"call-1"}, trailer.Get("x-call-trailer"))

			// The observer has run before the call returned: the trailers go out
			// when the proxy's handler returns.
			assert.Equal(t, 1, env.rec.count())
			o := env.rec.next(t)
			assert.Equal(t, "/grpc.health.v1.Health/Check", o.Path)
			assert.Equal(t, "call-1", o.OutHeader.Get("X-Call-Id"))
			assert.Equal(t, 2, o.ProtoMajor, "the upstream leg speaks HTTP/2")
			assert.Equal(t, http.StatusOK, o.Status)
			assert.Equal(t, "application/grpc", o.Header.Get("Content-Type"))
			assert.Equal(t, "0", o.Trailer.Get("Grpc-Status"))
			assert.Equal(t, "call-1", o.Trailer.Get("X-Call-Trailer"))
			want := grpcFrame(t, &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
			assert.Equal(t, want, o.Body)
			assert.EqualValues(t, len(want), o.BodyBytes)
			assert.NoError(t, o.Err)
		})
	}
}

// TestGRPCErrorTrailersOnly: the health service answers an unknown service
// with NotFound in a trailers-only response (one HEADERS frame that ends
// the stream). If the proxy split it into headers and an empty end of
// stream, the client would report "stream closed without trailers"
// (codes.Internal) instead.
func TestGRPCErrorTrailersOnly(t *testing.T) {
	for _, front := range fronts {
		t.Run(front.name, func(t *testing.T) {
			env := newGRPCEnv(t, front.tls)
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()

			for range 3 { // repeated, so that pooled state is reused
				_, err := env.client.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"})
				require.Error(t, err)
				st, ok := status.FromError(err)
				require.True(t, ok, "%v", err)
				assert.Equal(t, codes.NotFound, st.Code(), "%v", err)
				assert.Equal(t, "unknown service", st.Message())

				o := env.rec.next(t)
				assert.Equal(t, http.StatusOK, o.Status)
				assert.Equal(t, "5", o.Header.Get("Grpc-Status"), "a trailers-only status is in the headers")
				assert.Zero(t, o.BodyBytes)
				assert.NoError(t, o.Err)
			}
			assert.Equal(t, 3, env.rec.count())
		})
	}
}

func TestGRPCServerStreaming(t *testing.T) {
	for _, front := range fronts {
		t.Run(front.name, func(t *testing.T) {
			env := newGRPCEnv(t, front.tls)
			const svc = "tapproxy.test.Watched"
			env.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)

			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			ctx = metadata.AppendToOutgoingContext(ctx, "x-call-id", "watch-1")
			stream, err := env.client.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
			require.NoError(t, err)

			// Each message must arrive while the stream is open: the next status
			// change happens only after the client got the previous one.
			statuses := []healthpb.HealthCheckResponse_ServingStatus{
				healthpb.HealthCheckResponse_SERVING,
				healthpb.HealthCheckResponse_NOT_SERVING,
				healthpb.HealthCheckResponse_SERVING,
				healthpb.HealthCheckResponse_NOT_SERVING,
			}
			var want []byte
			for i, s := range statuses {
				if i > 0 {
					env.health.SetServingStatus(svc, s)
				}
				res, err := stream.Recv()
				require.NoError(t, err, "message %d", i)
				assert.Equal(t, s, res.GetStatus(), "message %d", i)
				want = append(want, grpcFrame(t, res)...)
			}
			header, err := stream.Header()
			require.NoError(t, err)
			assert.Equal(t, []string{"watch-1"}, header.Get("x-call-id-echo"))
			assert.Zero(t, env.rec.count(), "the stream is still open")

			// The client ends the call; the proxy must cancel the upstream stream
			// and report the client's leaving.
			cancel()
			_, err = stream.Recv()
			assert.Equal(t, codes.Canceled, status.Code(err))

			o := env.rec.next(t)
			assert.Equal(t, "/grpc.health.v1.Health/Watch", o.Path)
			assert.True(t, errors.Is(o.Err, tapproxy.ErrClientGone), "%v", o.Err)
			assert.Equal(t, want, o.Body)
			assert.EqualValues(t, len(want), o.BodyBytes)
		})
	}
}
