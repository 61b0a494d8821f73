// Command simple is the classic single-host reverse proxy, rebuilt on
// tapproxy: it forwards every request to -target-url and logs one line per
// exchange, with the status, the body size and how long it took.
//
//	go run ./examples/simple -target-url http://127.0.0.1:9000 -port 8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tapproxy/tapproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "simple:", err)
		os.Exit(2)
	}
}

// run serves until ctx is done, logging to logw.
func run(ctx context.Context, args []string, logw io.Writer) error {
	fs := flag.NewFlagSet("simple", flag.ContinueOnError)
	fs.SetOutput(logw)
	port := fs.Int("port", 8080, "port to listen on")
	target := fs.String("target-url", "http://127.0.0.1:9000", "upstream to proxy to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*target)
	if err != nil {
		return fmt.Errorf("-target-url: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(logw, nil))
	proxy, err := tapproxy.New(u,
		tapproxy.WithLogger(logger),
		tapproxy.WithDirector(tapproxy.ForwardedHeaders()),
		tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
			status := 0
			if ex.Response != nil {
				status = ex.Response.StatusCode
			}
			logger.LogAttrs(ctx, slog.LevelInfo, "exchange",
				slog.String("method", ex.Request.Method),
				slog.String("path", ex.Request.URL.Path),
				slog.Int("status", status),
				slog.Int64("bytes", ex.BodyBytes),
				slog.Duration("duration", ex.Duration),
				slog.Any("error", ex.Err))
		})))
	if err != nil {
		return err
	}

	srv := &http.Server{
		Addr:              fmt.Sprintf(":%d", *port),
		Handler:           proxy,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelError),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	logger.Info("proxying", "listen", srv.Addr, "target", u.Redacted())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
