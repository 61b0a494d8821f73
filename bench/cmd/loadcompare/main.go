// Command loadcompare measures tapproxy against the bare
// httputil.ReverseProxy it is built on, the standard library's
// NewSingleHostReverseProxy with its defaults, and the naive
// read-it-all approach, and checks the published performance budget.
//
// The upstream and each proxy run as separate processes on 127.0.0.1 (this
// program, started again in another role). A load generator drives every
// variant in alternating rounds, so that all figures come from the same run
// and are compared as ratios; then each variant, in a fresh process, relays
// a large response that pauses after its first KiB, to show time to first
// byte, heap growth and peak RSS. Everything is bounded in time and stops by
// itself. Run it from the repository root:
//
//	go run ./bench/cmd/loadcompare
//
// It prints PASS or FAIL for each line of the budget; with -strict it exits
// 1 when a line fails. -markdown prints the report as Markdown, as
// BENCHMARKS.md holds it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"
)

func main() {
	if os.Getenv(envRole) != "" {
		runRole()
		return
	}
	cfg := defaultConfig()
	cfg.flags(flag.CommandLine)
	flag.Parse()
	cfg.args = os.Args[1:]
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	failed, err := run(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadcompare:", err)
		os.Exit(2)
	}
	if failed && cfg.strict {
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	rounds   int
	duration time.Duration
	conns    int
	size     int
	big      int64
	pause    time.Duration
	probes   int
	timeout  time.Duration
	variants string
	markdown bool
	strict   bool
	mem      memConfig
	args     []string // as given, for the report
}

func defaultConfig() config {
	return config{
		rounds:   5,
		duration: 2 * time.Second,
		conns:    32,
		size:     1 << 10,
		big:      1 << 30,
		pause:    200 * time.Millisecond,
		probes:   101,
		timeout:  10 * time.Minute,
		variants: strings.Join(allVariants(), ","),
		mem:      defaultMemConfig(),
	}
}

func (c *config) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.rounds, "rounds", c.rounds, "alternating load rounds per variant")
	fs.DurationVar(&c.duration, "duration", c.duration, "length of one variant's round")
	fs.IntVar(&c.conns, "conns", c.conns, "concurrent connections of the load generator")
	fs.IntVar(&c.size, "size", c.size, "response body bytes under load")
	fs.Int64Var(&c.big, "big", c.big, "bytes of the large response (0 skips that scenario)")
	fs.DurationVar(&c.pause, "pause", c.pause, "how long the large response pauses after its first KiB")
	fs.IntVar(&c.probes, "probes", c.probes, "large responses per variant whose first byte is timed; all but the last are cut after it (naive: one)")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "bound on the whole run")
	fs.StringVar(&c.variants, "variants", c.variants, "comma-separated variants to compare")
	fs.BoolVar(&c.markdown, "markdown", c.markdown, "print the report as Markdown")
	fs.BoolVar(&c.strict, "strict", c.strict, "exit 1 if a budget line fails")
	c.mem.flags(fs)
}
