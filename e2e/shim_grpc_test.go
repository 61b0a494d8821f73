package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"strings"
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
	"google.golang.org/grpc/status"

	"github.com/tapproxy/tapproxy"
	"github.com/tapproxy/tapproxy/tapproxytest"
)

// TestShimHTTP2FrontForGRPC puts tapproxytest's own front, with WithHTTP2,
// between a real gRPC client and server: over h2c and over TLS. A
// connection fault resets only the call's stream.
func TestShimHTTP2FrontForGRPC(t *testing.T) {
	for _, front := range fronts {
		t.Run(front.name, func(t *testing.T) {
			var wg sync.WaitGroup
			t.Cleanup(wg.Wait)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			gs := grpc.NewServer()
			healthpb.RegisterHealthServer(gs, health.NewServer())
			wg.Go(func() { gs.Serve(lis) })
			t.Cleanup(gs.Stop)

			tr := tapproxy.NewTransport()
			tr.Protocols = new(http.Protocols)
			tr.Protocols.SetUnencryptedHTTP2(true)
			opts := []tapproxytest.Option{
				tapproxytest.WithTransport(tr),
				tapproxytest.WithHTTP2(),
				tapproxytest.WithFaults(tapproxytest.CloseConnection().On(tapproxytest.FirstN(1))),
			}
			if front.tls {
				opts = append(opts, tapproxytest.WithTLS())
			}
			srv := tapproxytest.NewServerURL(t, "http://"+lis.Addr().String(), opts...)

			creds := insecure.NewCredentials()
			if front.tls {
				pool := x509.NewCertPool()
				pool.AddCert(srv.Certificate())
				creds = credentials.NewTLS(&tls.Config{RootCAs: pool})
			}
			addr := strings.TrimPrefix(strings.TrimPrefix(srv.URL, "https://"), "http://")
			cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
			require.NoError(t, err)
			t.Cleanup(func() { cc.Close() })
			client := healthpb.NewHealthClient(cc)

			ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
			defer cancel()
			_, err = client.Check(ctx, &healthpb.HealthCheckRequest{})
			assert.Equal(t, codes.Internal, status.Code(err), "the first call's stream was reset: %v", err)

			res, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
			require.NoError(t, err, "the connection serves on")
			assert.Equal(t, healthpb.HealthCheckResponse_SERVING, res.Status)

			srv.Recorder.Expect(t, tapproxytest.Exactly(2), tapproxytest.Path("/grpc.health.v1.Health/Check"))
			ex, err := srv.Recorder.Wait(ctx, 2)
			require.NoError(t, err)
			assert.Equal(t, "0", ex.Response.Trailer.Get("Grpc-Status"))
			first, err := srv.Recorder.Wait(ctx, 1)
			require.NoError(t, err)
			assert.True(t, first.HasFault("close-connection"))
		})
	}
}
